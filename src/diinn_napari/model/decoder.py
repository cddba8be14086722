"""The dual interactive implicit decoder of DIINN (Nguyen & Beksi, WACV 2023, eq. 2-5).

Modulation branch (content z, ReLU) and synthesis branch (position p, sine):

    m0 = ReLU(W0 z + b0)                 s0 = m0 * sin(W0' p + b0')
    mi = ReLU(Wi [s_{i-1}, z] + bi)      si = mi * sin(Wi' s_{i-1} + bi')
    out = Wout s_{N-1} + bout

``modulation`` picks what feeds mi (paper Table 5): ``"m"`` = m_{i-1},
``"mz"`` = [m_{i-1}, z], ``"sz"`` = [s_{i-1}, z] (final model).
``positional_init`` adds the "IP" layer p <- sin(W p + b), z <- p * z.

z is the 3x3-unfolded encoder feature (64 x 9 = 576 channels, channel-major)
of the output pixel's nearest LR pixel. Every query is (LR table row, p):
the decoder first builds a per-LR-pixel *table*, then decodes queries that
gather rows of it. Two tables, one function:

* ``"reference"``: the table holds z itself; every layer multiplies the full
  concatenated input per query (the textbook formulation).
* ``"fast"``: z is constant over the output pixels that share an LR pixel, so
  W0 z + b0 and the z-part of every Wi [., z] + bi are computed once per LR
  pixel (one 3x3 convolution of the features) and gathered; no 576-channel
  tensor at output resolution ever exists. Exact, not an approximation.
  With ``positional_init`` z depends on p, so fast mode falls back to the
  reference table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MODULATIONS = ("m", "mz", "sz")
MODES = ("fast", "reference")


class DIINNDecoder(nn.Module):
    def __init__(
        self,
        feature_channels: int = 64,
        out_channels: int = 1,
        layers: int = 4,
        width: int = 256,
        modulation: str = "sz",
        positional_init: bool = False,
        pos_dim: int = 4,
    ):
        super().__init__()
        if modulation not in MODULATIONS:
            raise ValueError(f"modulation must be one of {MODULATIONS}, got {modulation!r}")
        self.z_dim = feature_channels * 9
        self.feature_channels = feature_channels
        self.width = width
        self.modulation = modulation
        self.positional_init = positional_init
        uses_z = modulation != "m"
        self.ip = nn.Linear(pos_dim, self.z_dim) if positional_init else None
        syn_in = self.z_dim if positional_init else pos_dim
        self.mod = nn.ModuleList(
            [nn.Linear(self.z_dim, width)] + [nn.Linear(width + (self.z_dim if uses_z else 0), width) for _ in range(layers - 1)]
        )
        self.syn = nn.ModuleList([nn.Linear(syn_in, width)] + [nn.Linear(width, width) for _ in range(layers - 1)])
        self.out = nn.Linear(width, out_channels)

    # ---- tables: one row per LR pixel of a window -------------------------------------------
    def table(self, features: torch.Tensor, window: tuple[int, int, int, int], mode: str) -> torch.Tensor:
        """Per-LR-pixel table for LR rows r0:r1 and columns c0:c1 of ``features`` (B, F, h, w).

        Returns (B * (r1 - r0) * (c1 - c0), K), rows in (b, y, x) order. The unfolding's
        zero padding sits at the border of ``features``, never at the window's border.
        """
        r0, r1, c0, c1 = window
        padded = F.pad(features, (1, 1, 1, 1))[..., r0 : r1 + 2, c0 : c1 + 2]
        if mode == "fast" and not self.positional_init:
            weight, bias = self._z_weights()
            # channels-last output: the (pixel, channel) table below is then a view, not a copy
            table = F.conv2d(padded.contiguous(memory_format=torch.channels_last), weight, bias)
        elif mode in MODES:
            b, c, h, w = padded.shape
            table = F.unfold(padded, 3).view(b, c * 9, h - 2, w - 2)
        else:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        # row-major (one LR pixel per row) so that gathering rows reads contiguous memory
        return table.permute(0, 2, 3, 1).reshape(-1, table.shape[1]).contiguous()

    def _z_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack W0 and the z-columns of every later modulation layer as one 3x3 conv."""
        layers = self.mod if self.modulation != "m" else self.mod[:1]
        weight = torch.cat([layer.weight[:, -self.z_dim :] for layer in layers])
        bias = torch.cat([layer.bias for layer in layers])
        return weight.view(-1, self.feature_channels, 3, 3), bias

    # ---- queries -----------------------------------------------------------------------------
    def forward(self, table: torch.Tensor, rows: torch.Tensor, p: torch.Tensor, mode: str) -> torch.Tensor:
        """Decode queries: ``rows`` (N,) index the table, ``p`` (N, pos_dim) -> (N, out_channels)."""
        gathered = F.embedding(rows, table)  # a row gather; faster than index_select on CPU
        if mode == "fast" and not self.positional_init:
            return self._decode_factorised(gathered, p)
        return self._decode_textbook(gathered, p)

    def _decode_textbook(self, z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        if self.ip is not None:
            p = torch.sin(self.ip(p))
            z = p * z
        m = torch.relu(self.mod[0](z))
        s = m * torch.sin(self.syn[0](p))
        for mod, syn in zip(self.mod[1:], self.syn[1:]):
            prev = s if self.modulation == "sz" else m
            m = torch.relu(mod(torch.cat([prev, z], 1) if self.modulation != "m" else prev))
            s = m * torch.sin(syn(s))
        return self.out(s)

    def _decode_factorised(self, terms: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        w = self.width
        m = torch.relu(terms[:, :w])
        s = m * torch.sin(self.syn[0](p))
        for i, (mod, syn) in enumerate(zip(self.mod[1:], self.syn[1:]), start=1):
            if self.modulation == "sz":
                # both branches read s_{i-1}: one matmul for the two of them
                both = F.linear(s, torch.cat([mod.weight[:, :w], syn.weight]))
                m = torch.relu(both[:, :w].add_(terms[:, i * w : (i + 1) * w]))
                s = m * torch.sin(both[:, w:].add_(syn.bias))
                continue
            if self.modulation == "m":
                pre = mod(m)
            else:  # "mz": z-part (and bias) precomputed per LR pixel
                pre = torch.addmm(terms[:, i * w : (i + 1) * w], m, mod.weight[:, :w].t())
            s_pre = syn(s)
            m = torch.relu(pre)
            s = m * torch.sin(s_pre)
        return self.out(s)
