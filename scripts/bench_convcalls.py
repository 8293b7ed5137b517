"""Every convolution of a training step, call by call: the icosahedral network against its planar twins.
Used by `bench_model.py --convs`.

A `TorchDispatchMode` times each `aten.convolution` (forward) and `aten.convolution_backward` call of a
step with the benchmark's clock and records what the call got: weight shape, input size and memory
format, padding, which gradients it computes. The planar networks mirror the icosahedral ones layer
by layer, so the steps make the same calls in the same order and are matched by position (a layer whose
input comes in parts makes one call per part, summed into one row: `merge_split_calls`); the steps
run interleaved and each call's median over the repeats is printed.

`MAC x` is the arithmetic of the two calls: the multiply-adds a convolution library does when it
skips the kernel taps that fall on implicit zero padding (oneDNN does). An icosahedral conv2d runs
with padding 0 over the gauge-padded charts, so every output pixel applies all 9 taps of the dense
3x3 kernel to real values; the planar conv2d with padding 1 skips the taps on its zero border. For
an H x W output that is 9·H·W / ((3H - 2)(3W - 2)): 1.03 at 32x64, 1.07 at 16x32, 1.14 at 8x16,
1.31 at 4x8, the same for the forward and both backward products.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
CONVOLUTIONS = (aten.convolution.default, aten.convolution_backward.default)


def memory_format(t: torch.Tensor | None) -> str:
    """"NCHW", "NHWC" (channels-last) or "strided" (neither: the library copies it first); "-" for None."""
    if t is None:
        return "-"
    if t.is_contiguous():
        return "NCHW"
    return "NHWC" if t.is_contiguous(memory_format=torch.channels_last) else "strided"


def taps(size_in: int, size_out: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Kernel taps over one spatial axis that land inside the input, summed over the output positions."""
    return sum(0 <= o * stride - padding + t * dilation < size_in for o in range(size_out) for t in range(kernel))


@dataclass(frozen=True)
class ConvCall:
    kind: str
    """"forward" or "backward"."""
    weight: tuple[int, ...]
    input: tuple[int, ...]
    input_format: str
    grad_format: str
    """Memory format of the output gradient (backward), "-" for a forward call."""
    padding: tuple[int, ...]
    grads: str
    """Gradients a backward call computes: "i" (input), "w" (weight), "b" (bias); "-" for a forward call."""
    macs: int
    """Multiply-adds with the taps on implicit padding skipped (each computed gradient costs as many)."""
    seconds: float

    def key(self) -> tuple:
        return self.kind, self.weight, self.grads

    @classmethod
    def of(cls, func, args: Sequence, output: torch.Tensor | tuple, seconds: float) -> ConvCall:
        backward = func is aten.convolution_backward.default
        if backward:
            grad, x, weight, _, stride, padding, dilation, _, _, groups, mask = args
            out_size = grad.shape[-2:]
        else:
            x, weight, _, stride, padding, dilation, _, _, groups = args
            grad, mask, out_size = None, None, output.shape[-2:]
        per_product = x.shape[0] * weight.shape[0] * weight.shape[1]
        for axis in range(2):
            per_product *= taps(x.shape[2 + axis], out_size[axis], weight.shape[2 + axis], stride[axis],
                                padding[axis], dilation[axis])
        products = int(mask[0]) + int(mask[1]) if backward else 1
        grads = "".join(name for name, wanted in zip("iwb", mask, strict=True) if wanted) if backward else "-"
        return cls("backward" if backward else "forward", tuple(weight.shape), tuple(x.shape), memory_format(x),
                   memory_format(grad), tuple(padding), grads, per_product * products // max(groups, 1), seconds)


def python_body(func) -> Callable | None:
    """The Python body of an icolightning custom operator other than the gauge padding (None for any
    other op). A dispatch mode that records a step's aten ops runs it under itself, so the ops inside
    the layers' operators are recorded (the padding stays one op, as it always was)."""
    if func.namespace != "icolightning" or func._schema.name.startswith("icolightning::gauge_pad"):
        return None
    from torch._library.custom_ops import OPDEFS

    opdef = OPDEFS.get(func._schema.name)
    return None if opdef is None else opdef._init_fn


class _Recorder(TorchDispatchMode):
    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__()
        self.clock, self.calls = clock, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        body = python_body(func)
        if body is not None:
            with self:
                return body(*args, **kwargs)
        if func not in CONVOLUTIONS:
            return func(*args, **kwargs)
        cuda = args[0].device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(args[0].device)
        start = self.clock()
        out = func(*args, **kwargs)
        if cuda:
            torch.cuda.synchronize(args[0].device)
        self.calls.append(ConvCall.of(func, args, out, self.clock() - start))
        return out


def record(step: Callable[[], None], clock: Callable[[], float]) -> list[ConvCall]:
    """The convolution calls of one run of `step`, in order, each with its time on `clock`."""
    recorder = _Recorder(clock)
    with recorder:
        step()
    return recorder.calls


def merge_split_calls(calls: list[ConvCall], reference: list[ConvCall]) -> list[ConvCall]:
    """`calls` with each run of consecutive calls that together make one of `reference`'s calls merged
    into one: a layer whose input comes in parts (the U-Net decoder's [upsampled, skip], see
    `IcoConv`) makes one call per part where its planar twin convolves the concatenation."""
    merged, i = [], 0
    for want in reference:
        call = calls[i] if i < len(calls) else None
        j = i + 1
        while call is not None and call.key() != want.key() and j < len(calls):
            part = calls[j]
            if (part.kind, part.weight[0], part.weight[2:], part.grads) != (call.kind, call.weight[0], call.weight[2:],
                                                                            call.grads):
                break
            call = ConvCall(call.kind, (call.weight[0], call.weight[1] + part.weight[1], *call.weight[2:]),
                            call.input, call.input_format, call.grad_format, call.padding, call.grads,
                            call.macs + part.macs, call.seconds + part.seconds)
            j += 1
        if call is None or call.key() != want.key():
            return calls  # no split explains the difference: compare reports it
        merged.append(call)
        i = j
    return merged + calls[i:]


def compare(steps: Sequence[Callable[[], None]], repeats: int, clock: Callable[[], float]
            ) -> list[tuple[list[ConvCall], list[float]]]:
    """(the call in every step, its median seconds in every step) for each convolution call; the steps
    run interleaved, one warm-up each. Raises ValueError when the steps' calls do not pair up."""
    for step in steps:
        step()
    runs: list[list[list[ConvCall]]] = [[] for _ in steps]
    for _ in range(repeats):
        for step, calls in zip(steps, runs, strict=True):
            calls.append(record(step, clock))
    runs[0] = [merge_split_calls(calls, runs[1][0]) for calls in runs[0]] if len(runs) > 1 else runs[0]
    first = [calls[0] for calls in runs]
    for calls in first[1:]:
        if [c.key() for c in calls] != [c.key() for c in first[0]]:
            raise ValueError("the networks make different convolution calls: "
                             f"{[c.key() for c in first[0]]} vs {[c.key() for c in calls]}")
    return [([calls[i] for calls in first], [statistics.median(run[i].seconds for run in calls) for calls in runs])
            for i in range(len(first[0]))]


def print_convs(task: str, steps: Sequence[Callable[[], None]], names: Sequence[str], repeats: int,
                clock: Callable[[], float]) -> None:
    """Print every convolution call of `steps` (the icosahedral one first, then the planar twins, the last
    of which is the like-for-like layout) with its median time in each, and totals per direction."""
    rows = compare(steps, repeats, clock)
    print(f"  {task}: every convolution of one step, median of {repeats} (ms); ratios against {names[-1]}")
    print(f"  {'call':<9}{'weight':<18}{'ico input':<22}{'planar input':<22}{'grads':>6}"
          + "".join(f"{n:>13}" for n in names) + f"{'time x':>8}{'MAC x':>7}")
    totals = {kind: [0.0] * len(names) for kind in ("forward", "backward", "all")}
    macs = {kind: [0, 0] for kind in totals}
    for (call, *_, planar), seconds in rows:
        ico_in = f"{'x'.join(map(str, call.input[-2:]))} {call.input_format} p{call.padding[0]}"
        planar_in = f"{'x'.join(map(str, planar.input[-2:]))} {planar.input_format} p{planar.padding[0]}"
        weight = "x".join(map(str, call.weight[:2]))
        print(f"  {call.kind:<9}{weight:<18}{ico_in:<22}{planar_in:<22}{call.grads:>6}"
              + "".join(f"{s * 1e3:>13.1f}" for s in seconds)
              + f"{seconds[0] / seconds[-1]:>8.2f}{call.macs / planar.macs:>7.2f}")
        for kind in (call.kind, "all"):
            totals[kind] = [t + s for t, s in zip(totals[kind], seconds, strict=True)]
            macs[kind] = [macs[kind][0] + call.macs, macs[kind][1] + planar.macs]
    for kind, seconds in totals.items():
        ico_macs, planar_macs = macs[kind]
        print(f"  {'total ' + kind:<77}" + "".join(f"{s * 1e3:>13.1f}" for s in seconds)
              + f"{seconds[0] / seconds[-1]:>8.2f}{ico_macs / planar_macs:>7.2f}")
