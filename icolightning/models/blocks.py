"""Building blocks shared by the models: conv + norm + nonlinearity, and the field-type variants."""

from __future__ import annotations

import torch
from torch import nn

from icolightning.nn import IcoConv, IcoSignal
from icolightning.nn.norm import IcoBatchNorm, IcoDropout, IcoLayerNorm, IcoPointwise
from icolightning.nn.pooling import HexPool

VARIANTS = {
    # name: (input field type, hidden field type)
    "S2R": ("scalar", "regular"),
    "R2R": ("regular", "regular"),
    "S2S": ("scalar", "scalar"),
}
"""S2R lifts scalar inputs to regular fields in the first layer only; R2R feeds the inputs as
regular fields (each channel copied to the 6 orientations) into regular convolutions throughout;
S2S keeps scalar fields everywhere (isotropic filters), the cheap baseline."""

NORMS = ("batch", "layer", "none")
DOWNSAMPLING = ("max", "mean", "conv")


def check_variant(variant: str) -> tuple[str, str]:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    return VARIANTS[variant]


def check_levels(level: int, stages: int, model: str) -> None:
    if level - (stages - 1) < 0:
        raise ValueError(f"{model}: level {level} is too coarse for {stages} stages "
                         f"(needs level >= {stages - 1})")


def _norm(kind: str, channels: int, level: int | None = None) -> nn.Module:
    """The norm layer; a batch norm given the `level` also applies the ReLU and writes the padded buffer."""
    if kind == "batch":
        return IcoBatchNorm(channels) if level is None else IcoBatchNorm(channels, relu=True, pad_level=level)
    if kind == "layer":
        return IcoLayerNorm(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; expected one of {NORMS}")


class ConvBlock(nn.Sequential):
    """Two (IcoConv -> norm -> ReLU) layers at one level; the first may change field type. With batch
    norm the ReLU runs inside the norm (fused, see `IcoBatchNorm`) and its slot holds an identity.
    `padded_output=False` (nothing pads the block's output, e.g. the classifier's last block): the last
    norm does not write a padded buffer, which backward would keep for the ReLU mask (1.2-1.9x the
    output's bytes at levels 4-2) where the plain ReLU keeps the output itself."""

    def __init__(self, in_channels: int, out_channels: int, level: int, in_rep: str, rep: str,
                 norm: str = "batch", dropout: float = 0.0, padded_output: bool = True) -> None:
        layers: list[nn.Module] = []
        for k in range(2):
            fused = norm == "batch" and (k == 0 or padded_output)
            layers += [
                IcoConv(in_channels if k == 0 else out_channels, out_channels, level,
                        in_rep if k == 0 else rep, rep, bias=norm == "none"),
                _norm(norm, out_channels, level if fused else None),
                nn.Identity() if fused else IcoPointwise(nn.ReLU()),
            ]
        if dropout:
            layers.append(IcoDropout(dropout))
        super().__init__(*layers)


class Downsample(nn.Module):
    """Level r -> r-1 by hex pooling or by a stride-2 convolution."""

    def __init__(self, channels: int, level: int, rep: str, mode: str) -> None:
        super().__init__()
        if mode not in DOWNSAMPLING:
            raise ValueError(f"unknown downsampling {mode!r}; expected one of {DOWNSAMPLING}")
        self.op = (IcoConv(channels, channels, level, rep, rep, stride=2) if mode == "conv"
                   else HexPool(level, mode))

    def forward(self, x: IcoSignal) -> IcoSignal:
        return self.op(x)


def encoder_stages(in_channels: int, widths: list[int], level: int, in_rep: str, rep: str, downsample: str,
                   norm: str, dropout: float, pad_last: bool = True) -> nn.ModuleList:
    """Stage i: (downsample to level - i, unless i = 0) then a ConvBlock to widths[i] channels;
    `pad_last=False` when nothing pads the last stage's output (see ConvBlock's `padded_output`)."""
    stages = nn.ModuleList()
    for i, width in enumerate(widths):
        stage = [] if i == 0 else [Downsample(widths[i - 1], level - i + 1, rep, downsample)]
        stage.append(ConvBlock(in_channels if i == 0 else widths[i - 1], width, level - i,
                               in_rep if i == 0 else rep, rep, norm, dropout, pad_last or i < len(widths) - 1))
        stages.append(nn.Sequential(*stage))
    return stages


def as_input_signal(x: torch.Tensor, in_rep: str) -> IcoSignal:
    """Vertex tensor [B, C, N] -> signal; R2R models see each channel copied to 6 orientations."""
    if x.dim() != 3:
        raise ValueError(f"models take vertex tensors [B, C, N], got shape {tuple(x.shape)}")
    signal = IcoSignal.from_vertices(x)
    if in_rep == "regular":
        signal = signal.map(lambda t: t.expand(-1, -1, 6, *t.shape[3:]))
    return signal
