"""The IOOS compliance-checker (test-only) on every kind of netCDF file the tools write, at the CF
version each file declares: no CF errors, and only the warnings listed in WARNINGS (docs/outputs.md).

One conflict is not ours to fix: files on the vertices declare UGRID-1.0, which requires
`cf_role = "mesh_topology"` on the mesh variable and `"face_node_connectivity"` on its connectivity
(ugrid-checks R301; uxarray finds the mesh by it). The checker's §9.5 (6.1.0, the newest release)
accepts only the discrete-sampling cf_role values, so it reports exactly these two. The test
allows those two messages, only on UGRID files and only for those two roles on the mesh's own
variables, and runs ugrid-checks to show that the roles are required there."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import netCDF4
import numpy as np
import pytest
from checkpoints import stats, unet_net

from datamodules.climatenet.synthetic import generate_dataset
from datamodules.io.cf import cf_integer_dtype
from datamodules.io.convert import regrid_netcdf
from datamodules.io.ugrid import FACE_NODES, MESH
from icolightning.cli.events import main as events_main
from icolightning.errors import DataFileError
from icolightning.jobs.predict import PredictOptions, predict_file
from icolightning.lightning import SegmentationModule

BIN = Path(sys.executable).parent
CHECKER = shutil.which("compliance-checker", path=str(BIN)) or shutil.which("compliance-checker")
UGRID_CHECKER = shutil.which("ugrid-checker", path=str(BIN)) or shutil.which("ugrid-checker")
pytestmark = pytest.mark.skipif(CHECKER is None, reason="compliance-checker is a test-only dependency")
UGRID_ROLES = {MESH: "mesh_topology", FACE_NODES: "face_node_connectivity"}
DIMENSION_ORDER = re.compile(r"spatio-temporal dimensions are not in the recommended order T, Z, Y, X")
WARNINGS = {
    # `vertex` is no CF axis (X/Y/Z/T): the checker cannot tell that (time, vertex) is in order.
    "regridded": {DIMENSION_ORDER},
    "vertex_frequency": set(),
    "latlon_frequency": set(),
    # PROBABILITIES(time, class, lat, lon): the class dimension sits between T and Y, kept so that a
    # time step's probabilities are one contiguous block, as the masks are.
    "prediction": {DIMENSION_ORDER},
}


def checker_report(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings): the checker's high- and medium-priority messages at the declared CF version."""
    with netCDF4.Dataset(path) as nc:
        version = re.search(r"CF-(\d+\.\d+)", nc.getncattr("Conventions"))[1]
    report = path.with_suffix(".cf.json")
    subprocess.run([CHECKER, "--test", f"cf:{version}", "-f", "json_new", "-o", str(report), str(path)],
                   check=False, capture_output=True, timeout=300)
    result = next(iter(json.loads(report.read_text()).values()))[f"cf:{version}"]
    errors, warnings = ([m for item in result[key] for m in item["msgs"]]
                        for key in ("high_priorities", "medium_priorities"))
    return errors, warnings


def cf_errors(path: Path) -> list[str]:
    """The checker's errors, less the two UGRID-1.0 cf_role values on a UGRID file's own mesh."""
    errors = checker_report(path)[0]
    with netCDF4.Dataset(path) as nc:
        if "UGRID-1.0" not in nc.getncattr("Conventions").split():
            return errors
        roles = {name: v.getncattr("cf_role") for name, v in nc.variables.items() if "cf_role" in v.ncattrs()}
    assert roles == UGRID_ROLES, roles
    allowed = {f"{role} is not a valid cf_role value" for role in UGRID_ROLES.values()}
    return [e for e in errors if not any(e.startswith(a) for a in allowed)]


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    """One file of every kind the tools write: regridded, vertex and lat-lon frequency maps, a prediction."""
    root = tmp_path_factory.mktemp("cf")
    label = generate_dataset(root / "data", n_train=1, n_test=0, nlat=24, nlon=48, seed=1)[0]
    files = {"regridded": regrid_netcdf(label, root / "ico.nc", 2, progress=False)}
    for kind, source in (("vertex_frequency", files["regridded"]), ("latlon_frequency", label)):
        assert events_main([str(source), "--output", str(root / kind), "--quiet", "--no-plots"]) == 0
        files[kind] = root / kind / "frequency.nc"
    model = SegmentationModule(unet_net(2), data_stats=stats(2)).eval()
    (root / "predict").mkdir()
    files["prediction"] = predict_file(model, label, root / "predict", PredictOptions(plots=False))
    return files


@pytest.mark.parametrize("kind", sorted(WARNINGS))
def test_written_files_have_no_cf_errors_and_only_the_known_warnings(written, kind) -> None:
    assert cf_errors(written[kind]) == []
    warnings = checker_report(written[kind])[1]
    assert all(any(p.search(w) for p in WARNINGS[kind]) for w in warnings), warnings


@pytest.mark.skipif(UGRID_CHECKER is None, reason="ugrid-checks is a test-only dependency")
@pytest.mark.parametrize("kind", ["regridded", "vertex_frequency"])
def test_vertex_files_conform_to_ugrid(written, kind) -> None:
    """The cf_role values the CF checker questions are what UGRID-1.0 requires."""
    out = subprocess.run([UGRID_CHECKER, str(written[kind])], capture_output=True, text=True, timeout=120)
    assert "0 Rxxx requirement failures" in out.stdout or "No problems found" in out.stdout, out.stdout


def test_regridded_labels_are_int8_flags_and_time_has_no_fill(written) -> None:
    with netCDF4.Dataset(written["regridded"]) as nc:
        labels = nc["LABELS"]
        assert labels.dtype == np.int8 and labels.flag_values.dtype == np.int8
        assert list(labels.flag_values) == [0, 1, 2]
        assert "_FillValue" not in nc["time"].ncattrs()


@pytest.mark.parametrize(("dtype", "attrs", "conventions", "expected"), [
    ("int64", {"flag_values": np.arange(3)}, "CF-1.7", "int8"),
    ("int64", {"flag_values": np.arange(3), "_FillValue": -300}, "CF-1.8", "int16"),
    ("uint8", {}, "CF-1.7", "int32"),
    ("int16", {"flag_values": np.arange(3)}, "CF-1.7", "int16"),
    ("int64", {"flag_values": np.arange(3)}, "CF-1.9 UGRID-1.0", "int64"),
])
def test_integer_type_allowed_at_the_declared_version(dtype, attrs, conventions, expected) -> None:
    assert cf_integer_dtype(np.dtype(dtype), attrs, conventions) == np.dtype(expected)


def test_labels_the_narrow_type_cannot_hold_are_refused(tmp_path) -> None:
    """int64 labels whose flag_values say 0..2 but hold 300 are refused, not wrapped to 44."""
    label = generate_dataset(tmp_path / "data", n_train=1, n_test=0, nlat=12, nlon=24, seed=2)[0]
    with netCDF4.Dataset(label, "a") as nc:
        nc["LABELS"][:] = 300
    with pytest.raises(DataFileError, match=r"LABELS.*300 do not fit in int8"):
        regrid_netcdf(label, tmp_path / "ico.nc", 1, ["LABELS"], progress=False)
