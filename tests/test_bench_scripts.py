"""The benchmark scripts. bench_model.py --icocnn without icoCNN (AGPL, never installed here): a fake
package with icoCNN's layer names and signatures, written into a temporary checkout, goes through the same
loading, building, timing and printing as the real one; the fake checks the shapes it is given and logs
what it was built with."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_model.py"

SLEEP_S = 0.05
FAKE_ICOCNN = f'''
"""Stand-in for icoCNN: the same class names and signatures, trivial torch layers."""
import os
import time

import torch


def _log(*fields):
    with open(os.environ["FAKE_ICOCNN_LOG"], "a") as log:
        log.write(" ".join(map(str, fields)) + "\\n")


def _check(x, r, channels, orientations):
    assert x.dim() == 6 and tuple(x.shape[1:]) == (channels, orientations, 5, 2**r, 2**(r + 1)), (x.shape, r)


class ConvIco(torch.nn.Module):
    def __init__(self, r, Cin, Cout, Rin, Rout=6, bias=True, smooth_vertices=False):
        super().__init__()
        _log("ConvIco", r, Cin, Cout, Rin, Rout)
        self.r, self.Cin, self.Cout, self.Rin, self.Rout = r, Cin, Cout, Rin, Rout
        self.weight = torch.nn.Parameter(torch.randn(Cout * Rout, Cin * Rin))

    def forward(self, x):
        _check(x, self.r, self.Cin, self.Rin)
        time.sleep({SLEEP_S})  # a known lower bound on the step time the table must show
        y = torch.einsum("oi,bihw->bohw", self.weight, x.flatten(1, 2).flatten(2, 3))
        return y.unflatten(1, (self.Cout, self.Rout)).unflatten(3, (5, 2**self.r))


class PoolIco(torch.nn.Module):
    def __init__(self, r, R, function=torch.mean, smooth_vertices=False):
        super().__init__()
        _log("PoolIco", r, R)
        self.r, self.R, self.function = r, R, function

    def forward(self, x):
        _check(x, self.r, x.shape[1], self.R)
        return self.function(torch.stack([x[..., ::2, ::2], x[..., 1::2, 1::2]], -1), -1)


class UnPoolIco(torch.nn.Module):
    def __init__(self, r, R):
        super().__init__()
        _log("UnPoolIco", r, R)
        self.r, self.R = r, R

    def forward(self, x):
        _check(x, self.r, x.shape[1], self.R)
        return x.repeat_interleave(2, -2).repeat_interleave(2, -1)
'''

# IcoUNet's structure at level 2, widths 16/32/64, 16 scalar input channels, 3 classes (r, Cin, Cout, Rin, Rout).
EXPECTED_LAYERS = sorted([
    "ConvIco 2 16 16 1 6", "ConvIco 2 16 16 6 6",  # encoder stage 0: scalar input lifted to regular
    "PoolIco 2 6", "ConvIco 1 16 32 6 6", "ConvIco 1 32 32 6 6",
    "PoolIco 1 6", "ConvIco 0 32 64 6 6", "ConvIco 0 64 64 6 6",
    "UnPoolIco 0 6", "ConvIco 1 96 32 6 6", "ConvIco 1 32 32 6 6",  # decoder: skip concatenated on channels
    "UnPoolIco 1 6", "ConvIco 2 48 16 6 6", "ConvIco 2 16 16 6 6",
    "ConvIco 2 16 3 6 6",  # head, then the mean over orientations
])


def _bench(checkout: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    args = ["--model", "unet", "--level", "2", "--batch", "2", "--repeats", "1", "--threads", "1"]
    return subprocess.run([sys.executable, str(SCRIPT), *args, "--icocnn", str(checkout)],
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env}, capture_output=True, text=True,
                          timeout=300)


def _numbers(stdout: str, model: str) -> list[float]:
    """The figures of the table row of `model`."""
    row = next(line for line in stdout.splitlines() if line.startswith(model + " "))
    return [float(v) for v in row.removeprefix(model).split()]


def test_icocnn_unet_is_built_timed_and_printed_from_a_checkout(tmp_path):
    (tmp_path / "icoCNN").mkdir()
    (tmp_path / "icoCNN" / "__init__.py").write_text(FAKE_ICOCNN)
    log = tmp_path / "built.txt"
    done = _bench(tmp_path, {"FAKE_ICOCNN_LOG": str(log)})
    assert done.returncode == 0, done.stderr
    assert sorted(log.read_text().splitlines()) == EXPECTED_LAYERS
    unet, icocnn = (_numbers(done.stdout, name) for name in ("unet", "icoCNN U-Net"))
    level, ms, nchw, nhwc, ratio, mb, planar_mb, memory, _sys = icocnn
    convolutions = sum(layer.startswith("ConvIco") for layer in EXPECTED_LAYERS)
    assert level == 2 and ms >= 1e3 * SLEEP_S * convolutions and mb > 0  # the fake's own step was timed
    assert (nchw, nhwc, planar_mb) == (unet[2], unet[3], unet[6])  # the same planar run
    assert abs(ratio - ms / min(nchw, nhwc)) < 0.01 + 1e-3 * ratio
    assert abs(memory - mb / planar_mb) < 0.01 + 1e-3 * memory


def test_icocnn_path_without_icocnn_is_a_one_line_error(tmp_path):
    done = _bench(tmp_path / "nowhere", {})
    assert done.returncode != 0
    message = done.stderr.strip().splitlines()
    assert len(message) == 1 and "--icocnn" in message[0] and "no icoCNN checkout" in message[0], done.stderr
    assert "icoCNN U-Net" not in done.stdout


def test_profile_splits_a_step_into_convolutions_and_the_rest():
    """--profile: a network of convolutions is mostly convolution time, one without any has none; the gap
    table lists the ops where the first network spends more than the second, largest gap first."""
    import torch

    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_profile
    finally:
        sys.path.remove(str(SCRIPT.parent))
    x = torch.randn(4, 32, 32, 32)
    convs = torch.nn.Sequential(*(torch.nn.Conv2d(32, 32, 3, padding=1) for _ in range(3)))
    conv_step = bench_profile.op_times(lambda: convs(x).sum().backward())[0]
    conv_ms, other_ms = bench_profile.split_by_convolution(conv_step)
    assert conv_ms > 2 * other_ms > 0
    pointwise = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Tanh())
    leaf = x.clone().requires_grad_()
    pointwise_step = bench_profile.op_times(lambda: pointwise(leaf).sum().backward())[0]
    conv_ms, other_ms = bench_profile.split_by_convolution(pointwise_step)
    assert conv_ms == 0 and other_ms > 0
    rows = bench_profile.gap_rows({"a": 5.0, "b": 9.0, "c": 2.0, "e": 1.0},
                                  {"a": 1.0, "b": 8.0, "d": 2.0}, top=4)
    assert rows == [("a", 5.0, 1.0), ("c", 2.0, 0.0), ("b", 9.0, 8.0), ("e", 1.0, 0.0)]  # b and e tie: by name


def test_bench_conv_times_icoconvs_own_conv2d_on_the_same_padded_shapes(monkeypatch):
    """bench_conv's "padded" step must run the very conv2d IcoConv runs (same input and kernel shapes,
    channels-last, no implicit padding), or "IcoConv over padded" is not the padding's cost; "charts"
    the same conv2d on the unpadded charts, or "padded over charts" is not the explicit border's cost."""
    import torch
    import torch.nn.functional as F

    from icolightning.nn import conv as ico_conv_module

    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_conv
    finally:
        sys.path.remove(str(SCRIPT.parent))
    calls = []
    conv2d = F.conv2d

    def recording(x, weight, bias=None, stride=1, padding=0, *args):
        calls.append((tuple(x.shape), x.is_contiguous(memory_format=torch.channels_last), tuple(weight.shape),
                      padding))
        return conv2d(x, weight, bias, stride, padding, *args)

    monkeypatch.setattr(F, "conv2d", recording)
    own_conv = ico_conv_module._conv  # IcoConv's operator issues its convolutions through this

    def recording_own(x, weight, bias, stride):
        calls.append((tuple(x.shape), x.is_contiguous(memory_format=torch.channels_last), tuple(weight.shape), 0))
        return own_conv(x, weight, bias, stride)

    monkeypatch.setattr(ico_conv_module, "_conv", recording_own)
    times = bench_conv.compare(2, 3, "regular", 2, 1, torch.device("cpu"), torch.float32)
    assert len(times) == 5 and all(t > 0 for t in times)
    ico_call = (((10, 18, 6, 10), True, (18, 18, 3, 3), 0))
    assert calls.count(ico_call) == 1 + 2 * 4, calls  # IcoConv once for the gradient shapes, then IcoConv and
    # the padded step, each warmed up 3x and timed once
    charts_call = (((10, 18, 4, 8), True, (18, 18, 3, 3), 1))
    assert calls.count(charts_call) == 4, calls  # the unpadded charts, implicit padding
    assert {c[3] for c in calls if c != ico_call} == {1}, calls  # the plain steps pad implicitly


def test_memory_only_prints_the_saved_bytes_of_both_planar_layouts_and_the_ratio():
    args = ["--memory-only", "--model", "unet", "classifier", "--level", "2", "--batch", "2", "--threads", "1"]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "memory of one step" in done.stdout and "ms" not in done.stdout  # nothing timed
    for model in ("unet", "classifier"):
        level, ico_mb, nchw_mb, nhwc_mb, ratio = _numbers(done.stdout, model)
        assert level == 2 and min(ico_mb, nchw_mb, nhwc_mb) > 0
        planar_mb = min(nchw_mb, nhwc_mb)
        # the ratio comes from exact bytes, the MB columns are rounded to 0.1 (and the ratio to 0.01)
        rounding = 0.005 + ratio * (0.05 / ico_mb + 0.05 / planar_mb)
        assert abs(ratio - ico_mb / planar_mb) <= rounding


def test_convs_pairs_every_convolution_call_and_counts_the_taps_zero_padding_skips(capsys):
    """--convs: the icosahedral U-Net and its planar twins make the same convolution calls in the same
    order (same weights, same gradients computed); the icosahedral ones run with padding 0 over the
    channels-last padded charts, the planar ones with padding 1, and each pair's multiply-adds differ by
    exactly the taps a zero-padded conv skips: 9HW / ((3H - 2)(3W - 2)) for an H x W output."""
    import time

    import torch

    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_convcalls
        import bench_model
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert bench_convcalls.taps(18, 16, 3, 1, 0, 1) == 48 and bench_convcalls.taps(16, 16, 3, 1, 1, 1) == 46
    ico, planar, x, images, ico_target, planar_target = bench_model._case("unet", 2, 1, torch.device("cpu"),
                                                                          torch.float32)
    planar_cl = copy.deepcopy(planar).to(memory_format=torch.channels_last)
    steps = [bench_model.training_step(ico, x, ico_target), bench_model.training_step(planar, images, planar_target),
             bench_model.training_step(planar_cl, images.contiguous(memory_format=torch.channels_last),
                                       planar_target)]
    rows = bench_convcalls.compare(steps, 1, time.perf_counter)
    assert len(rows) == 2 * 11 and [calls[0].kind for calls, _ in rows].count("backward") == 11
    for (ico_call, nchw_call, nhwc_call), seconds in rows:
        assert len(seconds) == 3 and all(s > 0 for s in seconds)
        assert ico_call.input_format == nhwc_call.input_format == "NHWC" and nchw_call.input_format == "NCHW"
        assert ico_call.padding == (0, 0) and nhwc_call.padding == (1, 1)
        h, w = nhwc_call.input[-2:]
        assert ico_call.input[-2:] == (h + 2, w + 2)
        assert ico_call.macs * (3 * h - 2) * (3 * w - 2) == nhwc_call.macs * 9 * h * w == nchw_call.macs * 9 * h * w
    assert rows[-1][0][0].grads == "w"  # the first layer's input needs no gradient, in both networks
    bench_convcalls.print_convs("unet", steps, ["ico", "planar NCHW", "planar NHWC"], 1, time.perf_counter)
    printed = capsys.readouterr().out
    assert printed.count("\n") == 2 + 22 + 3 and "total backward" in printed
    with pytest.raises(ValueError, match="different convolution calls"):
        bench_convcalls.compare([steps[0], lambda: None], 1, time.perf_counter)


def test_sources_charges_the_step_to_the_layers_that_issued_it():
    """bench_sources.py: every icosahedral layer kind gets its own ops' time (so attribution by stack
    frame and autograd node works), the planar twin's norm and pooling ops land in their rows, and
    what no row claims stays small."""
    script = SCRIPT.parent / "bench_sources.py"
    done = subprocess.run([sys.executable, str(script), "--level", "2", "--batch", "2"],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = {}
    for line in done.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3 and cells[1].replace(".", "").isdigit():
            rows[cells[0]] = (float(cells[1]), float(cells[2]))
    for source in ("batch norm + ReLU, forward", "batch norm + ReLU, backward", "gauge padding, forward",
                   "gauge padding, backward", "kernel expansion + corner rule", "hex max pool + upsampling"):
        assert rows[source][0] > 0, (source, done.stdout)
    for source in ("batch norm + ReLU, forward", "batch norm + ReLU, backward", "hex max pool + upsampling"):
        assert rows[source][1] > 0, (source, done.stdout)
    attributed = sum(ico for name, (ico, _) in rows.items() if name != "the rest")
    assert rows["the rest"][0] < 0.5 * attributed, done.stdout
