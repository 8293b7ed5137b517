"""Time per training epoch of a published-table experiment at the dataset's shape, on this machine.

Builds the experiment's model and loss as configured, times a few optimiser steps on random
inputs of the climate_sphere_l5 shape (16 channels, level 5), and extrapolates to one epoch of
43 916 training samples. Prints wall and CPU seconds per step and the load average: on a shared
machine wall time is inflated by other jobs, CPU time much less.

    python scripts/time_sphere_epoch.py sphere_l5_r2r_wce --batch 8 --threads 2
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from hydra import compose, initialize_config_dir

from icolightning.config import CONFIG_DIR, instantiate_module
from icolightning.grid import vertex_count

TRAIN_SAMPLES = 43_916


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--batch", type=int, default=None, help="default: the experiment's batch size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps; the first is a warm-up")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={args.experiment}"])
    model = instantiate_module(cfg.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = args.batch or cfg.data.batch_size
    x = torch.randn(batch, len(cfg.data.variables), vertex_count(cfg.data.level))
    y = torch.randint(0, 3, (batch, x.shape[-1]))
    wall, cpu = [], []
    for _ in range(args.steps):
        started, started_cpu = time.perf_counter(), time.process_time()
        loss = model._loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    best_wall, best_cpu = min(wall[1:]), min(cpu[1:])
    steps = TRAIN_SAMPLES / batch
    print(f"{args.experiment}: batch {batch}, {args.threads} threads, wall s/step {[round(w, 2) for w in wall]}, "
          f"cpu s/step {[round(c, 2) for c in cpu]}")
    print(f"epoch ({TRAIN_SAMPLES} samples): {steps * best_wall / 3600:.1f} h at the measured wall time, "
          f"{steps * best_cpu / args.threads / 3600:.1f} h if the {args.threads} threads had the CPUs to themselves; "
          f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
