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
    python scripts/bench_model.py --threads 1 --clock cpu   # one thread count only; CPU clock, steadier when shared
    python scripts/bench_model.py --compile          # torch.compile'd networks, with each one's compile time
    python scripts/bench_model.py --allocator default   # glibc's own mmap/trim (freed blocks refaulted each step)
    python scripts/bench_model.py --device cuda --dtype bfloat16
    python scripts/bench_model.py --profile          # + convolution time vs the rest, and the per-op gap
    python scripts/bench_model.py --convs --clock cpu   # + every convolution call of a step, ico vs planar
    python scripts/bench_model.py --memory-only --level 4 5 6   # memory of one step each, no timing (fast)
    python scripts/bench_model.py --model unet --icocnn ~/src/icoCNN   # + the U-Net built from icoCNN's layers

`--icocnn PATH` (U-Net only, float32) also times, in the same interleaved loop, the same U-Net built
from the layers of icoCNN (github.com/DavidDiazGuerra/icoCNN, AGPL-3.0: never vendored here, never a
dependency), imported at run time from the checkout at PATH: ConvIco, PoolIco (max over the 7-cell
hexagon), UnPoolIco, batch norm shared over the 6 orientations, on its [B, C, R, 5, H, W] signals.
icoCNN itself needs einops, numpy, scipy and matplotlib importable (einops is not an icolightning
dependency: put it on PYTHONPATH, e.g. pip install --target DIR einops).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from bench_convcalls import print_convs
from bench_profile import print_profile
from bench_runtime import add_runtime_args, runtime
from torch import nn

from icolightning.grid import ORIENTATIONS, IcoGrid
from icolightning.models import IcoClassifier, IcoUNet

UNET_WIDTHS, CLASSIFIER_WIDTHS = (16, 32, 64), (8, 16, 32)
UNET_IN_CHANNELS, UNET_CLASSES = 16, 3
ICOCNN_LAYERS = ("ConvIco", "PoolIco", "UnPoolIco")


def _conv_block(c_in: int, c_out: int, conv: Callable[[int, int, int], nn.Module] | None = None,
                norm: Callable[[int], nn.Module] = nn.BatchNorm2d) -> nn.Sequential:
    """Two (conv -> norm -> ReLU); conv(c_in, c_out, k) builds the k-th convolution (default: planar 3x3)."""
    conv = conv or (lambda i, o, k: nn.Conv2d(i, o, 3, padding=1, bias=False))
    layers: list[nn.Module] = []
    for k in range(2):
        layers += [conv(c_in if k == 0 else c_out, c_out, k), norm(c_out), nn.ReLU()]
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """Encoder-decoder with skip concatenation along dim 1; its layers come from the builder, so the planar
    and the icoCNN U-Net share one structure. Stage i: down(i) (for i > 0), then block(c_in, c_out, i, first)
    (first: the block that takes the network's input); up(i) takes stage i + 1 back to stage i."""

    def __init__(self, in_channels: int, widths: list[int], block: Callable[[int, int, int, bool], nn.Module],
                 down: Callable[[int], nn.Module], up: Callable[[int], nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(
            nn.Sequential(*([] if i == 0 else [down(i)]), block(in_channels if i == 0 else widths[i - 1], w, i, i == 0))
            for i, w in enumerate(widths))
        stages = list(reversed(range(len(widths) - 1)))
        self.ups = nn.ModuleList(up(i) for i in stages)
        self.decoders = nn.ModuleList(block(widths[i + 1] + widths[i], widths[i], i, False) for i in stages)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips[:-1]), strict=True):
            x = decoder(torch.cat([up(x), skip], 1))
        return self.head(x)


def planar_unet(in_channels: int, num_classes: int, widths: list[int]) -> UNet:
    """The plain U-Net the icosahedral one is measured against, on [B·5, C, H, W] images."""
    return UNet(in_channels, widths, lambda i, o, stage, first: _conv_block(i, o), lambda stage: nn.MaxPool2d(2),
                lambda stage: nn.Upsample(scale_factor=2.0, mode="nearest"),
                nn.Conv2d(widths[0], num_classes, 3, padding=1))


class OrientationSharedBatchNorm(nn.BatchNorm3d):
    """Batch norm of icoCNN signals [B, C, R, 5, H, W]: one mean and scale per channel, shared over the
    R orientations (as IcoBatchNorm does), so the norm does not break equivariance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(2, 3)).unflatten(2, x.shape[2:4])


class OrientationMean(nn.Module):
    """Regular -> scalar: the mean over the orientation axis of [B, C, R, 5, H, W], an invariant head."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(2)


def icocnn_unet(ico_cnn: ModuleType, in_channels: int, num_classes: int, level: int, widths: list[int]) -> UNet:
    """IcoUNet's architecture (S2R, batch norm, max hex pooling, invariant head) from icoCNN's layers:
    [B, C, 1, 5, 2^L, 2^(L+1)] scalar input -> logits [B, num_classes, 5, 2^L, 2^(L+1)]."""

    def block(c_in: int, c_out: int, stage: int, first: bool) -> nn.Module:
        def conv(i: int, o: int, k: int) -> nn.Module:  # orientations in: 1 for the scalar input, else 6
            return ico_cnn.ConvIco(level - stage, i, o, 1 if first and k == 0 else 6, bias=False)
        return _conv_block(c_in, c_out, conv, OrientationSharedBatchNorm)

    head = nn.Sequential(ico_cnn.ConvIco(level, widths[0], num_classes, 6), OrientationMean())
    return UNet(in_channels, widths, block, lambda stage: ico_cnn.PoolIco(level - stage + 1, 6, function=torch.amax),
                lambda stage: ico_cnn.UnPoolIco(level - stage - 1, 6), head)


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
                clock: Callable[[], float] = time.perf_counter) -> tuple[list[float], list[float]]:
    """Median seconds of each step, run in turn so that all see the same machine state, and the median
    kernel (sys) seconds of each: page faults of freshly mapped memory show there."""
    for step in steps:
        step()
    times: list[list[float]] = [[] for _ in steps]
    kernel: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for step, record, sys_record in zip(steps, times, kernel, strict=True):
            _sync(device)
            start, sys_start = clock(), resource.getrusage(resource.RUSAGE_SELF).ru_stime
            step()
            _sync(device)
            record.append(clock() - start)
            sys_record.append(resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys_start)
    return [statistics.median(t) for t in times], [statistics.median(t) for t in kernel]


def _case(task: str, level: int, batch: int, device: torch.device, dtype: torch.dtype
          ) -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    grid = IcoGrid(level)
    height, width = grid.chart_shape
    if task == "unet":
        in_channels, classes, widths = UNET_IN_CHANNELS, UNET_CLASSES, UNET_WIDTHS
        ico: nn.Module = IcoUNet(in_channels, classes, level, widths)
        planar: nn.Module = planar_unet(in_channels, classes, [w * ORIENTATIONS for w in widths])
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


def load_icocnn(path: str) -> ModuleType:
    """Import icoCNN from the checkout at `path`, at run time only (AGPL: never vendored, never a dependency).
    Exits with a one-line message when `path` holds no icoCNN or it cannot be imported."""
    root = Path(path).expanduser().resolve()
    where = f"bench_model.py: --icocnn {path}:"
    if not (root / "icoCNN" / "__init__.py").is_file():
        raise SystemExit(f"{where} no icoCNN checkout there (expected {root}/icoCNN/__init__.py "
                         f"from github.com/DavidDiazGuerra/icoCNN)")
    sys.path.insert(0, str(root))
    try:
        ico_cnn = importlib.import_module("icoCNN")
    except ImportError as err:
        raise SystemExit(f"{where} importing icoCNN failed ({err}); it needs einops, numpy, scipy and matplotlib"
                         ) from None
    found = Path(ico_cnn.__file__ or "").resolve()
    if not found.is_relative_to(root):
        raise SystemExit(f"{where} Python imported another icoCNN, from {found}")
    missing = [name for name in ICOCNN_LAYERS if not hasattr(ico_cnn, name)]
    if missing:
        raise SystemExit(f"{where} the icoCNN there lacks {', '.join(missing)}")
    return ico_cnn


def _icocnn_case(ico_cnn: ModuleType, level: int, batch: int, device: torch.device, dtype: torch.dtype
                 ) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The icoCNN U-Net with random input and target in its own layout (the same 5 charts of 2^L x 2^(L+1))."""
    height, width = IcoGrid(level).chart_shape
    model = icocnn_unet(ico_cnn, UNET_IN_CHANNELS, UNET_CLASSES, level, list(UNET_WIDTHS))
    x = torch.randn(batch, UNET_IN_CHANNELS, 1, 5, height, width, device=device, dtype=dtype)
    target = torch.randint(UNET_CLASSES, (batch, 5, height, width), device=device)
    return model.to(device, dtype), x, target


def _row(name: str, level: int, seconds: float, nchw_s: float, nhwc_s: float, mb: float, planar_mb: float,
         sys_s: float) -> str:
    return (f"{name:<14}{level:>6}{seconds * 1e3:>10.1f}{nchw_s * 1e3:>10.1f}{nhwc_s * 1e3:>10.1f}"
            f"{seconds / min(nchw_s, nhwc_s):>8.2f}{mb:>9.1f}{planar_mb:>11.1f}{mb / planar_mb:>10.2f}"
            f"{sys_s * 1e3:>9.1f}")


HEADER = (f"{'model':<14}{'level':>6}{'ico ms':>10}{'NCHW ms':>10}{'NHWC ms':>10}{'time x':>8}"
          f"{'ico MB':>9}{'planar MB':>11}{'memory x':>10}{'sys ms':>9}")


MEMORY_HEADER = f"{'model':<14}{'level':>6}{'ico MB':>9}{'NCHW MB':>10}{'NHWC MB':>10}{'memory x':>10}"


def compiled(model: nn.Module, step_of: Callable[[nn.Module], Callable[[], None]]) -> tuple[Callable[[], None], float]:
    """The training step of `torch.compile(model)` and the seconds its first call took (the compile)."""
    step = step_of(torch.compile(model))
    start = time.perf_counter()
    step()
    return step, time.perf_counter() - start


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--level", type=int, nargs="*", default=[4, 5])
    parser.add_argument("--model", nargs="*", choices=["unet", "classifier"], default=["unet", "classifier"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per network (median)")
    parser.add_argument("--compile", action="store_true",
                        help="time torch.compile'd networks (and print each network's compile time)")
    parser.add_argument("--icocnn", metavar="PATH", default=None,
                        help="also time the U-Net built from icoCNN's layers, imported from the checkout at PATH "
                             "(unet model only, float32; icoCNN needs einops on the path)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one step of each network: convolutions vs the rest, and the ops where "
                             "the icosahedral step spends more than the planar one")
    parser.add_argument("--convs", action="store_true",
                        help="also time every convolution call (forward and backward) of a step of each network, "
                             "call by call, interleaved (median of --repeats), with the multiply-adds each needs")
    parser.add_argument("--memory-only", action="store_true",
                        help="only the memory of one step of each network (both planar layouts), no timing")
    add_runtime_args(parser, ["float32", "bfloat16", "float16"], thread_sweep=True)
    return parser


def _steps(task: str, level: int, args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
           ico_cnn: ModuleType | None) -> list[Callable[[], None]]:
    """[ico, planar NCHW, planar NHWC, (icoCNN)] training steps; compiled ones print their compile time."""
    ico, planar, x, images, ico_target, planar_target = _case(task, level, args.batch, device, dtype)
    planar_cl = copy.deepcopy(planar).to(memory_format=torch.channels_last)
    images_cl = images.contiguous(memory_format=torch.channels_last)
    cases = [(ico, x, ico_target), (planar, images, planar_target), (planar_cl, images_cl, planar_target)]
    if task == "unet" and ico_cnn is not None:
        cases.append(_icocnn_case(ico_cnn, level, args.batch, device, dtype))
    if not args.compile:
        return [training_step(*case) for case in cases]
    steps = []
    for name, (model, inputs, target) in zip(("ico", "planar NCHW", "planar NHWC", "icoCNN"), cases, strict=False):
        step, seconds = compiled(model, lambda m, i=inputs, t=target: training_step(m, i, t))
        print(f"  compile {task} level {level} {name}: {seconds:.1f} s", flush=True)
        steps.append(step)
    return steps


def _measure(task: str, level: int, args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
             clock: Callable[[], float], ico_cnn: ModuleType | None) -> None:
    steps = _steps(task, level, args, device, dtype, ico_cnn)
    if args.memory_only:
        ico_mb, nchw_mb, nhwc_mb, *_ = (peak_bytes(s, device) / 2**20 for s in steps)
        ratio = ico_mb / min(nchw_mb, nhwc_mb)
        print(f"{task:<14}{level:>6}{ico_mb:>9.1f}{nchw_mb:>10.1f}{nhwc_mb:>10.1f}{ratio:>10.2f}", flush=True)
        return
    (ico_s, nchw_s, nhwc_s, *icocnn_s), (ico_sys, *_) = interleaved(steps, args.repeats, device, clock)
    planar_step = steps[1] if nchw_s <= nhwc_s else steps[2]
    ico_mb, planar_mb, *icocnn_mb = (peak_bytes(s, device) / 2**20 for s in [steps[0], planar_step, *steps[3:]])
    print(_row(task, level, ico_s, nchw_s, nhwc_s, ico_mb, planar_mb, ico_sys), flush=True)
    for seconds, mb in zip(icocnn_s, icocnn_mb, strict=True):
        print(_row("icoCNN U-Net", level, seconds, nchw_s, nhwc_s, mb, planar_mb, float("nan")), flush=True)
    if args.profile:
        layout = "NCHW" if planar_step is steps[1] else "NHWC"
        print_profile(task, steps[0], f"planar {layout}", planar_step)
    if args.convs:
        print_convs(task, steps[:3], ["ico", "planar NCHW", "planar NHWC"], args.repeats, clock)


def main() -> None:
    parser = _parser()
    args = parser.parse_args()
    if args.icocnn is not None and "unet" not in args.model:
        parser.error("--icocnn times the U-Net only: add unet to --model")
    if args.convs and (args.compile or args.memory_only):
        parser.error("--convs times eager steps: drop --compile / --memory-only")
    if args.icocnn is not None and args.dtype != "float32":
        parser.error("--icocnn times float32 only (icoCNN's UnPoolIco builds float32 buffers)")
    ico_cnn = load_icocnn(args.icocnn) if args.icocnn is not None else None
    device, dtype, clock = runtime(args)
    for threads in args.threads:
        torch.set_num_threads(threads)
        load = " ".join(f"{v:.2f}" for v in os.getloadavg())
        print(f"device={device} dtype={args.dtype} threads={threads} batch={args.batch} clock={args.clock} "
              f"allocator={args.allocator} compile={args.compile} training step (forward + backward), "
              f"{'memory of one step' if args.memory_only else f'median of {args.repeats}'}; load average {load}")
        print(MEMORY_HEADER if args.memory_only else HEADER)
        for task in args.model:
            for level in args.level:
                _measure(task, level, args, device, dtype, clock, ico_cnn)


if __name__ == "__main__":
    main()
