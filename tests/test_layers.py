"""Every layer is exactly equivariant under all 60 rotations, on all vertices (DESIGN §4)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from icolightning.grid import HEX_OFFSETS, IcoGrid
from icolightning.nn import IcoConv, IcoSignal
from icolightning.nn.equivariance import corner_invariant, max_equivariance_error, rotate, signal_fn
from icolightning.nn.norm import IcoBatchNorm, IcoDropout, IcoLayerNorm, IcoPointwise
from icolightning.nn.pooling import HexPool, IcoUpsample, OrientationPool, interpolate

TOL = 1e-10
REPS = [("scalar", "regular"), ("regular", "regular"), ("regular", "scalar"), ("scalar", "scalar")]


def _input(level: int, channels: int, orientations: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, channels, orientations, IcoGrid(level).num_vertices, generator=gen, dtype=torch.float64)


def _conv(level, in_rep, out_rep, stride=1):
    torch.manual_seed(1)
    conv = IcoConv(3, 4, level, in_rep, out_rep, stride=stride).double()
    with torch.no_grad():
        conv.bias.normal_()
    return conv


@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize(("in_rep", "out_rep"), REPS)
def test_conv_is_equivariant(level, in_rep, out_rep):
    conv = _conv(level, in_rep, out_rep)
    x = _input(level, 3, conv.in_orientations)
    assert max_equivariance_error(signal_fn(conv), level, level, x) < TOL


@pytest.mark.parametrize("level", [1, 3])
@pytest.mark.parametrize(("in_rep", "out_rep"), REPS)
def test_strided_conv_is_equivariant(level, in_rep, out_rep):
    conv = _conv(level, in_rep, out_rep, stride=2)
    x = _input(level, 3, conv.in_orientations)
    assert max_equivariance_error(signal_fn(conv), level, level - 1, x) < TOL


@pytest.mark.parametrize("level", [4, 5])
def test_every_layer_is_equivariant_at_the_levels_the_models_use(level):
    """All 60 rotations at levels 4 and 5 (ClimateNet's level 5, MNIST's level 4), where the
    charts have long seams the small-level tests do not have; few channels and batch 1 keep it cheap."""
    torch.manual_seed(level)
    norm_layers = [IcoBatchNorm(2), IcoLayerNorm(2), IcoPointwise(nn.ReLU()), OrientationPool("max")]
    for layer in norm_layers:
        for p in layer.parameters():
            with torch.no_grad():
                p.normal_()
    cases = [(IcoConv(2, 2, level, in_rep, out_rep, stride=stride), level, level - stride + 1)
             for in_rep, out_rep, stride in [("scalar", "regular", 1), ("regular", "regular", 1),
                                             ("regular", "scalar", 1), ("regular", "regular", 2)]]
    cases += [(HexPool(level, "max"), level, level - 1), (IcoUpsample(level - 1), level - 1, level)]
    cases += [(layer, level, level) for layer in norm_layers]
    for layer, level_in, level_out in cases:
        layer = layer.double()
        orientations = getattr(layer, "in_orientations", 6)
        x = _input(level_in, 2, orientations, seed=level)[:1]
        error = max_equivariance_error(signal_fn(layer), level_in, level_out, x)
        assert error < TOL, f"{layer!r} at level {level_in}: {error:.1e}"


def test_a_non_equivariant_control_is_caught():
    """The checker must fail a layer that ignores the gauge: padding without orientation shifts."""
    conv = _conv(2, "regular", "regular")
    conv.pad.strips_shift.zero_()
    x = _input(2, 3, 6)
    assert max_equivariance_error(signal_fn(conv), 2, 2, x) > 1e-3


def test_a_plain_conv_on_the_charts_is_caught():
    torch.manual_seed(0)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    grid = IcoGrid(2)

    def planar(x):
        charts, poles = grid.to_charts(x[:, :, 0])
        out = F.conv2d(charts.transpose(1, 2).flatten(0, 1), weight, padding=1)
        out = out.view(x.shape[0], 5, 4, *charts.shape[-2:]).transpose(1, 2)
        return grid.to_vertices(out, poles.new_zeros(x.shape[0], 4, 2))[:, :, None]

    assert max_equivariance_error(planar, 2, 2, _input(2, 3, 1)) > 1e-3


@pytest.mark.parametrize(("in_rep", "out_rep"), [("scalar", "regular"), ("regular", "regular")])
def test_regular_outputs_are_orientation_invariant_at_the_corners(in_rep, out_rep):
    grid = IcoGrid(2)
    conv = _conv(2, in_rep, out_rep)
    y = signal_fn(conv)(_input(2, 3, conv.in_orientations))
    torch.testing.assert_close(y, corner_invariant(grid, y))


def test_interior_is_a_p6_group_convolution():
    """Away from chart borders the layer equals the explicit p6 formula on the hexagonal lattice:
    y(i) = sum_r w_c(r) x(v, r+i) + sum_k sum_r w_k(r) x(v + offset(k+i), r+i)."""
    level = 3
    grid = IcoGrid(level)
    conv = _conv(level, "regular", "regular")
    x = _input(level, 3, 6)
    y = signal_fn(conv)(x)
    ids = grid.chart_pixel_vertex()
    w = conv.weight.detach()
    for c, h, ww in [(0, 3, 5), (2, 6, 9), (4, 1, 13)]:
        v = ids[c, h, ww]
        for i in range(6):
            expected = conv.bias.detach().clone()
            for r in range(6):
                expected += w[:, :, r, 6] @ x[0, :, (r + i) % 6, v]
                for k in range(6):
                    dh, dw = HEX_OFFSETS[(k + i) % 6]
                    expected += w[:, :, r, k] @ x[0, :, (r + i) % 6, ids[c, h + dh, ww + dw]]
            torch.testing.assert_close(y[0, :, i, v], expected)


@pytest.mark.parametrize("in_rep", ["scalar", "regular"])
def test_corners_apply_the_taps_to_the_neighbour_mean_seen_from_the_corner(in_rep):
    """At the 12 corners every output orientation is
    y = b + sum_r w_c(r) own + sum_k sum_r w_k(r) nb(r - k - 3), where own is the corner's orientation
    mean and nb the mean of its 5 neighbours with orientations aligned to the corner (`Padded`)."""
    conv = _conv(2, in_rep, "regular")
    signal = IcoSignal.from_vertices(_input(2, 3, conv.in_orientations))
    y = conv(signal)
    padded = conv.pad(signal)
    own, nb = padded.corner_own[0], padded.corner_neighbours[0].mean(-1)  # [C, 12], [C, R, 12]
    w, r_in = conv.weight.detach(), conv.in_orientations
    expected = conv.bias.detach()[:, None] + w[:, :, :, 6].sum(2) @ own
    for k in range(6):
        for r in range(r_in):
            expected = expected + w[:, :, r, k] @ nb[:, (r - k - 3) % r_in]
    chart, h, ww = conv.out_corners.unbind(1)
    got = torch.cat([y.charts[0][:, :, chart, h, ww], y.poles[0]], dim=-1)  # [C_out, 6, 12]
    torch.testing.assert_close(got, expected[:, None].expand_as(got))


@pytest.mark.parametrize("mode", ["max", "mean"])
@pytest.mark.parametrize("orientations", [1, 6])
def test_hex_pool_is_equivariant(mode, orientations):
    pool = HexPool(2, mode)
    assert max_equivariance_error(signal_fn(pool), 2, 1, _input(2, 3, orientations)) < TOL


@pytest.mark.parametrize("mode", ["max", "mean"])
def test_hex_pool_reduces_each_coarse_vertex_and_its_six_fine_neighbours(mode):
    """Scalar input, every non-corner coarse vertex: the max / mean of the 7 fine vertices around it,
    read off the grid's own neighbour rings (coarse vertices are the fine ones at the same place)."""
    fine, coarse = IcoGrid(2), IcoGrid(1)
    x = torch.randn(1, 1, 1, fine.num_vertices, dtype=torch.float64)
    y = signal_fn(HexPool(2, mode))(x)[0, 0, 0]
    same_place = np.abs(coarse.xyz @ fine.xyz.T - 1) < 1e-12
    for v_coarse in np.flatnonzero(coarse.degree == 6):
        v_fine = int(np.flatnonzero(same_place[v_coarse])[0])
        values = x[0, 0, 0, [v_fine, *fine.neighbours(v_fine)]]
        torch.testing.assert_close(y[v_coarse], values.amax() if mode == "max" else values.mean())


@pytest.mark.parametrize("orientations", [1, 6])
def test_upsampling_is_equivariant(orientations):
    up = IcoUpsample(1)
    assert max_equivariance_error(signal_fn(up), 1, 2, _input(1, 3, orientations)) < TOL


def _interpolate_native(buf: torch.Tensor) -> torch.Tensor:
    """The upsampling stencil from native ops, for autograd to differentiate."""
    h, w = buf.shape[2] - 2, buf.shape[3] - 2
    here = buf[:, :, 1:h + 1, 1:w + 1]
    along_w = (here + buf[:, :, 1:h + 1, 2:w + 2]) / 2
    along_h = (here + buf[:, :, 2:h + 2, 1:w + 1]) / 2
    diagonal = (here + buf[:, :, 2:h + 2, 2:w + 2]) / 2
    even_rows = torch.stack([here, along_w], dim=4).flatten(3, 4)
    odd_rows = torch.stack([along_h, diagonal], dim=4).flatten(3, 4)
    return torch.stack([even_rows, odd_rows], dim=3).flatten(2, 3)


@pytest.mark.parametrize("strided", [False, True])
def test_upsampling_stencil_matches_the_native_composition(strided):
    """The stencil's own backward against autograd through slices, `stack` and `div`: the forward bit for
    bit, the gradient up to the order of its four-term sums (every padded cell, the border included),
    also for an incoming gradient that is a channel slice (as the skip concatenation's backward gives)."""
    buf = torch.randn(2, 5, 6, 10, 3, 6, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 5, 8, 16, 5, 6, dtype=torch.float64)[..., 1:4, :]
    grad = grad if strided else grad.contiguous()
    ours, native = interpolate(buf, torch.zeros(2, 3, 6, 2, dtype=buf.dtype))[0], _interpolate_native(buf)
    assert torch.equal(ours, native)
    (g_ours,), (g_native,) = (torch.autograd.grad(y, buf, grad) for y in (ours, native))
    torch.testing.assert_close(g_ours, g_native, rtol=1e-14, atol=1e-14)
    assert g_ours.is_contiguous()


def test_upsampling_keeps_old_vertices_and_averages_edges():
    up = IcoUpsample(1)
    coarse = IcoGrid(1)
    x = torch.randn(1, 1, 1, coarse.num_vertices, dtype=torch.float64)
    fine = signal_fn(up)(x)[0, 0, 0]
    fine_charts, _ = IcoGrid(2).to_charts(fine)
    coarse_charts, _ = coarse.to_charts(x[0, 0, 0])
    torch.testing.assert_close(fine_charts[:, ::2, ::2], coarse_charts)
    torch.testing.assert_close(fine_charts[:, 1::2, 0:-1:2][:, :-1],
                               (coarse_charts[:, :-1] + coarse_charts[:, 1:]) / 2)


@pytest.mark.parametrize("mode", ["max", "mean"])
def test_orientation_pool_is_invariant(mode):
    layer = OrientationPool(mode)
    assert max_equivariance_error(signal_fn(layer), 2, 2, _input(2, 3, 6)) < TOL


@pytest.mark.parametrize("layer", [IcoBatchNorm(3), IcoLayerNorm(3), IcoPointwise(nn.GELU())])
def test_norms_and_nonlinearities_are_equivariant(layer):
    layer = layer.double()
    for p in layer.parameters():
        with torch.no_grad():
            p.normal_()
    assert max_equivariance_error(signal_fn(layer), 2, 2, _input(2, 3, 6)) < TOL


def test_batch_norm_statistics_include_orientations_and_poles():
    bn = IcoBatchNorm(3, affine=False).double()
    y = signal_fn(bn)(_input(2, 3, 6))
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(y.var((0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64), rtol=1e-4,
                               atol=1e-4)


def test_dropout_drops_whole_fields_and_is_identity_in_eval():
    drop = IcoDropout(0.5)
    x = IcoSignal.from_vertices(torch.ones(4, 8, 6, IcoGrid(1).num_vertices))
    out = drop(x).to_vertices()
    per_field = out.flatten(2)
    assert torch.all((per_field == 0).all(-1) | (per_field == 2).all(-1))
    drop.eval()
    assert drop(x) is x


@pytest.mark.parametrize(("in_rep", "out_rep"), REPS)
@pytest.mark.parametrize("stride", [1, 2])
def test_both_corner_forms_give_the_same_layer(in_rep, out_rep, stride):
    """Small charts overwrite the corner pixels, large ones add a correction to the conv's raw values
    there (whichever is cheaper); both are the same layer in values and gradients, and equivariant."""
    level = 2
    conv = _conv(level, in_rep, out_rep, stride)
    x = _input(level, 3, conv.in_orientations).requires_grad_()
    results = []
    for overwrite in (False, True):
        conv._overwrite_corners = overwrite
        assert max_equivariance_error(signal_fn(conv), level, level - stride + 1, x.detach()) < TOL
        y = signal_fn(conv)(x)
        weights = torch.linspace(-1, 2, y.numel(), dtype=y.dtype).view_as(y)
        results.append((y, *torch.autograd.grad((y * weights).sum(), [x, conv.weight, conv.bias])))
    for accumulated, overwritten in zip(*results, strict=True):
        torch.testing.assert_close(overwritten, accumulated, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("level", "in_rep", "out_rep", "stride"),
                         [(0, "regular", "regular", 1), (1, "regular", "regular", 1), (1, "scalar", "regular", 2),
                          (1, "regular", "scalar", 1), (2, "regular", "regular", 1), (3, "regular", "scalar", 2)])
def test_gradcheck(level, in_rep, out_rep, stride):
    torch.manual_seed(0)
    conv = IcoConv(2, 2, level, in_rep, out_rep, stride=stride).double()
    x = _input(level, 2, conv.in_orientations)[:1].requires_grad_()

    def fn(x, weight, bias):
        return signal_fn(conv)(x)

    assert torch.autograd.gradcheck(fn, (x, conv.weight, conv.bias), fast_mode=True)


def test_gradcheck_pool_and_upsample():
    x1 = _input(1, 2, 6)[:1].requires_grad_()
    assert torch.autograd.gradcheck(signal_fn(HexPool(1, "mean")), (x1,), fast_mode=True)
    assert torch.autograd.gradcheck(signal_fn(HexPool(1, "max")), (x1,), fast_mode=True)
    assert torch.autograd.gradcheck(signal_fn(IcoUpsample(1)), (x1,), fast_mode=True)


def test_gradcheck_norms():
    """IcoBatchNorm's backward is written out by hand (closed form through the batch statistics)."""
    x = (_input(1, 2, 6)[:1] + 3).requires_grad_()  # a non-zero mean, as features have
    for layer in (IcoBatchNorm(2), IcoBatchNorm(2, affine=False), IcoLayerNorm(2)):
        layer = layer.double()
        params = tuple(layer.parameters())
        for p in params:
            with torch.no_grad():
                p.normal_()

        def fn(x, *_params, layer=layer):
            return signal_fn(layer)(x)

        assert torch.autograd.gradcheck(fn, (x, *params), fast_mode=True)


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


# bf16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.002): measured over 5 seeds and the 4
# field types, IcoConv outputs differ from float32 by at most 0.0052 of their largest value and
# input / weight gradients by at most 0.0116; the bounds leave a margin of about 3.
BF16_OUTPUT_TOL, BF16_GRAD_TOL = 0.02, 0.03


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-6), (torch.bfloat16, BF16_OUTPUT_TOL)])
@pytest.mark.parametrize(("in_rep", "out_rep"), REPS)
def test_other_dtypes_match_float32(dtype, tol, in_rep, out_rep):
    torch.manual_seed(0)
    conv = IcoConv(3, 4, 2, in_rep, out_rep)
    x = torch.randn(2, 3, conv.in_orientations, IcoGrid(2).num_vertices)
    reference = signal_fn(conv)(x)
    out = conv.to(dtype)(IcoSignal.from_vertices(x.to(dtype)))
    assert out.charts.dtype == dtype and out.poles.dtype == dtype
    assert _relative_error(out.to_vertices(), reference) < tol


def test_state_dict_holds_only_parameters():
    conv = IcoConv(2, 3, 3, "regular", "regular")
    assert set(conv.state_dict()) == {"weight", "bias"}
    assert conv.weight.shape == (3, 2, 6, 7)


def test_plain_chart_tensors_are_accepted():
    grid = IcoGrid(2)
    conv = _conv(2, "regular", "regular")
    x = _input(2, 3, 6)
    charts, _ = grid.to_charts(x)
    out = conv(charts)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4, 6, 5, *grid.chart_shape)
    # away from the rows next to the poles it equals the signal path
    full = conv(IcoSignal.from_vertices(x)).charts
    torch.testing.assert_close(out[..., 1:-1, :], full[..., 1:-1, :])


def test_rotate_helper_is_the_regular_action():
    """Checked against geometry, not against the helper's own tables: sample a smooth tangent
    vector field V along each vertex's 6 hex directions, f(v, r) = <V(v), xyz[nb(v, r)] - xyz[v]>.
    Rotating V itself (V'(p) = R⁻¹-pulled-back V, i.e. V'(v) = Rᵀ V(R v)) must give the same
    samples as `rotate` applied to f, at every non-corner vertex and for all 60 rotations."""
    level = 2
    grid = IcoGrid(level)
    xyz = grid.xyz
    hex_nb = np.stack([grid.ring[np.arange(grid.num_vertices), (grid.frame_slot + r) % 6] for r in range(6)])
    directions = xyz[hex_nb] - xyz[None]  # [6, N, 3]

    def field(points):  # a smooth, nowhere-symmetric vector field in R^3
        return np.stack([np.sin(2 * points[:, 1]) + points[:, 2], np.cos(3 * points[:, 0]),
                         points[:, 0] * points[:, 1] - 0.3], axis=1)

    def samples(vectors):
        return torch.as_tensor(np.einsum("nd,rnd->rn", vectors, directions))[None, None]

    f = samples(field(xyz))
    regular = grid.degree == 6
    for g, rot in enumerate(grid.rotations):
        pulled_back = field(xyz @ rot.T) @ rot  # V'(v) = Rᵀ V(R v)
        expected = samples(pulled_back)
        torch.testing.assert_close(rotate(grid, f, g)[..., regular], expected[..., regular])
    assert torch.equal(rotate(grid, f, 0), f)
    shifts = torch.as_tensor(grid.orientation_shifts)
    assert (shifts[:, regular] != 0).any(), "a test of the action must see non-zero orientation shifts"


def test_bad_inputs_are_refused():
    conv = IcoConv(3, 4, 2, "regular", "regular")
    with pytest.raises(ValueError, match="got charts"):
        conv(IcoSignal.from_vertices(torch.randn(1, 3, 1, IcoGrid(2).num_vertices)))
    with pytest.raises(ValueError, match="level"):
        conv(IcoSignal.from_vertices(torch.randn(1, 3, 6, IcoGrid(3).num_vertices)))
    with pytest.raises(ValueError, match="stride"):
        IcoConv(3, 4, 0, stride=2)
    with pytest.raises(ValueError, match="representation"):
        IcoConv(3, 4, 2, "vector", "regular")
    with pytest.raises(ValueError, match="icosahedral"):
        IcoSignal.from_vertices(torch.randn(1, 3, 100))


def test_index_buffers_follow_the_module_to_another_device():
    conv = IcoConv(2, 3, 2, "regular", "regular").to(torch.device("meta"))
    assert all(t.device.type == "meta" for t in (*conv.buffers(), *conv.parameters()))
    out = conv(IcoSignal.from_vertices(torch.empty(1, 2, 6, IcoGrid(2).num_vertices, device="meta")))
    assert out.charts.device.type == "meta" and out.charts.shape == (1, 3, 6, 5, 4, 8)


@pytest.mark.parametrize(("in_rep", "out_rep"), REPS)
def test_initialisation_keeps_the_output_variance_of_he_init(in_rep, out_rep):
    torch.manual_seed(0)
    conv = IcoConv(64, 64, 3, in_rep, out_rep)
    x = torch.randn(4, 64, conv.in_orientations, IcoGrid(3).num_vertices)
    with torch.no_grad():
        y = signal_fn(conv)(x)
    assert 1.6 < y.var().item() < 2.4


def test_scalar_output_kernel_is_exactly_the_orientation_mean_in_float64():
    conv = IcoConv(2, 3, 1, "regular", "scalar").double()
    regular = IcoConv(2, 3, 1, "regular", "regular").double()
    regular.weight.data.copy_(conv.weight.data)
    mean = regular.dense_kernel().view(3, 6, 12, 3, 3).mean(1)
    assert torch.equal(conv.dense_kernel(), mean) or (conv.dense_kernel() - mean).abs().max() < 1e-16


@pytest.mark.parametrize(("in_rep", "out_rep"), REPS)
def test_mixed_precision_autocast_matches_float32(in_rep, out_rep):
    torch.manual_seed(0)
    conv = IcoConv(3, 4, 2, in_rep, out_rep)
    x = torch.randn(2, 3, conv.in_orientations, IcoGrid(2).num_vertices)
    results = []
    for precision in (torch.float32, torch.bfloat16):
        conv.zero_grad()
        leaf = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == torch.bfloat16):
            y = signal_fn(conv)(leaf)
        y.float().square().mean().backward()
        results.append((y.detach(), leaf.grad, conv.weight.grad.clone()))
    (y32, gx32, gw32), (y16, gx16, gw16) = results
    assert y16.dtype == torch.bfloat16
    assert _relative_error(y16, y32) < BF16_OUTPUT_TOL
    assert _relative_error(gx16, gx32) < BF16_GRAD_TOL and _relative_error(gw16, gw32) < BF16_GRAD_TOL


@pytest.mark.parametrize(("in_rep", "out_rep"), [("regular", "scalar"), ("scalar", "scalar")])
def test_inductor_compiled_conv_matches_eager(in_rep, out_rep):
    """Inductor once got the corner values of scalar outputs wrong (only with parallel loops)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        conv = _conv(2, in_rep, out_rep).float()
        x = _input(2, 3, conv.in_orientations).float()
        eager = signal_fn(conv)(x)
        torch._dynamo.reset()
        compiled = torch.compile(signal_fn(conv), backend="inductor", dynamic=False)(x)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("in_rep", "out_rep"), REPS)
@pytest.mark.parametrize("stride", [1, 2])
def test_a_split_input_gives_the_layer_of_its_concatenation(in_rep, out_rep, stride):
    """IcoConv([a, b]) (the U-Net's decoder input, never concatenated) is IcoConv(cat(a, b)) in values
    and gradients, corners and poles included: each part gets its channels' slice of the kernel and of
    the corner rule. Part b comes with the padded buffer a fused norm wrote (the skip), part a without."""
    from icolightning.nn import cat_signals

    level, r = 2, 6 if in_rep == "regular" else 1
    torch.manual_seed(2)
    conv = IcoConv(5, 4, level, in_rep, out_rep, stride=stride).double()
    with torch.no_grad():
        conv.bias.normal_()
    norm = IcoBatchNorm(3, relu=True, pad_level=level).double()
    a_in, b_in = _input(level, 2, r, seed=3).requires_grad_(), _input(level, 3, 6, seed=4).requires_grad_()
    results = []
    for split in (True, False):
        a = IcoSignal.from_vertices(a_in)
        b = norm(IcoSignal.from_vertices(b_in))
        if r == 1:
            b = b.map(lambda t: t.mean(2, keepdim=True))
        assert (b.padded is not None) == (r == 6)
        y = conv([a, b] if split else cat_signals([a, b])).to_vertices()
        weights = torch.linspace(-1, 2, y.numel(), dtype=y.dtype).view_as(y)
        grads = torch.autograd.grad((y * weights).sum(), [a_in, b_in, conv.weight, conv.bias])
        results.append((y, *grads))
    for new, old in zip(*results, strict=True):
        torch.testing.assert_close(new, old, rtol=1e-12, atol=1e-12)
