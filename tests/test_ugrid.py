"""Files on the icosahedral vertices carry a UGRID-1.0 mesh: uxarray (test-only) opens them with
the level's 20·4^r triangles and the file's own vertex order."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from datamodules.climatenet.synthetic import generate_dataset
from datamodules.io.convert import regrid_netcdf
from datamodules.io.ugrid import mesh_faces, with_conventions
from icolightning.cli.events import main as events_main
from icolightning.grid import IcoGrid

ux = pytest.importorskip("uxarray")


@pytest.mark.parametrize("level", [0, 1, 3])
def test_faces_are_the_triangulation_counter_clockwise(level: int) -> None:
    grid = IcoGrid(level)
    faces = mesh_faces(level)
    assert faces.shape == (20 * 4**level, 3) and set(np.unique(faces)) == set(range(grid.num_vertices))
    corners = grid.xyz[faces]
    normal = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    assert (np.einsum("ij,ij->i", normal, corners.mean(1)) > 0).all()  # outward: counter-clockwise
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    assert len(np.unique(edges, axis=0)) == 30 * 4**level  # every edge shared by exactly two faces
    for vertex in (0, grid.corners[0], grid.num_vertices - 1):
        around = set(faces[(faces == vertex).any(1)].ravel()) - {vertex}
        assert around == set(grid.neighbours(vertex).tolist())


@pytest.fixture(scope="module")
def label_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("ugrid")
    return generate_dataset(root / "data", n_train=1, n_test=0, nlat=24, nlon=48, seed=1)[0]


def _check_uxarray(path, level: int) -> xr.Dataset:
    uxds = ux.open_dataset(path, path)
    with xr.open_dataset(path) as ds:
        assert uxds.uxgrid.n_face == 20 * 4**level and uxds.uxgrid.n_node == ds.sizes["vertex"]
        np.testing.assert_allclose(np.mod(uxds.uxgrid.node_lon.values, 360.0), ds["lon"].values, atol=1e-9)
        np.testing.assert_allclose(uxds.uxgrid.node_lat.values, ds["lat"].values, atol=1e-9)
        np.testing.assert_array_equal(uxds.uxgrid.face_node_connectivity.values, mesh_faces(level))
        assert "UGRID-1.0" in ds.attrs["Conventions"]
    assert uxds.uxgrid.face_areas.values.sum() == pytest.approx(4 * np.pi, rel=0.05)
    return uxds


def test_regridded_files_open_in_uxarray(label_file, tmp_path) -> None:
    out = regrid_netcdf(label_file, tmp_path / "ico.nc", 2, progress=False)
    uxds = _check_uxarray(out, 2)
    assert uxds["TMQ"].dims[-1] == "n_node" and uxds["LABELS"].attrs["location"] == "node"


def test_event_frequency_on_vertex_inputs_opens_in_uxarray(label_file, tmp_path) -> None:
    ico = regrid_netcdf(label_file, tmp_path / "ico.nc", 3, ["LABELS"], progress=False)
    assert events_main([str(ico), "--output", str(tmp_path / "out"), "--quiet", "--no-plots"]) == 0
    uxds = _check_uxarray(tmp_path / "out" / "frequency.nc", 3)
    assert uxds["TC_frequency"].dims == ("n_node",)


def test_conventions_keep_the_declared_cf_version() -> None:
    assert with_conventions("CF-1.7") == "CF-1.7 UGRID-1.0"
    assert with_conventions(None) == "CF-1.8 UGRID-1.0"
    assert with_conventions("CF-1.8 UGRID-1.0") == "CF-1.8 UGRID-1.0"
