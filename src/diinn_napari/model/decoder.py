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
        h, w = features.shape[-2:]
        # the 3x3 neighbourhood of the window only (no padded copy of the whole feature map):
        # zeros where the window touches the border of `features`, real neighbours elsewhere
        a0, a1, b0, b1 = max(r0 - 1, 0), min(r1 + 1, h), max(c0 - 1, 0), min(c1 + 1, w)
        padded = F.pad(features[..., a0:a1, b0:b1], (1 - (c0 - b0), 1 - (b1 - c1), 1 - (r0 - a0), 1 - (a1 - r1)))
        if mode == "fast" and not self.positional_init:
            weight, bias = self._z_weights()
            # channels-last output: the (pixel, channel) table below is then a view, not a copy
            table = F.conv2d(padded.contiguous(memory_format=torch.channels_last), weight, bias)
        elif mode in MODES:
            b, c, h, w = padded.shape
            table = F.unfold(padded, 3).view(b, c * 9, h - 2, w - 2)
        else:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        # row-major (one LR pixel per row) so that gathering rows reads contiguous memory; under autocast the
        # fast table (pre-activations, summed in fp32 later) is widened once here, not per gathered chunk
        table = table.permute(0, 2, 3, 1).reshape(-1, table.shape[1])
        return (table.float() if mode == "fast" else table).contiguous()

    def _z_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack W0 and the z-columns of every later modulation layer as one 3x3 conv."""
        layers = self.mod if self.modulation != "m" else self.mod[:1]
        weight = torch.cat([layer.weight[:, -self.z_dim :] for layer in layers])
        bias = torch.cat([layer.bias for layer in layers])
        return weight.view(-1, self.feature_channels, 3, 3), bias

    # ---- queries -----------------------------------------------------------------------------
    def forward(self, table: torch.Tensor, rows: torch.Tensor, p: torch.Tensor, mode: str) -> torch.Tensor:
        """Decode queries: ``rows`` (N,) index the table, ``p`` (N, pos_dim) -> (N, out_channels)."""
        if mode == "fast" and not self.positional_init and self.modulation == "sz" and not torch.is_grad_enabled():
            return self._decode_sz_inference(table, rows, p)
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

    # ---- inference: the same arithmetic, fewer passes over memory --------------------------------
    def _inference_weights(self, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer i >= 1, (s-columns of Wi, Wi') transposed to (w, w) and contiguous, in ``dtype``.

        Cached per dtype and rebuilt whenever a parameter changes (in-place
        updates bump ``_version``; ``.to()`` and ``load_state_dict`` change data
        or version), so a model being trained never decodes with stale weights.
        """
        params = [t for mod, syn in zip(self.mod[1:], self.syn[1:]) for t in (mod.weight, syn.weight)]
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in params)
        cache = self.__dict__.setdefault("_weight_cache", {})  # plain attribute: never saved, never moved by .to()
        if cache.get(dtype, (None,))[0] != key:
            w = self.width
            with torch.no_grad():
                cache[dtype] = (key, [(mod.weight[:, :w].t().to(dtype).contiguous(), syn.weight.t().to(dtype).contiguous())
                                      for mod, syn in zip(self.mod[1:], self.syn[1:])])
        return cache[dtype][1]

    def _decode_sz_inference(self, table: torch.Tensor, rows: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Variant "sz" without autograd: in-place elementwise chain on reused, contiguous (N, w) buffers.

        fp32: equal to the textbook formula up to float rounding order (tests: 1e-4).
        Under autocast (fp16/bf16 on CUDA, bf16 on CPU) only the (w x w) products
        run in the low precision; sums, ReLU, sine and the product of the two
        branches stay in fp32. Measured choices (2 CPU threads): each layer's
        z-terms are gathered straight into the buffer its product accumulates
        into (no (N, layers * w) gather, no copy); two products into two
        contiguous buffers, not one into (N, 2w), because the sine of a strided
        half ran 3x slower.
        """
        w, device, n = self.width, table.device, p.shape[0]
        low = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
        with torch.autocast(device.type, enabled=False):
            weights = self._inference_weights(low or torch.float32)
            m = torch.index_select(table[:, :w], 0, rows).clamp_min_(0)  # m0 = ReLU(W0 z + b0), per LR pixel
            s = torch.addmm(self.syn[0].bias, p.float(), self.syn[0].weight.t()).sin_().mul_(m)
            m_buf = m  # reused for every later m_i
            s_bufs = [s, torch.empty_like(s)] if weights else [s]  # a product reads one and writes the other
            if low is not None and weights:
                low_m, low_s = (torch.empty(n, w, dtype=low, device=device) for _ in range(2))
                s_low = [s.to(low), torch.empty(n, w, dtype=low, device=device)]  # s_i rounded once, for the products
            for i, ((w_mod, w_syn), syn) in enumerate(zip(weights, self.syn[1:]), start=1):
                m = torch.index_select(table[:, i * w : (i + 1) * w], 0, rows, out=m_buf)  # Wi's z-part and bias
                s_next = s_bufs[i % 2]
                if low is None:
                    m.addmm_(s, w_mod).clamp_min_(0)
                    s = torch.addmm(syn.bias, s, w_syn, out=s_next).sin_().mul_(m)
                else:
                    prev = s_low[(i - 1) % 2]
                    m.add_(torch.mm(prev, w_mod, out=low_m)).clamp_min_(0)
                    sine = torch.add(torch.mm(prev, w_syn, out=low_s), syn.bias, out=s_next).sin_()
                    s = torch.mul(sine, m, out=s_low[i % 2])  # fp32 product, rounded once to the low precision
            return torch.addmm(self.out.bias, s.float(), self.out.weight.t())
