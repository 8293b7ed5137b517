"""Event catalogue, tracking and detection scores on analytic shapes (level-5 spherical caps),
the torchmetrics wrapper over gloo, and `icolightning-events` end to end on real netCDF files."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import xarray as xr
from cli_runs import free_port

from datamodules.climatenet.synthetic import generate_dataset
from datamodules.io.convert import regrid_netcdf
from datamodules.regrid import latlon_to_ico
from icolightning.cli.events import main as events_main
from icolightning.events.tracking import (
    EARTH_RADIUS_KM,
    default_max_gap_hours,
    detection_counts,
    find_events,
    great_circle_km,
    summarize_tracks,
)
from icolightning.grid import IcoGrid
from icolightning.metrics.events import EventDetection

LEVEL = 5
R = EARTH_RADIUS_KM


def cap(lat: float, lon: float, radius_deg: float, level: int = LEVEL) -> np.ndarray:
    """[N] bool: vertices within `radius_deg` (great-circle) of (lat, lon)."""
    p, q = np.deg2rad(lat), np.deg2rad(lon)
    centre = np.array([np.cos(p) * np.cos(q), np.cos(p) * np.sin(q), np.sin(p)])
    return IcoGrid(level).xyz @ centre >= np.cos(np.deg2rad(radius_deg))


def cap_area(radius_deg: float) -> float:
    return 2 * np.pi * R**2 * (1 - np.cos(np.deg2rad(radius_deg)))


def labels_of(*masks_and_classes: tuple[np.ndarray, int]) -> np.ndarray:
    labels = np.zeros(IcoGrid(LEVEL).num_vertices, np.int64)
    for mask, cls in masks_and_classes:
        labels[mask] = cls
    return labels


@pytest.mark.parametrize(
    ("lat", "lon", "radius", "cls"),
    [(20.0, 180.0, 15.0, 1), (90.0, 0.0, 20.0, 2), (0.0, 30.0, 10.0, 1), (-35.0, 359.0, 12.0, 2)],
    ids=["dateline", "north-pole", "equator", "greenwich-south"],
)
def test_a_cap_is_one_event_with_the_cap_area_and_centre(lat, lon, radius, cls) -> None:
    grid = IcoGrid(LEVEL)
    mask = cap(lat, lon, radius)
    table = find_events(labels_of((mask, cls))[None], LEVEL)
    assert len(table) == 1, table
    row = table.iloc[0]
    assert (row["class"], row["time"], row["vertices"]) == (cls, 0, mask.sum())
    assert row["area_km2"] == pytest.approx(cap_area(radius), rel=0.05)  # measured: within 0.9 %
    assert 0.0 <= row["lon"] < 360.0
    assert great_circle_km(row["lat"], row["lon"], lat, lon) < 50.0
    vertex_lon = grid.latlon[mask, 1]
    if lon == 180.0:  # the cap really straddles the date line
        assert vertex_lon.min() < 175 and vertex_lon.max() > 185
    if lat == 90.0:  # ... and this one covers the pole and all five charts
        chart_vertices = np.flatnonzero(mask)[np.flatnonzero(mask) < grid.num_chart_vertices]
        assert len(np.unique(chart_vertices // (grid.num_chart_vertices // 5))) == 5
        assert grid.pole_ids[0] in np.flatnonzero(mask)


def test_two_classes_and_separate_caps_are_separate_events() -> None:
    labels = labels_of((cap(0, 0, 8), 1), (cap(0, 40, 8), 1), (cap(0, 20, 6), 2))
    table = find_events(labels[None], LEVEL)
    assert sorted(table["class"].tolist()) == [1, 1, 2]
    assert table["event"].is_unique and table["track"].is_unique


def test_a_moving_cap_is_one_track_with_its_travel_distance() -> None:
    """6 steps of 3 hours, 4° east per step along 10°N across the Greenwich meridian."""
    lons = np.mod(350.0 + 4.0 * np.arange(6), 360.0)
    labels = np.stack([labels_of((cap(10.0, lon, 8.0), 1)) for lon in lons])
    times = pd.date_range("2000-01-01", periods=6, freq="3h")
    table = find_events(labels, LEVEL, times=list(times))
    assert table["track"].nunique() == 1 and len(table) == 6
    expected = great_circle_km(10.0, lons[:-1], 10.0, lons[1:]).sum()
    tracks = summarize_tracks(table)
    assert len(tracks) == 1
    track = tracks.iloc[0]
    assert (track["start"], track["end"], track["lifetime_steps"], track["lifetime_hours"]) == (0, 5, 6, 15.0)
    assert track["travel_km"] == pytest.approx(expected, rel=0.03)
    assert track["speed_kmh"] == pytest.approx(expected / 15.0, rel=0.03)
    assert track["max_area_km2"] == pytest.approx(table["area_km2"].max())


def test_a_gap_in_time_starts_a_new_track() -> None:
    """The moving cap of 3-hourly steps, then 12 hours to the fourth step: two tracks by
    default (the limit is 1.5 × 3 h), one when the limit allows the gap."""
    lons = np.mod(350.0 + 4.0 * np.arange(6), 360.0)
    labels = np.stack([labels_of((cap(10.0, lon, 8.0), 1)) for lon in lons])
    times = list(pd.date_range("2000-01-01", periods=3, freq="3h")) + list(
        pd.date_range("2000-01-01T18:00", periods=3, freq="3h"))
    assert default_max_gap_hours(times) == pytest.approx(4.5)
    split = find_events(labels, LEVEL, times=times)
    assert split.groupby("track")["time"].apply(list).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert find_events(labels, LEVEL, times=times, max_gap_hours=11.0)["track"].nunique() == 2
    assert find_events(labels, LEVEL, times=times, max_gap_hours=12.0)["track"].nunique() == 1  # at most: linked
    assert find_events(labels, LEVEL, times=times, max_gap_hours=float("inf"))["track"].nunique() == 1
    assert find_events(labels, LEVEL)["track"].nunique() == 1  # no times: no gaps to respect


def test_default_gap_is_one_and_a_half_steps_at_most_a_day() -> None:
    assert default_max_gap_hours(pd.date_range("2000-01-01", periods=5, freq="6h")) == pytest.approx(9.0)
    assert default_max_gap_hours(pd.date_range("2000-01-01", periods=5, freq="68D")) == pytest.approx(24.0)
    assert default_max_gap_hours(["2000-01-01T00:00:00", None, "2000-01-01T03:00:00", "2000-01-01T04:00:00"]) \
        == pytest.approx(1.5)
    assert default_max_gap_hours([None, None]) is None


def test_merge_and_split_follow_the_largest_event() -> None:
    big, small = cap(0, 0, 10), cap(0, 25, 6)
    merged = cap(0, 3, 10) | cap(0, 19, 8)  # one connected blob overlapping both
    apart = (cap(0, 3, 10), cap(0, 25, 6))
    labels = np.stack([labels_of((big, 1), (small, 1)), labels_of((merged, 1)),
                       labels_of((apart[0], 1), (apart[1], 1))])
    table = find_events(labels, LEVEL)
    assert table.groupby("time").size().tolist() == [2, 1, 2]
    step0 = table[table["time"] == 0].sort_values("area_km2")
    small_track, big_track = step0["track"].tolist()
    blob = table[table["time"] == 1].iloc[0]
    assert blob["track"] == big_track  # merge: the largest predecessor continues
    step2 = table[table["time"] == 2].sort_values("area_km2")
    assert step2["track"].iloc[1] == big_track  # split: the largest successor keeps the track
    assert step2["track"].iloc[0] not in (big_track, small_track)  # the other one starts anew
    tracks = summarize_tracks(table).set_index("track")
    assert tracks.loc[small_track, "end"] == 0 and tracks.loc[big_track, "end"] == 2


def _hand_made_pair() -> tuple[np.ndarray, np.ndarray]:
    """Truth: TC A, TC B, AR C. Prediction: TC overlapping A, TC D far away (false alarm),
    AR E touching no true AR, AR on a true TC (B is not detected by an AR)."""
    truth = labels_of((cap(10, 0, 6), 1), (cap(-20, 100, 6), 1), (cap(40, 200, 10), 2))
    pred = labels_of((cap(12, 4, 5), 1), (cap(-60, 300, 5), 1), (cap(40, 240, 5), 2), (cap(-20, 100, 4), 2))
    return pred, truth


def test_detection_scores_of_hand_made_pairs() -> None:
    pred, truth = _hand_made_pair()
    counts = detection_counts(pred, truth, LEVEL)
    np.testing.assert_array_equal(counts.true_events, [2, 1])
    np.testing.assert_array_equal(counts.detected, [1, 0])
    np.testing.assert_array_equal(counts.predicted_events, [2, 2])
    np.testing.assert_array_equal(counts.false_alarms, [1, 2])
    np.testing.assert_allclose(counts.pod, [0.5, 0.0])
    np.testing.assert_allclose(counts.far, [0.5, 1.0])
    perfect = detection_counts(truth, truth, LEVEL)
    np.testing.assert_allclose(perfect.pod, 1.0)
    np.testing.assert_allclose(perfect.far, 0.0)
    assert np.isnan(detection_counts(np.zeros_like(truth), np.zeros_like(truth), LEVEL).pod).all()



def _rank_worker(rank: int, world: int, port: int, result_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        pred, truth = _hand_made_pair()
        metric = EventDetection()
        if rank == 0:  # rank 0 sees the hand-made pair, rank 1 a perfect prediction of it
            metric.update(torch.as_tensor(pred)[None], torch.as_tensor(truth)[None])
        else:
            metric.update(torch.as_tensor(truth)[None], torch.as_tensor(truth)[None])
        values = {k: v.item() for k, v in metric.compute().items()}
        if rank == 0:
            torch.save(values, result_path)
    finally:
        dist.destroy_process_group()


def test_event_metric_sums_counts_across_two_gloo_ranks(tmp_path) -> None:
    result = tmp_path / "ddp.pt"
    mp.start_processes(_rank_worker, args=(2, free_port(), str(result)), nprocs=2, start_method="fork")
    synced = torch.load(result, weights_only=True)
    assert (synced["true_events_TC"], synced["detected_TC"], synced["false_alarms_TC"]) == (4, 3, 1)
    assert synced["event_pod_TC"] == pytest.approx(3 / 4) and synced["event_far_TC"] == pytest.approx(1 / 4)
    assert synced["event_pod_AR"] == pytest.approx(1 / 2) and synced["event_far_AR"] == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- icolightning-events
@pytest.fixture(scope="module")
def label_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("events")
    return generate_dataset(root / "data", n_train=3, n_test=0, nlat=48, nlon=72, seed=5)


def test_events_cli_end_to_end_on_lat_lon_files(label_files, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    folder = label_files[0].parent
    code = events_main([str(folder / "*.nc"), "--output", str(out), "--level", "3", "--truth", str(folder), "--quiet"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.split("\nwrote ")[0])
    with xr.open_dataset(label_files[0]) as first:
        lat, lon = first["lat"].values, first["lon"].values
    native = np.stack([xr.open_dataset(path)["LABELS"].values.reshape(lat.size, lon.size) for path in label_files])
    vertex = latlon_to_ico(native, lat, lon, 3, "majority")
    days = [str(xr.open_dataset(path)["time"].values[0])[:19] for path in label_files]
    expected = find_events(vertex, 3, times=days)
    events = pd.read_csv(out / "events.csv")
    assert len(events) == len(expected) > 0 and summary["steps"] == len(native)
    assert summary["max_gap_hours"] == 24.0 and expected["track"].is_unique  # files 68 days apart
    columns = [c for c in expected.columns if c != "datetime"]
    pd.testing.assert_frame_equal(events[columns], expected[columns], check_exact=False, rtol=1e-5)
    assert events["file"].tolist() == [label_files[t].name for t in expected["time"]]
    tracks = pd.read_csv(out / "tracks.csv")
    assert set(tracks["track"]) == set(expected["track"])
    with xr.open_dataset(out / "frequency.nc") as freq:
        assert freq["TC_frequency"].dims == ("lat", "lon")
        np.testing.assert_allclose(freq["TC_frequency"].values, (native == 1).mean(0), atol=1e-6)
        np.testing.assert_allclose(freq["AR_frequency"].values, (native == 2).mean(0), atol=1e-6)
    detection = json.loads((out / "detection.json").read_text())
    assert detection["event_pod_TC"] == 1.0 and detection["event_far_AR"] == 0.0
    assert detection["true_events_TC"] == (expected["class"] == 1).sum()
    for name in ("frequency", "area_hist", "lifetime_hist", "speed_hist", "travel_hist"):
        assert (out / f"{name}.png").stat().st_size > 5_000


def test_events_cli_max_gap_option_links_across_files(label_files, tmp_path, capsys) -> None:
    folder = label_files[0].parent
    days = pd.to_datetime([xr.open_dataset(path)["time"].values[0] for path in label_files])
    gap = (days[1:] - days[:-1]).total_seconds().max() / 3600  # the files are equally spaced
    args = [str(folder), "--level", "3", "--quiet", "--no-plots", "--max-gap-hours"]
    for limit in ("inf", str(gap), str(gap - 1)):
        assert events_main([*args, limit, "--output", str(tmp_path / limit)]) == 0
    linked = pd.read_csv(tmp_path / "inf" / "events.csv")
    assert not linked["track"].is_unique  # some event overlaps one of the file before
    assert pd.read_csv(tmp_path / str(gap) / "events.csv")["track"].tolist() == linked["track"].tolist()
    assert pd.read_csv(tmp_path / str(gap - 1) / "events.csv")["track"].is_unique
    capsys.readouterr()
    with pytest.raises(SystemExit) as bad:
        events_main([*args, "0", "--output", str(tmp_path / "o")])
    assert bad.value.code == 2 and "--max-gap-hours" in capsys.readouterr().err


def test_events_cli_reads_icosahedral_files(label_files, tmp_path) -> None:
    ico = regrid_netcdf(label_files[0], tmp_path / "ico.nc", 3, ["LABELS"], progress=False)
    assert events_main([str(ico), "--output", str(tmp_path / "out"), "--quiet", "--no-plots"]) == 0
    with xr.open_dataset(ico) as ds:
        expected = find_events(ds["LABELS"].values.reshape(-1, ds.sizes["vertex"]), 3)
    events = pd.read_csv(tmp_path / "out" / "events.csv")
    np.testing.assert_allclose(events["area_km2"], expected["area_km2"], rtol=1e-5)
    with xr.open_dataset(tmp_path / "out" / "frequency.nc") as freq:
        assert freq["TC_frequency"].dims == ("vertex",)


def test_events_cli_errors_are_one_clear_line(label_files, tmp_path, capsys) -> None:
    assert events_main([str(tmp_path / "nothing-*.nc"), "--output", str(tmp_path / "o")]) == 1  # a file problem
    assert "nothing-*.nc: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as pairing:
        events_main([str(label_files[0]), "--output", str(tmp_path / "o"), "--truth", *map(str, label_files[:2])])
    assert pairing.value.code == 2 and "paired" in capsys.readouterr().err
    assert events_main([str(label_files[0]), "--output", str(tmp_path / "o"), "--variable", "NOPE", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(label_files[0]) in err and "NOPE" in err
