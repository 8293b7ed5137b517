"""A real, non-editable install: the wheel built from this checkout carries the code and the Hydra
configs (conf/ as icolightning/conf), and its console scripts work from a fresh virtual environment
outside the checkout. The environment reuses this one's installed dependencies (a .pth entry; no
download, no reinstall of torch), but not its editable install of this project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from checkpoints import write_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _checkout_copy(target: Path) -> Path:
    """The project's files (tracked and new, not ignored), so the build leaves the checkout untouched."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    return target


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("install")
    source = _checkout_copy(root / "src")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(root / "dist"), str(source)], root)
    wheel = next((root / "dist").glob("icolightning-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("icolightning/conf/train.yaml", "icolightning/conf/trainer/default.yaml",
                   "icolightning/conf/experiment/climatenet_unet16.yaml", "datamodules/climatenet/datamodule.py",
                   "icolightning/cli/entry.py"):
        assert needed in names, needed
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], root)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     root).stdout.strip())
    (site / "reuse_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
          str(wheel)], root)
    return venv


def test_installed_console_scripts_run_outside_the_checkout(installed, tmp_path):
    where = _run([str(installed / "bin" / "python"), "-c", "import icolightning; print(icolightning.__file__)"],
                 tmp_path).stdout
    assert str(installed) in where  # the wheel's copy, not this checkout
    job = _run([str(installed / "bin" / "icolightning-train"), "--cfg", "job", "debug=tiny"], tmp_path).stdout
    assert "max_epochs: 2" in job and "datamodules.ClimateDataModule" in job
    lat, lon = np.linspace(-90, 90, 12), np.arange(0, 360, 15.0)
    fields = {v: (("time", "lat", "lon"), np.ones((2, 12, 24), np.float32)) for v in ("TMQ", "U850", "V850", "PSL")}
    xr.Dataset(fields, coords={"time": [0, 1], "lat": lat, "lon": lon}).to_netcdf(tmp_path / "in.nc")
    ckpt = write_checkpoint(tmp_path / "model.ckpt")
    _run([str(installed / "bin" / "icolightning-predict"), f"ckpt_path={ckpt}", f"input={tmp_path / 'in.nc'}",
          f"output={tmp_path / 'out'}", "plots=false", f"paths.root_dir={tmp_path}"], tmp_path)
    with xr.open_dataset(tmp_path / "out" / "in_prediction.nc") as out:
        assert out.LABELS.shape == (2, 12, 24)
