"""IcoUNet: encoder-decoder over icosahedral levels with skip connections, for segmentation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from icolightning.models.blocks import ConvBlock, as_input_signal, check_levels, check_variant, encoder_stages
from icolightning.nn import IcoConv
from icolightning.nn.pooling import IcoUpsample


class IcoUNet(nn.Module):
    """Vertex tensor [B, C, N] at `level` -> per-vertex logits [B, num_classes, N] (poles included).

    Stage i works at level `level - i` with `widths[i]` channels (regular fields carry 6
    orientations each). The head is an invariant (regular -> scalar) convolution, so the logits
    rotate exactly with the input under the 60 icosahedral rotations.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        level: int,
        widths: Sequence[int] = (16, 32, 64),
        variant: str = "S2R",
        downsample: str = "max",
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = list(widths)
        check_levels(level, len(widths), "IcoUNet")
        self.in_rep, rep = check_variant(variant)
        self.level, self.variant, self.num_classes = level, variant, num_classes
        self.encoders = encoder_stages(in_channels, widths, level, self.in_rep, rep, downsample, norm, dropout)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(len(widths) - 1)):
            self.ups.append(IcoUpsample(level - i - 1))
            self.decoders.append(ConvBlock(widths[i + 1] + widths[i], widths[i], level - i, rep, rep, norm, dropout))
        self.head = IcoConv(widths[0], num_classes, level, rep, "scalar")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = as_input_signal(x, self.in_rep)
        skips = []
        for encoder in self.encoders:
            h = encoder(h)
            skips.append(h)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips[:-1]), strict=True):
            h = decoder([up(h), skip])  # the first IcoConv takes the halves apart: no concatenation
        return self.head(h).to_vertices().squeeze(2)
