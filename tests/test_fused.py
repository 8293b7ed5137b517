"""Batch norm + ReLU written straight into the next padded buffer (`icolightning.nn.fused`): the same
values and gradients as the unfused layers, exactly equivariant, and its backward passes gradcheck."""

import math

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from icolightning.grid import IcoGrid
from icolightning.nn import GaugePad, IcoConv, IcoSignal, fused
from icolightning.nn.batch_stats import local_statistics
from icolightning.nn.equivariance import max_equivariance_error, signal_fn
from icolightning.nn.layout import memory
from icolightning.nn.norm import IcoBatchNorm, track_statistics


def _pair(channels: int, level: int) -> tuple[IcoBatchNorm, IcoBatchNorm]:
    """A fused norm (ReLU inside, writes the padded buffer) and the plain norm with the same parameters."""
    torch.manual_seed(3)
    fused = IcoBatchNorm(channels, relu=True, pad_level=level).double()
    with torch.no_grad():
        fused.weight.normal_()
        fused.bias.normal_()
    plain = IcoBatchNorm(channels).double()
    plain.load_state_dict(fused.state_dict())
    return fused, plain


def _x(level: int, channels: int = 3, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(level)
    return torch.randn(batch, channels, 6, IcoGrid(level).num_vertices, generator=gen, dtype=torch.float64) + 0.5


def _corner_means(vertices: torch.Tensor, level: int) -> torch.Tensor:
    """The orientation mean at the chart corners (the fused norm's charts hold that there: no frame)."""
    grid = IcoGrid(level)
    at_corner = torch.zeros(grid.num_vertices, dtype=torch.bool)
    at_corner[grid.corners[grid.corners < grid.num_chart_vertices]] = True
    return torch.where(at_corner, vertices.mean(2, keepdim=True), vertices)


@pytest.mark.parametrize("level", [0, 2])
def test_fused_norm_gives_the_padding_and_gradients_of_the_unfused_layers(level):
    fused, plain = _pair(3, level)
    conv = IcoConv(3, 2, level).double()
    x = _x(level)
    outs, grads = [], []
    for path in ("fused", "plain"):
        xg = x.clone().requires_grad_()
        if path == "fused":
            signal = fused(IcoSignal.from_vertices(xg))
            padded = signal.padded
        else:
            signal = plain(IcoSignal.from_vertices(xg)).map(torch.relu)
            padded = GaugePad(level)(signal)
        assert (signal.padded is not None) == (path == "fused")
        y, values = conv(signal).to_vertices(), _corner_means(signal.to_vertices(), level)
        loss = (y * torch.linspace(-1, 2, y.numel(), dtype=y.dtype).view_as(y)).sum() + values.pow(3).sum()
        norm = fused if path == "fused" else plain
        grads.append(torch.autograd.grad(loss, (xg, norm.weight, norm.bias)))
        outs.append((values, *padded))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fused.running_var, plain.running_var)


def test_fused_norm_then_conv_is_equivariant_on_all_rotations():
    fused, _ = _pair(3, 2)
    torch.manual_seed(0)
    layers = nn.Sequential(fused, IcoConv(3, 2, 2).double())
    assert max_equivariance_error(signal_fn(layers), 2, 2, _x(2)) < 1e-10


def test_gradcheck_fused_norm_through_the_padding():
    fused, _ = _pair(2, 1)
    conv = IcoConv(2, 2, 1).double()
    x = _x(1, channels=2, batch=1).requires_grad_()

    def fn(x, weight, bias):
        signal = fused(IcoSignal.from_vertices(x))
        return conv(signal).to_vertices(), signal.to_vertices()

    assert torch.autograd.gradcheck(fn, (x, fused.weight, fused.bias), fast_mode=True)


def test_eval_mode_and_other_levels_pad_as_before():
    """Eval mode (running statistics) does not fuse; a GaugePad of another level ignores the buffer."""
    fused, _ = _pair(3, 2)
    fused.eval()
    assert fused(IcoSignal.from_vertices(_x(2))).padded is None
    fused.train()
    signal = fused(IcoSignal.from_vertices(_x(2)))
    with pytest.raises(ValueError, match="level"):
        GaugePad(1)(signal)


_VIEWS = {"view", "_unsafe_view", "permute", "slice", "expand", "select", "unsqueeze", "squeeze", "alias",
          "as_strided", "index", "index_put_", "detach"}


_OPENED = {op._qualname: op for op in (fused.norm_relu_pad_op, fused.norm_relu_pad_backward, local_statistics,
                                        track_statistics)}
"""The norms' custom operators, whose insides are recorded op by op."""


def _aliases(out, args, name: str) -> bool:
    """Whether an out-of-place op returned (a view of) its first input: inside an opened operator composite
    ops (reshape, flatten, a same-dtype `to`) arrive undecomposed, and that is how their no-copy cases look."""
    return (not name.endswith("_") and isinstance(out, torch.Tensor) and bool(args)
            and isinstance(args[0], torch.Tensor)
            and out.untyped_storage().data_ptr() == args[0].untyped_storage().data_ptr())


class _FullSizeOps(TorchDispatchMode):
    """Records every op that computes on a tensor with `numel` elements (a chart tensor's size): its name
    and the shapes of its floating-point operands; views and corner indexing are not computation. The
    fused norm's operators are run through their Python bodies under the mode, so their ops are recorded."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.calls = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        opened = _OPENED.get(func._schema.name)
        if opened is not None:
            with self:
                return opened._init_fn(*args, **(kwargs or {}))
        out = func(*args, **(kwargs or {}))
        name = func._schema.name.split("::")[-1]
        shapes = [tuple(t.shape) for t in tree_leaves((args, kwargs, out))
                  if isinstance(t, torch.Tensor) and t.is_floating_point()]
        if name not in _VIEWS and not _aliases(out, args, name) and any(math.prod(s) == self.numel for s in shapes):
            self.calls.append((name, shapes))
        return out


@pytest.mark.parametrize("fused", [True, False])
def test_batch_norm_broadcasts_per_column_and_sums_gradients_in_one_pass(fused):
    """Per-channel arithmetic on the charts broadcasts [C·R] vectors along their last, contiguous dimension
    (a [C, 1] view broadcast over [..., C, R] runs an inner loop of 6, about 3x slower), and the backward
    makes three full-size passes: the two gradient sums together, then the input gradient's two terms."""
    level, c, r = 2, 3, 6
    norm = IcoBatchNorm(c, relu=True, pad_level=level).double() if fused else IcoBatchNorm(c).double()
    x = _x(level, c).requires_grad_()
    signal = IcoSignal.from_vertices(x)
    numel = memory(signal.charts).numel()
    forward = _FullSizeOps(numel)
    with forward:
        out = norm(signal)
    grad = torch.randn_like(out.charts)
    backward = _FullSizeOps(numel)
    with backward:
        torch.autograd.grad(out.charts, x, grad)
    moves = ("slice_backward", "gauge_pad_backward")  # the input slicing's and the padding's gradients
    for name, shapes in forward.calls + backward.calls:
        for shape in shapes:
            assert name in moves or math.prod(shape) in (numel, 1) or shape == (c * r,), (name, shapes)
    computed = [name for name, _ in backward.calls if name not in moves]
    assert computed == (["threshold_backward"] if fused else []) + ["native_batch_norm_backward", "addcmul",
                                                                     "addcmul_"], computed


def test_fused_norm_tracks_the_running_statistics_of_torch_batch_norm():
    """The fused norm's statistics operator updates the running mean, the unbiased running variance and
    the step count in place exactly as BatchNorm1d over the same values (orientations and vertices)."""
    fused, _ = _pair(3, 2)
    theirs = nn.BatchNorm1d(3).double()
    for step in range(2):
        x = _x(2) * (step + 1)
        fused(IcoSignal.from_vertices(x))
        theirs(x.flatten(2))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(fused, name), getattr(theirs, name), rtol=1e-12, atol=1e-12, msg=name)
