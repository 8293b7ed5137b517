"""What a training step keeps for backward (DESIGN §7: memory ≤ 1.2x the planar twin): the hex max
pool keeps only its input and gives exactly the native gradient; no model keeps an int64 activation;
the classifier's last block keeps no padded buffer that nothing reads; a convolution keeps one
copy of its dense kernel."""

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from icolightning.grid import IcoGrid
from icolightning.models import IcoClassifier, IcoUNet
from icolightning.nn import IcoConv, IcoSignal
from icolightning.nn.pooling import _hex_windows, _windows


def saved_storages(step: Callable[[], None]) -> dict[int, tuple[int, torch.dtype]]:
    """The distinct storages autograd saves for backward while `step` runs: data pointer -> (bytes, dtype)."""
    storages: dict[int, tuple[int, torch.dtype]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes(), t.dtype
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return storages


def _padded_planes(dtype: torch.dtype, h: int = 8, layout: torch.memory_format = torch.channels_last) -> torch.Tensor:
    """Rectified, rounded values: many ties inside and between the two 2x2 windows."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10, 12, h + 2, 2 * h + 2, generator=gen, dtype=dtype).mul(2).round().relu()
    return x.contiguous(memory_format=layout).requires_grad_()


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize(("dtype", "h"), [(torch.float64, 8), (torch.float32, 8), (torch.float32, 2)])
def test_hex_max_pool_gives_the_native_gradient_bit_for_bit_ties_included(dtype, h, layout):
    """Backward scatters both windows' gradients by indices into the padded planes: each window's first
    maximum gets it, a tie between the windows halves it (h = 2: level 1, one output row)."""
    x = _padded_planes(dtype, h, layout)
    grad = torch.randn(10, 12, h // 2, h, dtype=dtype)
    y = _hex_windows(x, h, 2 * h, "max")
    ahead, behind = _windows(x, h, 2 * h)
    native = torch.maximum(F.max_pool2d(ahead, 2), F.max_pool2d(behind, 2))
    assert torch.equal(y, native)
    ahead_cells = ahead.unfold(2, 2, 2).unfold(3, 2, 2)
    ahead_max = ahead_cells.amax((-2, -1))
    assert (ahead_max == behind[..., ::2, ::2]).any()  # ties between the windows off the shared centre
    assert ((ahead_cells == ahead_max[..., None, None]).sum((-2, -1)) > 1).any()  # and inside a window
    (g_x,) = torch.autograd.grad(y, x, grad)
    (g_native,) = torch.autograd.grad(native, x, grad)
    assert torch.equal(g_x, g_native)
    assert g_x.is_contiguous(memory_format=layout)


def test_hex_max_pool_keeps_only_its_input():
    """The native composition kept two int64 index tensors and both window maxima (1.5x the input)."""
    x = _padded_planes(torch.float32)
    storages = saved_storages(lambda: _hex_windows(x, 8, 16, "max").sum().backward())
    assert set(storages) == {x.untyped_storage().data_ptr()}


def _step(model: torch.nn.Module, level: int, target: torch.Tensor) -> Callable[[], None]:
    x = torch.randn(2, 1, IcoGrid(level).num_vertices)
    return lambda: F.cross_entropy(model(x), target).backward()


def test_models_keep_no_int64_activation():
    """Every int64 storage saved for backward is a module's index table, the loss target or a per-call
    index over the batch's corners (smaller than one float channel): pooling keeps no argmax indices
    (each was as large as two float activations)."""
    torch.manual_seed(0)
    level = 3
    cases = [(IcoUNet(1, 3, level, (4, 8)), torch.randint(3, (2, IcoGrid(level).num_vertices))),
             (IcoClassifier(1, 3, level, (4, 8)), torch.randint(3, (2,)))]
    for model, target in cases:
        allowed = {t.untyped_storage().data_ptr() for t in [*model.buffers(), target]}
        storages = saved_storages(_step(model, level, target))
        one_channel = target.shape[0] * IcoGrid(level).num_vertices * 4
        kept = [n for ptr, (n, dtype) in storages.items()
                if dtype == torch.int64 and ptr not in allowed and n >= one_channel]
        assert kept == [], f"{type(model).__name__} keeps int64 storages of {kept} bytes"


def test_only_the_classifiers_last_stage_writes_no_padded_buffer():
    """Nothing pads the classifier's last output (orientation pool, mean, MLP), so its norm keeps the
    plain ReLU output for backward, not a padded copy (1.9x its bytes at level 2)."""
    torch.manual_seed(0)
    model = IcoClassifier(1, 3, 2, (4, 8))
    h = IcoSignal.from_vertices(torch.randn(2, 1, IcoGrid(2).num_vertices))
    padded = []
    for stage in model.stages:
        h = stage(h)
        padded.append(h.padded is not None)
    assert padded == [True, False]


def test_the_convolution_saves_its_padded_input_and_no_dense_kernel():
    """The only saved tensor as large as the dense kernel is the padded input (which the padding made
    anyway): backward rebuilds the kernel from the 7-tap weights, so no kernel or permuted copy of it
    (an einsum once saved one) stays alive between forward and backward."""
    conv = IcoConv(8, 8, 3)
    signal = IcoSignal.from_vertices(torch.randn(2, 8, 6, IcoGrid(3).num_vertices, requires_grad=True))
    storages = saved_storages(lambda: conv(signal).charts.sum().backward())
    kernel_bytes = conv.dense_kernel().untyped_storage().nbytes()
    padded_bytes = conv.pad(signal).buf.untyped_storage().nbytes()
    large = sorted(n for n, _ in storages.values() if n >= kernel_bytes)
    assert large == [padded_bytes], (large, padded_bytes, kernel_bytes)


def test_the_unet_decoder_never_builds_the_skip_concatenation():
    """The decoder's first convolution takes the upsampled and skip halves apart (it is linear in its
    input), so the forward pass concatenates no activations: every `cat` in it is smaller than the
    logits (the corner rule's features, the head's poles appended to its charts). A concatenated decoder
    input would be a full-size copy and a padded buffer saved for backward (14.9 MB at level 4, batch 8).
    (Backward's cats are the weight gradients of the kernel split, parameter-sized.)"""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Cats(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.sizes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten.cat.default:
                self.sizes.append(out.numel())
            return out

    torch.manual_seed(0)
    level, classes = 3, 3
    model = IcoUNet(1, classes, level, (4, 6, 8))
    cats = Cats()
    with cats:
        logits = model(torch.randn(2, 1, IcoGrid(level).num_vertices))
    logits.sum().backward()
    assert cats.sizes and max(cats.sizes) <= logits.numel(), (sorted(cats.sizes), logits.numel())
