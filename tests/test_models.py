"""Whole models: exact equivariance (segmentation) and invariance (classification) for all 60 rotations."""

import pytest
import torch

from icolightning.grid import IcoGrid
from icolightning.models import IcoClassifier, IcoUNet
from icolightning.nn.equivariance import max_equivariance_error, rotate

TOL = 1e-10


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights and non-zero biases everywhere (BatchNorm affine included)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or p.dim() == 1:
                p.normal_()
    return model.double()


def _x(level: int, channels: int = 2) -> torch.Tensor:
    return torch.randn(2, channels, IcoGrid(level).num_vertices, generator=torch.Generator().manual_seed(3),
                       dtype=torch.float64)


@pytest.mark.parametrize("variant", ["S2R", "R2R", "S2S"])
def test_unet_is_equivariant(variant):
    model = _randomise(IcoUNet(2, 3, level=2, widths=(4, 5, 6), variant=variant))
    with torch.no_grad():
        assert max_equivariance_error(model, 2, 2, _x(2)) < TOL


@pytest.mark.parametrize("downsample", ["mean", "conv"])
def test_unet_is_equivariant_in_eval_mode_with_other_downsampling(downsample):
    model = _randomise(IcoUNet(2, 3, level=2, widths=(4, 5, 6), downsample=downsample)).eval()
    with torch.no_grad():
        model.train()(_x(2))
        model.eval()
        assert max_equivariance_error(model, 2, 2, _x(2)) < TOL


@pytest.mark.parametrize("variant", ["S2R", "R2R", "S2S"])
def test_classifier_is_invariant(variant):
    model = _randomise(IcoClassifier(2, 5, level=2, widths=(4, 5, 6), variant=variant, downsample="mean"))
    grid = IcoGrid(2)
    x = _x(2)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (2, 5)
        for g in range(60):
            torch.testing.assert_close(model(x[..., grid.rotation_permutations[g]]), y, rtol=TOL, atol=0)


def test_internal_regular_features_shift_as_predicted():
    """Inside the network, regular fields rotate with the per-point cyclic shift of the grid."""
    model = _randomise(IcoUNet(2, 3, level=2, widths=(4, 5)))
    grid = IcoGrid(2)
    captured = []
    model.encoders[0].register_forward_hook(lambda mod, inp, out: captured.append(out.to_vertices()))
    x = _x(2)
    with torch.no_grad():
        model(x)
        reference = captured.pop()
        assert reference.shape[2] == 6
        worst = 0.0
        for g in range(60):
            model(x[..., grid.rotation_permutations[g]])
            worst = max(worst, (captured.pop() - rotate(grid, reference, g)).abs().max().item())
    assert worst < TOL * reference.abs().max().item()
    assert (reference[..., :-2].std(2) > 0).any()


def test_unet_covers_every_vertex_with_real_values():
    model = IcoUNet(3, 3, level=3, widths=(4, 6))
    out = model(torch.randn(2, 3, IcoGrid(3).num_vertices))
    assert out.shape == (2, 3, IcoGrid(3).num_vertices)
    assert torch.isfinite(out).all()
    assert out[..., IcoGrid(3).corners].abs().sum() > 0


# Measured over 8 seeds (level 2, widths (4, 4)): bf16 (weights cast, or autocast) logits differ
# from float32 by at most 0.017 of their largest value (U-Net; classifier 0.011) and the whole
# parameter gradient by at most 0.051 in norm (U-Net; classifier 0.018). Bounds leave a margin of ~3.
BF16_LOGIT_TOL, BF16_GRAD_TOL = 0.05, 0.15


def _models() -> tuple[torch.nn.Module, ...]:
    torch.manual_seed(0)
    return IcoUNet(2, 3, 2, widths=(4, 4)), IcoClassifier(2, 4, 2, widths=(4, 4))


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def _gradient(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.double().flatten() for p in model.parameters()])


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-5), (torch.bfloat16, BF16_LOGIT_TOL)])
def test_models_in_other_dtypes_match_float32(dtype, tol):
    x = torch.randn(2, 2, IcoGrid(2).num_vertices)
    for model in _models():
        reference = model(x)
        out = model.to(dtype)(x.to(dtype))
        assert out.dtype == dtype
        assert _relative_error(out, reference) < tol
        out.float().logsumexp(1).mean().backward()
        assert all(p.grad is not None for p in model.parameters())


def test_state_dict_has_no_index_tables():
    model = IcoUNet(2, 3, 3, widths=(4, 6))
    keys = model.state_dict().keys()
    assert all(k.endswith(("weight", "bias", "running_mean", "running_var", "num_batches_tracked")) for k in keys)
    buffers = sum(b.numel() for b in model.buffers())
    assert buffers > 0 and len(keys) < 40


def test_a_model_learns_a_rotation_invariant_task():
    """A small classifier tells one bump from two within a few steps. (North bump vs south bump
    would be hopeless: one of the 60 rotations maps one onto the other.)"""
    grid = IcoGrid(2)
    z = torch.as_tensor(grid.xyz[:, 2], dtype=torch.float32)
    one, two = torch.exp(4 * z), torch.exp(4 * z) + torch.exp(-4 * z)
    x = torch.stack([one, two])[:, None] + 0.05 * torch.randn(2, 1, grid.num_vertices)
    y = torch.tensor([0, 1])
    torch.manual_seed(0)
    model = IcoClassifier(1, 2, 2, widths=(4, 4), norm="none")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="too coarse"):
        IcoUNet(2, 3, level=1, widths=(4, 4, 4))
    with pytest.raises(ValueError, match="variant"):
        IcoUNet(2, 3, level=2, variant="X2Y")
    with pytest.raises(ValueError, match="vertex tensors"):
        IcoClassifier(2, 3, level=2, widths=(4, 4))(torch.randn(2, 2, 6, 162))


def test_models_train_under_bfloat16_autocast():
    """What trainer.precision=bf16-mixed does: autocast around forward, float32 weights; logits and
    parameter gradients stay within the measured bf16 error of a float32 step."""
    x = torch.randn(2, 2, IcoGrid(2).num_vertices)
    for model in _models():
        steps = []
        for autocast in (False, True):
            model.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = model(x)
            out.float().logsumexp(1).mean().backward()
            steps.append((out.detach(), _gradient(model)))
        (out32, grad32), (out16, grad16) = steps
        assert out16.dtype == torch.bfloat16
        assert _relative_error(out16, out32) < BF16_LOGIT_TOL
        assert ((grad16 - grad32).norm() / grad32.norm()).item() < BF16_GRAD_TOL


def test_features_stay_in_one_layout_from_input_to_logits():
    """Every layer of both models hands the next one charts already in `nn.layout`'s layout, so no
    layer pays for a reordering copy (the next padding or norm would otherwise transpose them)."""
    from icolightning.nn import IcoSignal
    from icolightning.nn.layout import in_layout

    seen = []

    def check(module, _inputs, out):
        if isinstance(out, IcoSignal):  # or the interior of the next padded buffer, itself in the layout
            padded = out.padded is not None and in_layout(out.padded.buf)
            seen.append((type(module).__name__, in_layout(out.charts) or padded))

    for model in (IcoUNet(2, 3, 3, widths=(4, 6, 8)), IcoClassifier(2, 4, 3, widths=(4, 6))):
        handles = [m.register_forward_hook(check) for m in model.modules()]
        model(torch.randn(2, 2, IcoGrid(3).num_vertices)).sum().backward()
        for handle in handles:
            handle.remove()
    kinds = {name for name, _ in seen}
    assert {"IcoConv", "IcoBatchNorm", "HexPool", "IcoUpsample", "OrientationPool"} <= kinds  # ReLU: in the norm
    assert all(ok for _, ok in seen), [name for name, ok in seen if not ok]


def test_every_convolution_of_a_training_step_gets_dense_channels_last_tensors():
    """Each conv2d of a training step, forward and backward, gets the padded buffer itself (dense,
    channels-last, no implicit padding), writes a dense channels-last output (a single input channel
    included: its view also reads as NCHW, and conv2d then writes NCHW) and gets a dense channels-last
    output gradient; the lifting layer
    computes no input gradient; each U-Net decoder's first layer makes two calls, one per half of its
    input (the upsampled and the skip). An NCHW or strided tensor would make oneDNN reorder it before
    every call, a full-size copy; these calls are otherwise the planar twin's (docs/performance.md,
    "Where the gap is")."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from icolightning.nn.conv import ico_conv, ico_conv_backward

    aten = torch.ops.aten
    opened_ops = {op._qualname: op for op in (ico_conv, ico_conv_backward)}

    class Convolutions(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            opened = opened_ops.get(func._schema.name)
            if opened is not None:  # the layer's custom operators: record the conv calls inside them
                with self:
                    return opened._init_fn(*args, **(kwargs or {}))
            if func in (aten.convolution.default, aten.conv2d.default):  # conv2d: inside an opened operator
                x = args[0]
                padding = args[4] if len(args) > 4 else (kwargs or {}).get("padding", (0, 0))
                out = func(*args, **(kwargs or {}))
                self.calls.append(("forward", x.is_contiguous(memory_format=torch.channels_last),
                                   out.is_contiguous(memory_format=torch.channels_last), padding, None))
                return out
            elif func is aten.convolution_backward.default:
                grad, x, padding, mask = args[0], args[1], args[5], args[10]
                self.calls.append(("backward", x.is_contiguous(memory_format=torch.channels_last),
                                   grad.is_contiguous(memory_format=torch.channels_last), padding, mask[0]))
            return func(*args, **(kwargs or {}))

    for channels in (2, 1):
        for model, convs in ((IcoUNet(channels, 3, 3, widths=(4, 6, 8)), 13),
                             (IcoClassifier(channels, 4, 3, widths=(4, 6)), 4)):
            recorder = Convolutions()
            with recorder:
                model(torch.randn(2, channels, IcoGrid(3).num_vertices)).float().logsumexp(1).mean().backward()
            kinds = [c[0] for c in recorder.calls]
            assert kinds.count("forward") == kinds.count("backward") == convs, kinds
            assert all(c[1] and c[2] and list(c[3]) == [0, 0] for c in recorder.calls), recorder.calls
            assert [c[4] for c in recorder.calls if c[0] == "backward"] == [True] * (convs - 1) + [False]
