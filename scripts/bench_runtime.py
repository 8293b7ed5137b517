"""Command-line options and set-up that the benchmark scripts share: device, dtype, CPU threads and
the clock (wall time, or process CPU time, which is steadier when other programs share the machine)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from icolightning.nn.allocator import reuse_freed_memory


def add_runtime_args(parser: argparse.ArgumentParser, dtypes: list[str], thread_sweep: bool = False) -> None:
    """The shared options; with `thread_sweep`, --threads takes several counts (default 1 and 2) that
    the script runs one after the other, and `runtime` leaves the thread count to it."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=dtypes)
    if thread_sweep:
        parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch CPU thread counts to run")
    else:
        parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu = process CPU time, steadier when other programs share the machine")
    parser.add_argument("--allocator", choices=["reuse", "default"], default="reuse",
                        help="reuse = keep freed host memory for the next step (icolightning.nn.allocator); "
                             "default = glibc's own mmap/trim behaviour")


def runtime(args: argparse.Namespace) -> tuple[torch.device, torch.dtype, Callable[[], float]]:
    """Apply --threads and --allocator; return the device, the dtype and the clock the options chose."""
    if args.allocator == "reuse":
        reuse_freed_memory()
    if isinstance(args.threads, int):
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    return torch.device(args.device), getattr(torch, args.dtype), clock
