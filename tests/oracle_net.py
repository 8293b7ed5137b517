"""A network whose output is a known function of its input (a test's own network, see test_trust and
test_predict_oracle): class 1 (TC) where channel 0 > 30, else class 2 (AR) where channel 1 > 0.5,
else class 0 (BG). With identity normalisation, channel 0 is TMQ and channel 1 is U850."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class OracleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(50.0))  # logit sharpness; a parameter so it has a state

    def forward(self, x: Tensor) -> Tensor:
        tc = x[:, 0] > 30.0
        ar = ~tc & (x[:, 1] > 0.5)
        labels = torch.where(tc, 1, torch.where(ar, 2, 0))
        return nn.functional.one_hot(labels, 3).movedim(-1, 1).to(x.dtype) * self.scale
