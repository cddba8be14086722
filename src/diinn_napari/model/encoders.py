"""CNN encoders that keep the LR size (no upsampler): EDSR-baseline and RDN.

Each encoder maps (B, in_channels, h, w) to (B, out_channels, h, w) and states
its ``receptive_radius``: how many LR pixels away an input pixel can still
change a feature. The engine uses it as the tile overlap, which is what makes
tiled output equal whole-image output.
"""

from __future__ import annotations

import torch
from torch import nn

ENCODERS: dict[str, type[nn.Module]] = {}


def register(name: str):
    """Class decorator that adds an encoder to :data:`ENCODERS` under ``name``."""

    def wrap(cls):
        ENCODERS[name] = cls
        return cls

    return wrap


def make_encoder(name: str, in_channels: int, **kwargs) -> nn.Module:
    """Build the encoder registered as ``name``."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {sorted(ENCODERS)}")
    return ENCODERS[name](in_channels=in_channels, **kwargs)


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class ResBlock(nn.Module):
    def __init__(self, features: int, res_scale: float):
        super().__init__()
        self.body = nn.Sequential(conv3x3(features, features), nn.ReLU(inplace=True), conv3x3(features, features))
        self.res_scale = res_scale

    def forward(self, x):
        return x + self.body(x) * self.res_scale


@register("edsr-baseline")
class EDSRBaseline(nn.Module):
    """EDSR-baseline (Lim et al. 2017) without its upsampler: 16 res-blocks of 64 features."""

    def __init__(self, in_channels: int = 1, n_resblocks: int = 16, features: int = 64, res_scale: float = 1.0):
        super().__init__()
        self.head = conv3x3(in_channels, features)
        self.body = nn.Sequential(*[ResBlock(features, res_scale) for _ in range(n_resblocks)], conv3x3(features, features))
        self.out_channels = features
        self.receptive_radius = 2 * n_resblocks + 2  # one pixel per 3x3 conv

    def forward(self, x):
        x = self.head(x)
        return x + self.body(x)


class DenseBlock(nn.Module):
    """Residual dense block: ``n_convs`` densely connected convs, 1x1 fusion, local skip."""

    def __init__(self, features: int, growth: int, n_convs: int):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Sequential(conv3x3(features + i * growth, growth), nn.ReLU(inplace=True)) for i in range(n_convs)
        )
        self.fuse = nn.Conv2d(features + n_convs * growth, features, 1)

    def forward(self, x):
        stack = [x]
        for conv in self.convs:
            stack.append(conv(torch.cat(stack, 1)))
        return x + self.fuse(torch.cat(stack, 1))


@register("rdn")
class RDN(nn.Module):
    """RDN (Zhang et al. 2018) without its upsampler: 16 blocks x 8 convs, growth 64, G0 64."""

    def __init__(self, in_channels: int = 1, n_blocks: int = 16, n_convs: int = 8, growth: int = 64, features: int = 64):
        super().__init__()
        self.shallow1 = conv3x3(in_channels, features)
        self.shallow2 = conv3x3(features, features)
        self.blocks = nn.ModuleList(DenseBlock(features, growth, n_convs) for _ in range(n_blocks))
        self.global_fuse = nn.Sequential(nn.Conv2d(n_blocks * features, features, 1), conv3x3(features, features))
        self.out_channels = features
        self.receptive_radius = n_blocks * n_convs + 3

    def forward(self, x):
        shallow = self.shallow1(x)
        x = self.shallow2(shallow)
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return shallow + self.global_fuse(torch.cat(outs, 1))
