"""Command-line options and set-up that the benchmark scripts share: device, dtype, CPU threads and
the clock (wall time, or process CPU time, which is steadier when other programs share the machine)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch


def add_runtime_args(parser: argparse.ArgumentParser, dtypes: list[str]) -> None:
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=dtypes)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu = process CPU time, steadier when other programs share the machine")


def runtime(args: argparse.Namespace) -> tuple[torch.device, torch.dtype, Callable[[], float]]:
    """Apply --threads; return the device, the dtype and the clock the options chose."""
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    return torch.device(args.device), getattr(torch, args.dtype), clock
