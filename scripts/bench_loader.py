"""Does the loader keep the model fed? Samples per second from the vertex store against samples per
second that a training step of the default network (conf/model/ico_unet.yaml widths) consumes.

The loader reads a synthetic ClimateNet-layout set (16 variables) regridded into the vertex store at
`--level`, through `ClimateDataModule.train_dataloader()` with 0 and 2 worker processes, batch 8 as
in training. The model step is forward + backward of the IcoUNet at the same level, batch 8, on
`--device`. The target (issue 20) is a loader at least 5x faster than the model; on a GPU the model
is faster, so run this there too (`--device cuda`).

    python scripts/bench_loader.py                  # level 5, CPU
    python scripts/bench_loader.py --level 6 --device cuda
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from bench_model import interleaved, training_step
from bench_runtime import add_runtime_args, runtime

from datamodules import ClimateDataModule
from datamodules.climatenet.synthetic import generate_dataset
from icolightning.grid import IcoGrid
from icolightning.models import IcoUNet

BATCH = 8
DEFAULT_WIDTHS = [16, 32, 64]  # conf/model/ico_unet.yaml


def loader_rate(data_dir: Path, cache: Path, level: int, workers: int, epochs: int) -> float:
    """Samples per second over `epochs` passes of the training loader (after one warm-up batch)."""
    dm = ClimateDataModule(data_dir, level=level, variables="all16", cache_dir=cache, batch_size=BATCH,
                           num_workers=workers, persistent_workers=workers > 0, val_fraction=0.0, progress=False)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    next(iter(loader))
    start = time.perf_counter()
    seen = sum(x.shape[0] for _ in range(epochs) for x, _ in loader)
    return seen / (time.perf_counter() - start)


def model_rate(level: int, device: torch.device, dtype: torch.dtype, repeats: int) -> float:
    """Samples per second of training steps of the default U-Net (median step of `repeats`)."""
    net = IcoUNet(16, 3, level, widths=DEFAULT_WIDTHS).to(device=device, dtype=dtype)
    x = torch.randn(BATCH, 16, IcoGrid(level).num_vertices, device=device, dtype=dtype)
    target = torch.randint(0, 3, (BATCH, IcoGrid(level).num_vertices), device=device)
    (seconds,), _ = interleaved([training_step(net, x, target)], repeats, device)
    return BATCH / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--level", type=int, default=5)
    parser.add_argument("--files", type=int, default=64, help="synthetic samples in the store")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="model steps timed (median)")
    add_runtime_args(parser, ["float32", "bfloat16"])
    args = parser.parse_args()
    device, dtype, _ = runtime(args)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"CPUs: {os.cpu_count()}, load average (1, 5, 15 min): {load}; level {args.level}, batch {BATCH}")
    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(Path(tmp) / "data", n_train=args.files, n_test=0, nlat=96, nlon=144, seed=1)
        rates = {w: loader_rate(Path(tmp) / "data", Path(tmp) / "cache", args.level, w, args.epochs)
                 for w in (0, 2)}
    model = model_rate(args.level, device, dtype, args.repeats)
    label = f"model training step (IcoUNet {DEFAULT_WIDTHS}, {device})"
    print(f"{label:<52}{model:9.1f} samples/s")
    for workers, rate in rates.items():
        ratio = rate / model
        print(f"{f'loader, num_workers={workers}':<52}{rate:9.0f} samples/s  {ratio:8.0f}x the model "
              f"({'met' if ratio >= 5 else 'NOT met'}: >= 5x)")


if __name__ == "__main__":
    main()
