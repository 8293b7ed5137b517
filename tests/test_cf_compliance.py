"""The IOOS compliance-checker (test-only) on the files the tools write, at the CF version each
file declares. Known and documented in docs/outputs.md: the checker accepts only discrete-sampling
cf_role values, so UGRID-1.0's `mesh_topology` / `face_node_connectivity` count as §9.5 errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import netCDF4
import pytest

from datamodules.climatenet.synthetic import generate_dataset
from datamodules.io.convert import regrid_netcdf
from icolightning.cli.events import main as events_main

CHECKER = shutil.which("compliance-checker", path=str(Path(sys.executable).parent)) or shutil.which(
    "compliance-checker")
pytestmark = pytest.mark.skipif(CHECKER is None, reason="compliance-checker is a test-only dependency")
UGRID_CF_ROLE = re.compile(r"(mesh_topology|face_node_connectivity) is not a valid cf_role value")


def cf_errors(path) -> list[str]:
    """The checker's high-priority (error) messages for the CF version `path` declares."""
    with netCDF4.Dataset(path) as nc:
        version = re.search(r"CF-(\d+\.\d+)", nc.getncattr("Conventions"))[1]
    report = path.with_suffix(".cf.json")
    subprocess.run([CHECKER, "--test", f"cf:{version}", "-f", "json_new", "-o", str(report), str(path)],
                   check=False, capture_output=True, timeout=300)
    result = next(iter(json.loads(report.read_text()).values()))[f"cf:{version}"]
    return [msg for item in result["high_priorities"] for msg in item["msgs"]]


def test_vertex_frequency_map_has_only_the_ugrid_cf_role_errors(tmp_path) -> None:
    label = generate_dataset(tmp_path / "data", n_train=1, n_test=0, nlat=24, nlon=48, seed=1)[0]
    ico = regrid_netcdf(label, tmp_path / "ico.nc", 2, ["LABELS"], progress=False)
    assert events_main([str(ico), "--output", str(tmp_path / "out"), "--quiet", "--no-plots"]) == 0
    errors = cf_errors(tmp_path / "out" / "frequency.nc")
    assert len(errors) == 2 and all(UGRID_CF_ROLE.search(e) for e in errors), errors
