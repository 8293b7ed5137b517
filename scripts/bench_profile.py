"""One profiled training step per network, op by op: where the icosahedral step spends what the planar
one does not. Used by `bench_model.py --profile`.

Self times (CPU and device together) per profiler key, so every millisecond is counted once; the
custom operators of `icolightning` (gauge padding forward and backward) are also shown with their
inclusive time, since their self time leaves out the aten ops they run inside.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

CONVOLUTION_OPS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::cudnn_convolution",
                   "aten::_convolution", "aten::convolution_overrideable")
CUSTOM_PREFIX = "icolightning::"


def op_times(step: Callable[[], None]) -> tuple[dict[str, float], dict[str, float]]:
    """(self ms per op, inclusive ms per icolightning custom op) of one step, after one warm-up step."""
    step()
    with torch.profiler.profile() as prof:
        step()
    own: dict[str, float] = {}
    inclusive: dict[str, float] = {}
    for event in prof.key_averages():
        own[event.key] = (event.self_cpu_time_total + getattr(event, "self_device_time_total", 0.0)) / 1e3
        if event.key.startswith(CUSTOM_PREFIX):
            inclusive[event.key] = (event.cpu_time_total + getattr(event, "device_time_total", 0.0)) / 1e3
    return own, inclusive


def split_by_convolution(own: dict[str, float]) -> tuple[float, float]:
    """(convolution ms, everything else ms) of one step's self times."""
    conv = sum(ms for key, ms in own.items() if key in CONVOLUTION_OPS)
    return conv, sum(own.values()) - conv


def gap_rows(ico: dict[str, float], planar: dict[str, float], top: int) -> list[tuple[str, float, float]]:
    """The `top` ops by icosahedral minus planar self time, largest gap first (ties by name, so the
    table is the same on every run): (op, ico ms, planar ms)."""
    keys = sorted(set(ico) | set(planar), key=lambda k: (planar.get(k, 0.0) - ico.get(k, 0.0), k))
    return [(k, ico.get(k, 0.0), planar.get(k, 0.0)) for k in keys[:top]]


def print_profile(task: str, ico_step: Callable[[], None], planar_name: str, planar_step: Callable[[], None],
                  top: int = 12) -> None:
    """Convolutions vs the rest per network, then the per-op gap table and the custom ops' inclusive time."""
    ico, inclusive = op_times(ico_step)
    planar, _ = op_times(planar_step)
    for name, own in ((task, ico), (planar_name, planar)):
        conv, other = split_by_convolution(own)
        print(f"  profile {name:<12} convolutions {conv:9.1f} ms, everything else {other:9.1f} ms "
              f"({100 * conv / (conv + other):.0f} % convolutions)", flush=True)
    print(f"  {'op (self time)':<38}{'ico ms':>10}{'planar ms':>11}{'gap ms':>10}")
    for key, ico_ms, planar_ms in gap_rows(ico, planar, top):
        print(f"  {key:<38}{ico_ms:10.1f}{planar_ms:11.1f}{ico_ms - planar_ms:10.1f}")
    total = sum(ico.values()) - sum(planar.values())
    print(f"  {'all ops':<38}{sum(ico.values()):10.1f}{sum(planar.values()):11.1f}{total:10.1f}")
    for key, ms in sorted(inclusive.items()):
        print(f"  {key + ' (inclusive)':<38}{ms:10.1f}")
