"""The one memory layout features travel in between layers, and the conversions at its edges.

A chart tensor is indexed [B, C, R, 5, H, W] (channel, orientation, chart, row, column) but
stored as [B, 5, H, W, C, R] contiguous: that is a channels-last [B·5, C·R, H, W] image batch,
the layout oneDNN and cuDNN convolve without a reorder. Every layer reads and writes this
layout, so no layer between a model's input and its logits copies features just to reorder
them: the convolution's output is already in it, pointwise layers and norms keep it, and
pooling, upsampling and skip concatenation build their outputs directly in it (`memory`
view, then `charts_view`). The poles ride alongside as a small [B, C, R, 2] tensor.
Only a model's input (vertex tensor [B, C, N] -> `to_layout`) and output convert.
"""

from __future__ import annotations

import torch

TO_MEMORY = (0, 3, 4, 5, 1, 2)
"""[B, C, R, 5, H, W] index order -> [B, 5, H, W, C, R] memory order."""
FROM_MEMORY = (0, 4, 5, 1, 2, 3)


def memory(charts: torch.Tensor) -> torch.Tensor:
    """[B, 5, H, W, C, R] view of a chart tensor: contiguous when it is in the layout."""
    return charts.permute(TO_MEMORY)


def charts_view(mem: torch.Tensor) -> torch.Tensor:
    """[B, C, R, 5, H, W] view of a [B, 5, H, W, C, R] memory-order tensor."""
    return mem.permute(FROM_MEMORY)


def in_layout(charts: torch.Tensor) -> bool:
    return memory(charts).is_contiguous()


def to_layout(charts: torch.Tensor) -> torch.Tensor:
    """The chart tensor in the layout: itself if it already is, else one reordering copy."""
    return charts if in_layout(charts) else charts_view(memory(charts).contiguous())


def planes(charts: torch.Tensor) -> torch.Tensor:
    """[B·5, C·R, H, W] channels-last image batch sharing the chart tensor's memory (a view)."""
    b, c, r, n, h, w = charts.shape
    images = memory(charts).reshape(b * n, h, w, c * r).permute(0, 3, 1, 2)
    if c * r == 1:
        # A single channel's view also reads as contiguous (NCHW), and conv2d then writes an NCHW
        # output that every later layer would copy; the stride 1 on channels states channels-last.
        images = images.as_strided(images.shape, (images.stride(0), 1, *images.stride()[2:]))
    return images


def from_planes(images: torch.Tensor, batch: int, orientations: int) -> torch.Tensor:
    """[B, 5, H, W, C, R] memory-order view of a channels-last [B·5, C·R, H, W] image batch (`planes`' inverse)."""
    n, cr, h, w = images.shape
    return images.permute(0, 2, 3, 1).reshape(batch, n // batch, h, w, cr // orientations, orientations)


def empty_planes(images: int, channels: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """An uninitialised channels-last [images, channels, height, width] tensor."""
    return torch.empty((images, channels, height, width), dtype=like.dtype, device=like.device,
                       memory_format=torch.channels_last)

