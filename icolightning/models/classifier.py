"""IcoClassifier: convolutions down the levels, then an invariant head for whole-sphere labels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from icolightning.models.blocks import as_input_signal, check_levels, check_variant, encoder_stages
from icolightning.nn.pooling import OrientationPool


class IcoClassifier(nn.Module):
    """Vertex tensor [B, C, N] at `level` -> logits [B, num_classes], invariant to the 60 rotations.

    After the last stage, features are pooled over orientations and then averaged over all
    vertices (poles included): both pools are symmetric, which is what makes the output exactly
    invariant, not just approximately.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        level: int,
        widths: Sequence[int] = (8, 16, 32),
        variant: str = "S2R",
        downsample: str = "max",
        norm: str = "batch",
        dropout: float = 0.0,
        hidden: int = 64,
    ) -> None:
        super().__init__()
        widths = list(widths)
        check_levels(level, len(widths), "IcoClassifier")
        self.in_rep, rep = check_variant(variant)
        self.level, self.variant, self.num_classes = level, variant, num_classes
        self.stages = encoder_stages(in_channels, widths, level, self.in_rep, rep, downsample, norm, dropout,
                                     pad_last=False)
        self.orientation_pool = OrientationPool("mean")
        self.head = nn.Sequential(nn.Linear(widths[-1], hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, widths[-1]] rotation-invariant features."""
        h = as_input_signal(x, self.in_rep)
        for stage in self.stages:
            h = stage(h)
        return self.orientation_pool(h).to_vertices().squeeze(2).mean(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
