"""The layers' torch.library operators (fused norm, batch statistics, convolution, hex max pool,
upsampling stencil): schemas, fake kernels (the shapes and strides torch.compile plans with) and
autograd registrations agree with what they really do (torch.library.opcheck), and a U-Net traced
through AOTAutograd, where only the fake kernels and the registered backward are seen, gives eager's
outputs and gradients in float64."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from icolightning.grid import IcoGrid
from icolightning.models import IcoUNet
from icolightning.nn import GaugePad, IcoConv, IcoSignal, fused, pooling
from icolightning.nn.batch_stats import local_statistics
from icolightning.nn.conv import ico_conv, ico_conv_backward
from icolightning.nn.layout import memory, planes
from icolightning.nn.norm import track_statistics

F64 = torch.float64


def _signal(level: int, channels: int = 3, orientations: int = 6, seed: int = 0) -> IcoSignal:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, channels, orientations, IcoGrid(level).num_vertices, generator=gen, dtype=F64)
    return IcoSignal.from_vertices(x)


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().requires_grad_()


@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("affine", [True, False])
def test_fused_norm_operators_pass_opcheck(level, affine):
    signal, pad = _signal(level), GaugePad(level)
    names, tables = pad.op_args()
    charts, poles = memory(signal.charts).detach().requires_grad_(), _leaf(signal.poles)
    weight, bias = (torch.randn(3, dtype=F64, requires_grad=True) for _ in range(2)) if affine else (None, None)
    mean, invstd = torch.randn(3, dtype=F64), torch.rand(3, dtype=F64) + 0.5
    args = (charts, poles, weight, bias, mean, invstd, True, level, names, tables)
    torch.library.opcheck(fused.norm_relu_pad_op, args)
    outs = fused.norm_relu_pad_op(*args)
    grads = [torch.randn_like(t) for t in outs]
    plain = [None if t is None else t.detach() for t in (charts, poles, weight, bias)]
    count = (charts.numel() + poles.numel()) // 3
    rest = (*plain, mean, invstd, outs[0].detach(), outs[4].detach(), count, True, level, names, tables)
    torch.library.opcheck(fused.norm_relu_pad_backward, (*grads, *rest))
    torch.library.opcheck(fused.norm_relu_pad_backward, (None, None, None, None, grads[4], *rest))
    torch.library.opcheck(local_statistics, (plain[0], plain[1]))
    running = (torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64), torch.tensor(0))
    torch.library.opcheck(track_statistics, (plain[0], plain[1], *running, 0.1, 1e-5))


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_pooling_operators_pass_opcheck(layout):
    padded = torch.randn(10, 18, 6, 10, dtype=F64).contiguous(memory_format=layout).requires_grad_()
    torch.library.opcheck(pooling.hex_max_pool, (padded, 4, 8))
    grad = torch.randn(10, 18, 2, 4, dtype=F64).contiguous(memory_format=layout)
    torch.library.opcheck(pooling.hex_max_pool_backward, (grad, padded.detach(), 4, 8))
    pool = pooling.HexPool(2)
    padded = pool.pad(_signal(2))
    inputs = (_leaf(planes(padded.buf)).contiguous(memory_format=layout), _leaf(padded.corner_own),
              _leaf(padded.corner_neighbours), pool.out_c, pool.out_h, pool.out_w, 4, 8)
    torch.library.opcheck(pooling.hex_max_pool_corners, inputs)
    pooled, poles = pooling.hex_max_pool_corners(*inputs)
    plain = [t.detach() for t in inputs[:3]]
    torch.library.opcheck(pooling.hex_max_pool_corners_backward, (torch.randn_like(pooled), torch.randn_like(poles),
                                                                  *plain, *inputs[3:]))
    buf = torch.randn(2, 5, 6, 10, 3, 6, dtype=F64, requires_grad=True)
    poles = torch.randn(2, 3, 6, 2, dtype=F64, requires_grad=True)
    torch.library.opcheck(pooling.interpolate, (buf, poles))
    torch.library.opcheck(pooling.interpolate_backward, (torch.randn(2, 5, 8, 16, 3, 6, dtype=F64),
                                                         torch.randn(2, 3, 6, 2, dtype=F64)))


@pytest.mark.parametrize(("in_rep", "out_rep", "stride", "parts"),
                         [("regular", "regular", 1, 2), ("scalar", "regular", 2, 1), ("regular", "scalar", 1, 1),
                          ("scalar", "scalar", 1, 1)])
def test_convolution_operators_pass_opcheck(in_rep, out_rep, stride, parts):
    conv = IcoConv(3 * parts, 2, 2, in_rep, out_rep, stride=stride).double()
    with torch.no_grad():
        conv.bias.normal_()
    padded = [conv.pad(_signal(2, orientations=conv.in_orientations, seed=k)) for k in range(parts)]
    inputs = [[_leaf(planes(p.buf)).contiguous(memory_format=torch.channels_last) for p in padded],
              [_leaf(p.patches) for p in padded], [_leaf(p.corner_own) for p in padded],
              [_leaf(p.corner_neighbours) for p in padded]]
    for overwrite in (False, True):  # both ways the backward takes the corners out
        constants = (conv.kernel_taps, conv.corner_expansion, conv.out_corners, conv.out_orientations,
                     conv._rotations, overwrite, conv.stride)
        torch.library.opcheck(ico_conv, (*inputs, conv.weight, conv.bias, *constants))
        y, poles = ico_conv(*inputs, conv.weight, conv.bias, *constants)
        plain = [[t.detach() for t in group] for group in inputs]
        for needed in (True, False):
            torch.library.opcheck(ico_conv_backward, (torch.randn_like(y), torch.randn_like(poles), *plain,
                                                      conv.weight.detach(), needed, [needed] * parts, *constants))


def test_unet_traced_through_aot_autograd_matches_eager_in_float64():
    """Every operator of a U-Net (fused norms with their running statistics, convolutions with split
    decoder inputs, hex max pooling, upsampling) under torch.compile's tracing; the eager backend keeps
    float64 exact up to the order of sums. The running statistics, updated in place by an operator,
    must come out of the compiled step updated too."""
    torch.manual_seed(0)
    model = IcoUNet(2, 3, 2, widths=(4, 6)).double()
    twin = copy.deepcopy(model)
    x = torch.randn(2, 2, IcoGrid(2).num_vertices, dtype=F64)
    target = torch.randint(3, (2, IcoGrid(2).num_vertices))
    results = []
    torch._dynamo.reset()
    for net, module in ((model, model), (torch.compile(twin, backend="aot_eager", fullgraph=True), twin)):
        logits = net(x)
        F.cross_entropy(logits, target).backward()
        results.append([logits.detach(), *(p.grad for p in module.parameters()), *module.buffers()])
    assert any(name.endswith("running_var") for name, _ in model.named_buffers())
    for eager, traced in zip(*results, strict=True):
        torch.testing.assert_close(traced, eager, rtol=1e-12, atol=1e-12)


def _native_hex_max_pool(pool: pooling.HexPool, x: IcoSignal) -> IcoSignal:
    """HexPool(max) from native ops, for autograd to differentiate: the window maxima, the corners
    overwritten by the maximum over each corner's and its neighbours' orientation means."""
    padded = pool.pad(x)
    b, c, r, _, h, w = x.charts.shape
    ahead, behind = pooling._windows(planes(padded.buf), h, w)
    pooled = torch.maximum(F.max_pool2d(ahead, 2), F.max_pool2d(behind, 2))
    corners = torch.cat([padded.corner_own[..., None], padded.corner_neighbours.mean(2)], dim=-1).amax(-1)
    values = corners[:, :, :10].transpose(1, 2)[..., None].expand(b, 10, c, r)
    pooled = pooled.permute(0, 2, 3, 1).reshape(b, 5, h // 2, w // 2, c, r)
    pooled = pooled.index_put((torch.arange(b)[:, None], pool.out_c, pool.out_h, pool.out_w), values)
    return IcoSignal(pooled.permute(0, 4, 5, 1, 2, 3), corners[:, :, None, 10:].expand(b, c, r, 2))


@pytest.mark.parametrize("ties", [False, True])
def test_hex_max_pool_operator_matches_the_native_composition(ties):
    """Values and gradients (charts and poles) in float64, also with ties everywhere (rounded inputs)."""
    pool = pooling.HexPool(2)
    x = _signal(2).to_vertices()
    x = (x * 2).round() if ties else x
    outs = []
    for layer in (pool, lambda s: _native_hex_max_pool(pool, s)):
        leaf = x.clone().requires_grad_()
        y = layer(IcoSignal.from_vertices(leaf))
        weights = [torch.linspace(-1, 2, t.numel(), dtype=F64).view_as(t) for t in (y.charts, y.poles)]
        loss = (y.charts * weights[0]).sum() + (y.poles * weights[1]).sum()
        outs.append((y.charts.detach(), y.poles.detach(), torch.autograd.grad(loss, leaf)[0]))
    for ours, native in zip(*outs, strict=True):
        torch.testing.assert_close(ours, native, rtol=1e-12, atol=1e-12)
