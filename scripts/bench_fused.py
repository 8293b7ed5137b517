"""A/B in one process: the shipped model against the same weights with the batch norm unfused
(BN -> ReLU -> GaugePad copy) and the former seven-window hex pool; CPU clock, interleaved.

    python scripts/bench_fused.py unet 3 1 5      # task level threads repeats
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
import types

import torch
import torch.nn.functional as F
from torch import nn

from icolightning.grid import CHART_CORNERS, HEX_OFFSETS, IcoGrid
from icolightning.models import IcoClassifier, IcoUNet
from icolightning.nn import IcoSignal
from icolightning.nn.allocator import reuse_freed_memory
from icolightning.nn.layout import charts_view, memory
from icolightning.nn.norm import IcoBatchNorm
from icolightning.nn.pooling import HexPool, _reduce

NAMES = ("unfused norm, 7-window pool", "unfused norm, new pool", "as shipped (fused norm, new pool)")


def seven_window_pool(self: HexPool, x: IcoSignal) -> IcoSignal:
    """HexPool.forward as it was: seven strided windows stacked, then reduced."""
    padded = self.pad(x)
    buf = memory(padded.buf)
    h, w = x.charts.shape[-2:]
    windows = [buf[:, :, 1 + dh: 1 + dh + h: 2, 1 + dw: 1 + dw + w: 2] for dh, dw in ((0, 0), *HEX_OFFSETS)]
    pooled = _reduce(torch.stack(windows, dim=-1), self.mode, -1)
    corners = _reduce(torch.cat([padded.corner_own[..., None], padded.corner_neighbours.mean(2)], dim=-1), self.mode,
                      -1)
    b, c, r = x.charts.shape[:3]
    values = corners[:, :, :CHART_CORNERS].transpose(1, 2)[..., None].expand(b, CHART_CORNERS, c, r)
    batch = torch.arange(b, device=pooled.device)[:, None]
    pooled = pooled.index_put((batch, self.out_c, self.out_h, self.out_w), values)
    return IcoSignal(charts_view(pooled), corners[:, :, None, CHART_CORNERS:].expand(b, c, r, 2).contiguous())


def variant(model: nn.Module, fuse: bool, new_pool: bool) -> nn.Module:
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, IcoBatchNorm) and not fuse:
            module.pad = None
        if isinstance(module, HexPool) and not new_pool:
            module.forward = types.MethodType(seven_window_pool, module)
    return model


def main() -> None:
    task, level, threads, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    reuse_freed_memory()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    n = IcoGrid(level).num_vertices
    if task == "unet":
        base, x, target = IcoUNet(16, 3, level, (16, 32, 64)), torch.randn(8, 16, n), torch.randint(3, (8, n))
    else:
        base, x, target = IcoClassifier(1, 10, level, (8, 16, 32)), torch.randn(8, 1, n), torch.randint(10, (8,))
    models = [variant(base, False, False), variant(base, False, True), variant(base, True, True)]

    def step(model: nn.Module) -> None:
        for p in model.parameters():
            p.grad = None
        F.cross_entropy(model(x), target).backward()

    for model in models:
        step(model)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(repeats):
        for model, record in zip(models, times, strict=True):
            start = time.process_time()
            step(model)
            record.append(time.process_time() - start)
    medians = [statistics.median(t) for t in times]
    figures = "; ".join(f"{name} {m * 1e3:.0f} ms" for name, m in zip(NAMES, medians, strict=True))
    print(f"{task} level {level} threads {threads} CPU clock, median of {repeats}: {figures}; "
          f"shipped / first {medians[2] / medians[0]:.2f}")


if __name__ == "__main__":
    main()
