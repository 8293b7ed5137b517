"""Memory and throughput of `icolightning-predict` on a long file (README "Predicting on new data").

Writes a 480-step 384 x 576 netCDF file of the four ClimateNet model variables (TMQ, U850, V850,
PSL; 1.7 GB of float32, written slab by slab), a level-5 IcoUNet checkpoint with the default
widths (16, 32, 64; random weights: the speed and memory do not depend on them), then runs the real
console script in a child process and reports its peak resident memory (ru_maxrss) and steps/s.
The target is a peak under 1.5 GB, whatever the number of steps. The load average is printed too.

Usage: python scripts/bench_predict.py [--steps 480] [--slab-steps 32] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import netCDF4
import numpy as np
import torch

from datamodules.normalization import Normalization
from icolightning.lightning import SegmentationModule

VARIABLES = ("TMQ", "U850", "V850", "PSL")
NLAT, NLON, LEVEL = 384, 576, 5


def write_input(path: Path, steps: int, slab: int = 16) -> None:
    """Smooth random fields, appended `slab` steps at a time (the generator itself stays small)."""
    rng = np.random.default_rng(0)
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("time", steps)
        nc.createDimension("lat", NLAT)
        nc.createDimension("lon", NLON)
        nc.createVariable("time", "f8", ("time",))[:] = np.arange(steps)
        nc["time"].units = "hours since 2000-01-01"
        nc.createVariable("lat", "f8", ("lat",))[:] = np.linspace(-90, 90, NLAT)
        nc["lat"].units = "degrees_north"
        nc.createVariable("lon", "f8", ("lon",))[:] = np.arange(NLON) * 360.0 / NLON
        nc["lon"].units = "degrees_east"
        for name in VARIABLES:
            nc.createVariable(name, "f4", ("time", "lat", "lon"), chunksizes=(1, NLAT, NLON))
        base = np.sin(np.linspace(0, 6, NLAT))[:, None] * np.cos(np.linspace(0, 9, NLON))[None, :]
        for start in range(0, steps, slab):
            stop = min(start + slab, steps)
            for c, name in enumerate(VARIABLES):
                noise = rng.standard_normal((stop - start, 1, 1)).astype(np.float32)
                nc[name][start:stop] = (base[None] * (c + 1) + noise).astype(np.float32)


def write_checkpoint(path: Path) -> None:
    net = {"_target_": "icolightning.models.IcoUNet", "in_channels": 4, "num_classes": 3, "level": LEVEL,
           "widths": [16, 32, 64]}
    stats = Normalization(VARIABLES, (0.0,) * 4, (1.0,) * 4, (0.9, 0.05, 0.05), 1, LEVEL, "bilinear").to_dict()
    model = SegmentationModule(net, data_stats=stats)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "icolightning_module": "icolightning.lightning.segmentation.SegmentationModule",
                "pytorch-lightning_version": "2.6.0"}, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=480)
    parser.add_argument("--slab-steps", type=int, default=32)
    parser.add_argument("--workdir", default=None, help="where the 1.7 GB input goes (default: a temp dir)")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        write_input(work / "long.nc", args.steps)
        write_checkpoint(work / "model.ckpt")
        size = (work / "long.nc").stat().st_size / 1e9
        command = [str(Path(sys.executable).parent / "icolightning-predict"), f"ckpt_path={work / 'model.ckpt'}",
                   f"input={work / 'long.nc'}", f"output={work / 'out'}", f"slab_steps={args.slab_steps}",
                   "plots=false", f"paths.root_dir={work}"]
        started = time.perf_counter()
        subprocess.run(command, check=True, cwd=work, env=os.environ | {"PYTHONWARNINGS": "ignore"})
        seconds = time.perf_counter() - started
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9  # Linux: KiB
        print(f"input {size:.2f} GB ({args.steps} steps of {len(VARIABLES)} x {NLAT} x {NLON}), "
              f"slab {args.slab_steps} steps")
        print(f"peak RSS of icolightning-predict: {peak_gb:.2f} GB (target < 1.5 GB)")
        print(f"throughput: {args.steps / seconds:.2f} steps/s ({seconds:.1f} s including start-up)")


if __name__ == "__main__":
    main()
