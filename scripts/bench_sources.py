"""Where a U-Net training step's non-convolution time goes, by the layer that issued each op.

One step of the IcoUNet and of its planar NHWC twin (`bench_model.py`'s, batch 8, float32, 1 thread by
default) runs under a dispatch mode that times every aten call on the thread's CPU clock. A forward
call is charged to the innermost `icolightning` frame on the Python stack; a backward call to the
Python frame running it (the custom autograd functions' backwards) or else to the frame whose forward
op made the autograd node (a function mode maps nodes to frames). The calls are then grouped by
source (batch norm forward and backward, padding, corner rule, pooling and upsampling, concatenation),
next to the planar ops doing the same job. The mode's own overhead is not timed, so the totals run
below a plain step's only by the convolutions' variance; compare sources, not totals.

    python scripts/bench_sources.py --level 4 5
    python scripts/bench_sources.py --level 5 --ops     # + every source's five largest ops
"""

from __future__ import annotations

import argparse
import collections
import time
import traceback
from pathlib import Path

import bench_model as bm
import torch
from bench_convcalls import python_body
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from icolightning.nn.allocator import reuse_freed_memory

PACKAGE = str(Path(bm.__file__).resolve().parents[1] / "icolightning") + "/"
CONVOLUTIONS = {"convolution", "convolution_backward", "mkldnn_convolution", "_convolution"}

# (row, which ico sources, which planar ops): a source is "fwd FILE:FUNCTION" or "bwd FILE:FUNCTION"
# (or "bwd NodeName" when no frame is known), a planar op "fwd OP" or "bwd NodeName".
GROUPS = [
    ("batch norm + ReLU, forward",
     lambda s: s.startswith("fwd") and any(k in s for k in ("batch_stats", "fused.py:_forward", "norm.py")),
     lambda s: s in ("fwd native_batch_norm", "fwd relu")),
    ("batch norm + ReLU, backward",
     lambda s: s.startswith("bwd")
     and any(k in s for k in ("batch_stats", "fused.py:_backward", "fused.py:_relu", "fused.py:norm")),
     lambda s: s in ("bwd NativeBatchNormBackward0", "bwd ReluBackward0")),
    ("gauge padding, forward", lambda s: s.startswith("fwd") and "padding.py" in s, lambda s: False),
    ("gauge padding, backward", lambda s: s.startswith("bwd") and "padding.py" in s,
     lambda s: False),
    ("kernel expansion + corner rule", lambda s: "conv.py" in s or "MmBackward0" in s, lambda s: False),
    ("hex max pool + upsampling", lambda s: "pooling.py" in s,
     lambda s: "pool" in s.lower() or "upsample" in s.lower()),
    ("skip concatenation", lambda s: "cat_signals" in s, lambda s: s in ("fwd cat", "bwd CatBackward0")),
]


def _frame() -> str:
    for frame in reversed(traceback.extract_stack()):
        if frame.filename.startswith(PACKAGE):
            return f"{frame.filename[len(PACKAGE):]}:{frame.name}"
    return ""


class _NodeFrames(TorchFunctionMode):
    """Maps every autograd node a torch function creates to the frame that called it."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: dict[object, str] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.grad_fn is not None and t.grad_fn not in self.frames:
                self.frames[t.grad_fn] = _frame()
        return out


class _Timer(TorchDispatchMode):
    def __init__(self, frames: dict[object, str] | None) -> None:
        super().__init__()
        self.frames, self.ms = frames, collections.defaultdict(float)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        body = python_body(func)
        if body is not None:
            with self:
                return body(*args, **(kwargs or {}))
        start = time.thread_time_ns()
        out = func(*args, **(kwargs or {}))
        ms = (time.thread_time_ns() - start) / 1e6
        op = func._schema.name.split("::")[-1]
        node = torch._C._current_autograd_node()
        if self.frames is None:  # planar: ops by name, backward by node
            source = f"bwd {node.name()}" if node is not None else f"fwd {op}"
        elif node is not None:
            source = "bwd " + (_frame() or self.frames.get(node) or node.name())
        else:
            source = "fwd " + (_frame() or "other")
        if self.frames is not None and op.startswith("gauge_pad"):  # the padding's operators, wherever called
            source = f"{'bwd' if op.endswith('backward') else 'fwd'} nn/padding.py:{op}"
        self.ms[(source, "convolution" if op in CONVOLUTIONS else op)] += ms
        return out


def profile_step(level: int, ico: bool, batch: int) -> dict[tuple[str, str], float]:
    """Milliseconds per (source, op) of one training step after a warm-up step."""
    torch.manual_seed(0)
    ico_net, planar, x, images, ico_target, planar_target = bm._case("unet", level, batch, torch.device("cpu"),
                                                                     torch.float32)
    if ico:
        step = bm.training_step(ico_net, x, ico_target)
    else:
        planar = planar.to(memory_format=torch.channels_last)
        step = bm.training_step(planar, images.contiguous(memory_format=torch.channels_last), planar_target)
    step()
    frames = _NodeFrames()
    timer = _Timer(frames.frames if ico else None)
    with frames, timer:
        step()
    return timer.ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--level", type=int, nargs="+", default=[4, 5])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ops", action="store_true", help="list every source's largest ops")
    args = parser.parse_args()
    reuse_freed_memory()
    torch.set_num_threads(args.threads)
    for level in args.level:
        ico, planar = profile_step(level, True, args.batch), profile_step(level, False, args.batch)
        print(f"\nlevel {level}, batch {args.batch}, {args.threads} thread(s), CPU ms of one step")
        for name, times in (("ico", ico), ("planar NHWC", planar)):
            conv = sum(ms for (_, op), ms in times.items() if op == "convolution")
            print(f"{name}: all ops {sum(times.values()):.1f}, convolutions {conv:.1f}, "
                  f"the rest {sum(times.values()) - conv:.1f}")
        by_source = collections.defaultdict(float)
        planar_by_op = collections.defaultdict(float)
        for (source, op), ms in ico.items():
            if op != "convolution":
                by_source[source] += ms
        for (source, op), ms in planar.items():
            if op != "convolution":
                planar_by_op[source] += ms
        print("| source | ico ms | planar NHWC ms |\n|---|---:|---:|")
        left, planar_left = dict(by_source), dict(planar_by_op)
        for name, ico_match, planar_match in GROUPS:
            mine = sum(left.pop(s) for s in [s for s in left if ico_match(s)])
            theirs = sum(planar_left.pop(s) for s in [s for s in planar_left if planar_match(s)])
            print(f"| {name} | {mine:.1f} | {theirs:.1f} |")
        print(f"| the rest | {sum(left.values()):.1f} | {sum(planar_left.values()):.1f} |")
        if args.ops:
            ops = collections.defaultdict(list)
            for (source, op), ms in ico.items():
                if op != "convolution":
                    ops[source].append((ms, op))
            for source, ms in sorted(by_source.items(), key=lambda kv: -kv[1]):
                top = ", ".join(f"{op} {t:.1f}" for t, op in sorted(ops[source], reverse=True)[:5])
                print(f"{ms:8.1f}  {source}  [{top}]")
            print("the rest:", sorted(left.items(), key=lambda kv: -kv[1])[:8], "planar:", planar_left)


if __name__ == "__main__":
    main()
