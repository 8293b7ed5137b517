"""Non-equivariant baselines: what the icosahedral CNN is compared against.

`PlanarCNN` sees the same 5 charts as the icosahedral CNN, but as 5 independent plain images:
ordinary 3×3 convolutions with zero padding (no gauge padding across chart seams, no kernel
rotation, no orientation channels), then global average pooling over all charts. It is
therefore invariant only to the 5 rotations about the polar axis that permute whole charts,
and the accuracy it loses under icosahedral (I) and arbitrary (R) rotations measures what the
gauge-equivariant construction buys.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from icolightning.grid import NUM_CHARTS, IcoGrid


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class PlanarCNN(nn.Module):
    """Vertex tensor [B, C, N] → logits [B, K] through a plain conv2d stack on the 5 charts.

    Args:
        in_channels, num_classes, level: as for `IcoClassifier`.
        channels: width of each stage; every stage after the first halves the resolution
            (stride-2 convolution), mirroring the icosahedral classifier's pooling pyramid.
        convs_per_stage: convolutions per stage (the first of a later stage has stride 2).
        dropout: dropout before the final linear layer.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        level: int,
        channels: Sequence[int] = (16, 32, 64),
        convs_per_stage: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.grid = IcoGrid(level)
        layers: list[nn.Module] = []
        c_in = in_channels
        for stage, width in enumerate(channels):
            for k in range(convs_per_stage):
                layers.append(_block(c_in, width, 2 if stage > 0 and k == 0 else 1))
                c_in = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(c_in, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        charts, _ = self.grid.to_charts(x)  # [B, C, 5, H, W]; the 2 poles are not on any chart
        b, c, _, h, w = charts.shape
        images = charts.transpose(1, 2).reshape(b * NUM_CHARTS, c, h, w)
        feats = self.features(images)
        pooled = feats.mean((-2, -1)).reshape(b, NUM_CHARTS, -1).mean(1)
        return self.head(pooled)
