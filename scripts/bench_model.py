"""Whole-model training step: IcoUNet / IcoClassifier vs planar conv2d networks of the same dense width.

A regular field of C channels is C·6 dense channels, so the planar networks get widths x6 and run
on the same pixels: the 5 charts (H x 2H each) as 5 independent images per sample. Planar U-Net:
two (conv3x3 -> batch norm -> ReLU) per stage, 2x2 max pooling, nearest upsampling, skip
concatenation, a 3x3 conv head. Planar classifier: the same encoder, global mean, the same MLP head.

Forward + backward of a loss, batch 8, float32 by default, interleaved in one process (median of
N), plus the peak memory a step allocates beyond what it holds before it starts. The planar
networks run in both layouts (NCHW and channels-last); the ratio is taken against the faster.

    python scripts/bench_model.py                    # levels 4 and 5 (about 1-2 min on 2 quiet cores)
    python scripts/bench_model.py --level 4 5 6      # + level 6 (several minutes more on a CPU)
    python scripts/bench_model.py --threads 1 --clock cpu   # steadier on a shared machine
    python scripts/bench_model.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from bench_runtime import add_runtime_args, runtime
from torch import nn

from icolightning.grid import ORIENTATIONS, IcoGrid
from icolightning.models import IcoClassifier, IcoUNet

UNET_WIDTHS, CLASSIFIER_WIDTHS = (16, 32, 64), (8, 16, 32)


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k in range(2):
        layers += [nn.Conv2d(c_in if k == 0 else c_out, c_out, 3, padding=1, bias=False),
                   nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.Sequential(*layers)


class PlanarUNet(nn.Module):
    """The plain U-Net the icosahedral one is measured against, on [B·5, C, H, W] images."""

    def __init__(self, in_channels: int, num_classes: int, widths: list[int]) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(_conv_block(in_channels if i == 0 else widths[i - 1], w)
                                      for i, w in enumerate(widths))
        self.decoders = nn.ModuleList(_conv_block(widths[i + 1] + widths[i], widths[i])
                                      for i in reversed(range(len(widths) - 1)))
        self.head = nn.Conv2d(widths[0], num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for decoder, skip in zip(self.decoders, reversed(skips[:-1]), strict=True):
            x = decoder(torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), skip], 1))
        return self.head(x)


class PlanarClassifier(nn.Module):
    """The plain classifier: the same encoder pyramid, global mean over all charts, an MLP head."""

    def __init__(self, in_channels: int, num_classes: int, widths: list[int], hidden: int = 64) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(_conv_block(in_channels if i == 0 else widths[i - 1], w)
                                      for i, w in enumerate(widths))
        self.head = nn.Sequential(nn.Linear(widths[-1], hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, encoder in enumerate(self.encoders):
            x = encoder(x if i == 0 else F.max_pool2d(x, 2))
        return self.head(x.mean((-2, -1)).unflatten(0, (-1, 5)).mean(1))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bytes(step: Callable[[], None], device: torch.device) -> int:
    """Memory a step needs: on CUDA the peak allocated beyond what was held before it; on CPU
    (no allocator statistics) the bytes of the distinct storages autograd saves for backward,
    the part of the peak that grows with the network."""
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values())


def training_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        for p in model.parameters():
            p.grad = None
        F.cross_entropy(model(x).float(), target).backward()
    return step


def interleaved(steps: list[Callable[[], None]], repeats: int, device: torch.device,
                clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Median seconds of each step, run in turn so that all see the same machine state."""
    for step in steps:
        step()
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for step, record in zip(steps, times, strict=True):
            _sync(device)
            start = clock()
            step()
            _sync(device)
            record.append(clock() - start)
    return [statistics.median(t) for t in times]


def _case(task: str, level: int, batch: int, device: torch.device, dtype: torch.dtype
          ) -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    grid = IcoGrid(level)
    height, width = grid.chart_shape
    if task == "unet":
        in_channels, classes, widths = 16, 3, UNET_WIDTHS
        ico: nn.Module = IcoUNet(in_channels, classes, level, widths)
        planar: nn.Module = PlanarUNet(in_channels, classes, [w * ORIENTATIONS for w in widths])
        ico_target = torch.randint(classes, (batch, grid.num_vertices), device=device)
        planar_target = torch.randint(classes, (batch * 5, height, width), device=device)
    else:
        in_channels, classes, widths = 1, 10, CLASSIFIER_WIDTHS
        ico = IcoClassifier(in_channels, classes, level, widths)
        planar = PlanarClassifier(in_channels, classes, [w * ORIENTATIONS for w in widths])
        ico_target = planar_target = torch.randint(classes, (batch,), device=device)
    x = torch.randn(batch, in_channels, grid.num_vertices, device=device, dtype=dtype)
    images = torch.randn(batch * 5, in_channels, height, width, device=device, dtype=dtype)
    return ico.to(device, dtype), planar.to(device, dtype), x, images, ico_target, planar_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--level", type=int, nargs="*", default=[4, 5])
    parser.add_argument("--model", nargs="*", choices=["unet", "classifier"], default=["unet", "classifier"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per network (median)")
    add_runtime_args(parser, ["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    device, dtype, clock = runtime(args)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"device={device} dtype={args.dtype} threads={torch.get_num_threads()} batch={args.batch} "
          f"clock={args.clock} training step (forward + backward), median of {args.repeats}; load average {load}")
    print(f"{'model':<11}{'level':>6}{'ico ms':>10}{'NCHW ms':>10}{'NHWC ms':>10}{'time x':>8}"
          f"{'ico MB':>9}{'planar MB':>11}{'memory x':>10}")
    for task in args.model:
        for level in args.level:
            ico, planar, x, images, ico_target, planar_target = _case(task, level, args.batch, device, dtype)
            planar_cl = copy.deepcopy(planar).to(memory_format=torch.channels_last)
            images_cl = images.contiguous(memory_format=torch.channels_last)
            steps = [training_step(ico, x, ico_target), training_step(planar, images, planar_target),
                     training_step(planar_cl, images_cl, planar_target)]
            ico_s, nchw_s, nhwc_s = interleaved(steps, args.repeats, device, clock)
            best = min(nchw_s, nhwc_s)
            planar_step = steps[1] if nchw_s <= nhwc_s else steps[2]
            ico_mb, planar_mb = (peak_bytes(s, device) / 2**20 for s in (steps[0], planar_step))
            print(f"{task:<11}{level:>6}{ico_s * 1e3:>10.1f}{nchw_s * 1e3:>10.1f}{nhwc_s * 1e3:>10.1f}"
                  f"{ico_s / best:>8.2f}{ico_mb:>9.1f}{planar_mb:>11.1f}{ico_mb / planar_mb:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
