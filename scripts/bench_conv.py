"""IcoConv vs a plain conv2d with the same channels on the same number of pixels, side by side.

The plain conv2d runs both in PyTorch's default layout (NCHW) and channels-last (NHWC); IcoConv
keeps its padded charts channels-last, so "vs NHWC" is the like-for-like figure. Two more steps
split IcoConv's cost: "padded" is the conv2d IcoConv itself runs, alone (the same dense kernel over
already padded channels-last charts [B·5, C·R, H+2, W+2], no implicit padding), and "charts" is
the same conv2d over the unpadded charts [B·5, C·R, H, W] with implicit zero padding. IcoConv over
"padded" is the gauge padding and corner rule; "padded" over "charts" is what an explicit border
costs the convolution library.

Forward + backward (input and weight gradients), float32, runs interleaved in one process so
both see the same machine state; prints the median time of each and their ratio.
Target (DESIGN §7): regular->regular, level 5, 16x6 -> 16x6 channels, batch 8: <= 1.15x.

    python scripts/bench_conv.py                  # the full table (levels 4-6, lifting layer)
    python scripts/bench_conv.py --level 5 --repeats 20
    python scripts/bench_conv.py --device cuda --dtype bfloat16
    python scripts/bench_conv.py --level 5 --torch-harmonics   # + torch-harmonics' DISCO convolution

`--torch-harmonics` (optional extra: pip install torch-harmonics) also times the alternative a
user would pick, `DiscreteContinuousConvS2` with the same dense channels (C·6 -> C·6) on an
equiangular grid with about as many points as the level (72x144 at level 5).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from bench_runtime import add_runtime_args, runtime

from icolightning.grid import IcoGrid
from icolightning.nn import IcoConv, IcoSignal


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, reset, clock) -> float:
    reset()
    _sync(device)
    start = clock()
    fn()
    _sync(device)
    return clock() - start


def compare(level: int, channels: int, in_rep: str, batch: int, repeats: int,
            device: torch.device, dtype: torch.dtype, clock=time.perf_counter) -> tuple[float, ...]:
    """Median seconds of (IcoConv, its conv2d alone on padded charts, the same on unpadded charts with
    implicit padding, plain conv2d in the default layout, plain conv2d channels-last)."""
    grid = IcoGrid(level)
    r_in = 6 if in_rep == "regular" else 1
    conv = IcoConv(channels, channels, level, in_rep, "regular").to(device, dtype)
    height, width = grid.chart_shape
    # Charts laid out as a previous IcoConv leaves them: a channels-last [B·5, C·R, H, W] conv output.
    planes = torch.randn(batch * 5, channels * r_in, height, width, device=device, dtype=dtype)
    planes = planes.contiguous(memory_format=torch.channels_last)
    charts = planes.view(batch, 5, channels, r_in, height, width).permute(0, 2, 3, 1, 4, 5).requires_grad_()
    poles = torch.randn(batch, channels, r_in, 2, device=device, dtype=dtype, requires_grad=True)

    plain_w = torch.randn(channels * 6, channels * r_in, 3, 3, device=device, dtype=dtype, requires_grad=True)
    plain_b = torch.zeros(channels * 6, device=device, dtype=dtype, requires_grad=True)
    plain_x = torch.randn(batch, channels * r_in, 5 * height, width, device=device, dtype=dtype,
                          requires_grad=True)
    plain_x_cl = plain_x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    padded_x = torch.randn(batch * 5, channels * r_in, height + 2, width + 2, device=device, dtype=dtype)
    padded_x = padded_x.contiguous(memory_format=torch.channels_last).requires_grad_()
    charts_x = padded_x.detach()[..., 1:-1, 1:-1].contiguous(memory_format=torch.channels_last).requires_grad_()

    # Upstream gradients as a following layer would hand them back: dense, in each output's layout.
    out = conv(IcoSignal(charts, poles))
    grad_charts = torch.randn_like(out.charts)
    grad_poles = torch.randn_like(out.poles)
    plain_grad = torch.randn_like(F.conv2d(plain_x, plain_w, plain_b, padding=1))
    plain_grad_cl = plain_grad.contiguous(memory_format=torch.channels_last)
    padded_grad = torch.randn(batch * 5, channels * 6, height, width, device=device, dtype=dtype)
    padded_grad = padded_grad.contiguous(memory_format=torch.channels_last)
    leaves = (charts, poles, *conv.parameters(), plain_x, plain_x_cl, padded_x, charts_x, plain_w, plain_b)

    def ico_step() -> None:
        out = conv(IcoSignal(charts, poles))
        torch.autograd.backward((out.charts, out.poles), (grad_charts, grad_poles))

    def padded_step() -> None:
        F.conv2d(padded_x, plain_w, plain_b).backward(padded_grad)

    def charts_step() -> None:
        F.conv2d(charts_x, plain_w, plain_b, padding=1).backward(padded_grad)

    def plain_step() -> None:
        F.conv2d(plain_x, plain_w, plain_b, padding=1).backward(plain_grad)

    def plain_step_cl() -> None:
        F.conv2d(plain_x_cl, plain_w, plain_b, padding=1).backward(plain_grad_cl)

    def reset() -> None:
        for leaf in leaves:
            leaf.grad = None

    steps = (ico_step, padded_step, charts_step, plain_step, plain_step_cl)
    for _ in range(3):
        for step in steps:
            step()
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for step, record in zip(steps, times, strict=True):
            record.append(_time(step, device, reset, clock))
    return tuple(statistics.median(t) for t in times)


def compare_disco(level: int, channels: int, batch: int, repeats: int, device: torch.device, dtype: torch.dtype,
                  clock=time.perf_counter) -> tuple[float, float, tuple[int, int]]:
    """Median seconds of (IcoConv regular->regular, torch-harmonics DiscreteContinuousConvS2) and its grid."""
    from torch_harmonics import DiscreteContinuousConvS2

    nlat = round((IcoGrid(level).num_vertices / 2) ** 0.5)
    shape = (nlat, 2 * nlat)
    dense = channels * 6
    disco = DiscreteContinuousConvS2(dense, dense, shape, shape, kernel_shape=3).to(device, dtype)
    conv = IcoConv(channels, channels, level).to(device, dtype)
    x_disco = torch.randn(batch, dense, *shape, device=device, dtype=dtype, requires_grad=True)
    x_ico = torch.randn(batch, channels, 6, IcoGrid(level).num_vertices, device=device, dtype=dtype,
                        requires_grad=True)
    leaves = (x_disco, x_ico, *disco.parameters(), *conv.parameters())

    def reset() -> None:
        for leaf in leaves:
            leaf.grad = None

    def ico_step() -> None:
        conv(IcoSignal.from_vertices(x_ico)).to_vertices().square().mean().backward()

    def disco_step() -> None:
        disco(x_disco).square().mean().backward()

    for _ in range(2):
        ico_step(), disco_step()
    times: list[list[float]] = [[], []]
    for _ in range(repeats):
        for step, record in zip((ico_step, disco_step), times, strict=True):
            record.append(_time(step, device, reset, clock))
    return statistics.median(times[0]), statistics.median(times[1]), shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--level", type=int, nargs="*", default=[4, 5, 6])
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    add_runtime_args(parser, ["float32", "float64", "bfloat16", "float16"])
    parser.add_argument("--torch-harmonics", action="store_true",
                        help="also time torch-harmonics' DiscreteContinuousConvS2 (optional extra)")
    args = parser.parse_args()
    device, dtype, clock = runtime(args)
    print(f"device={device} dtype={args.dtype} threads={torch.get_num_threads()} clock={args.clock} batch={args.batch} "
          f"channels={args.channels}x6, forward+backward, median of {args.repeats}")
    print("plain conv2d: the same channels on the same pixel count, in the default layout (NCHW) and")
    print("channels-last (NHWC, the layout IcoConv works in); the ratio against each is printed;")
    print("padded: IcoConv's own conv2d alone over the padded charts; charts: the same over the unpadded")
    print("charts with implicit zero padding (padded/charts: what the explicit border costs the conv2d)")
    print(f"{'layer':<20}{'level':>6}{'IcoConv ms':>12}{'padded ms':>11}{'charts ms':>11}{'NCHW ms':>10}"
          f"{'NHWC ms':>10}{'vs NCHW':>9}{'vs NHWC':>9}{'ico/padded':>12}{'padded/charts':>15}")
    cases = [(lvl, "regular") for lvl in args.level] + [(5 if 5 in args.level else args.level[0], "scalar")]
    for level, in_rep in cases:
        ico, padded, unpadded, plain, plain_cl = compare(level, args.channels, in_rep, args.batch, args.repeats,
                                                         device, dtype, clock)
        name = "regular->regular" if in_rep == "regular" else "scalar->regular"
        print(f"{name:<20}{level:>6}{ico * 1e3:>12.1f}{padded * 1e3:>11.1f}{unpadded * 1e3:>11.1f}{plain * 1e3:>10.1f}"
              f"{plain_cl * 1e3:>10.1f}{ico / plain:>9.3f}{ico / plain_cl:>9.3f}{ico / padded:>12.3f}"
              f"{padded / unpadded:>15.3f}")
    if args.torch_harmonics:
        print("IcoConv (vertex tensors in and out) vs torch-harmonics DiscreteContinuousConvS2, same dense channels")
        for level in args.level:
            ico, disco, shape = compare_disco(level, args.channels, args.batch, args.repeats, device, dtype, clock)
            print(f"level {level}: IcoConv {ico * 1e3:.1f} ms, DISCO {shape[0]}x{shape[1]} {disco * 1e3:.1f} ms, "
                  f"ratio {ico / disco:.3f}")

if __name__ == "__main__":
    main()
