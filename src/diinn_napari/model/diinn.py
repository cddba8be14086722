"""DIINN: encoder + dual interactive implicit decoder, decoding any window of any output grid."""

from __future__ import annotations

import torch
from torch import nn

from .decoder import DIINNDecoder
from .encoders import make_encoder
from .grid import AxisSamples, axis_queries, bicubic_matrix, cell_size, sample_bicubic_matrix, window_queries

# Paper Table 5: (modulation input, positional initialisation). "f" is the final model.
VARIANTS = {
    "a": ("m", True),
    "b": ("m", False),
    "c": ("mz", True),
    "d": ("mz", False),
    "e": ("sz", True),
    "f": ("sz", False),
}
SKIPS = ("none", "bicubic")
DEFAULT_CHUNK = 2048  # queries per decoder call: small chunks stay in cache (fastest measured on CPU)


class DIINN(nn.Module):
    """Arbitrary-scale super-resolution network.

    ``DIINN(in_channels=1, encoder="edsr-baseline", variant="f", skip="none")``;
    ``model(lr, output_shape)`` maps a (B, C, h, w) float tensor with values in
    [0, 1] to (B, C, H_out, W_out). ``skip="bicubic"`` adds the bicubic
    interpolation of the input to the decoder's output (a global residual).
    The constructor's arguments, as :attr:`config`, rebuild the same network.
    """

    def __init__(
        self,
        in_channels: int = 1,
        encoder: str = "edsr-baseline",
        variant: str = "f",
        skip: str = "none",
        decoder_layers: int = 4,
        decoder_width: int = 256,
        encoder_args: dict | None = None,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        if skip not in SKIPS:
            raise ValueError(f"skip must be one of {SKIPS}, got {skip!r}")
        self.config = dict(
            in_channels=in_channels,
            encoder=encoder,
            variant=variant,
            skip=skip,
            decoder_layers=decoder_layers,
            decoder_width=decoder_width,
            encoder_args=dict(encoder_args or {}),
        )
        self.encoder = make_encoder(encoder, in_channels, **(encoder_args or {}))
        modulation, positional_init = VARIANTS[variant]
        self.decoder = DIINNDecoder(
            self.encoder.out_channels, in_channels, decoder_layers, decoder_width, modulation, positional_init
        )

    @property
    def in_channels(self) -> int:
        return self.config["in_channels"]

    @property
    def receptive_radius(self) -> int:
        """LR pixels of context one output pixel depends on (encoder + 3x3 unfolding + bicubic)."""
        return self.encoder.receptive_radius + 2

    def encode(self, lr: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) in [0, 1] -> (B, F, h, w) content features."""
        return self.encoder(lr * 2 - 1)

    def forward(self, lr: torch.Tensor, output_shape: tuple[int, int], mode: str = "fast", chunk_size: int = DEFAULT_CHUNK):
        """Upscale a whole (B, C, h, w) batch in [0, 1] to (B, C, *output_shape)."""
        h, w = lr.shape[-2:]
        H, W = output_shape
        return self.decode_window(lr, self.encode(lr), (h, w), (H, W), (0, H, 0, W), (0, 0), mode, chunk_size)

    def decode_window(
        self,
        lr: torch.Tensor,
        features: torch.Tensor,
        lr_shape: tuple[int, int],
        output_shape: tuple[int, int],
        window: tuple[int, int, int, int],
        origin: tuple[int, int] = (0, 0),
        mode: str = "fast",
        chunk_size: int = DEFAULT_CHUNK,
        samples: tuple[AxisSamples | None, AxisSamples | None] = (None, None),
    ) -> torch.Tensor:
        """Decode output rows y0:y1, columns x0:x1 of the *global* output grid.

        ``lr`` (B, C, th, tw) and ``features`` (B, F, th, tw) cover an LR tile whose
        top-left pixel is ``origin`` in the global LR image of size ``lr_shape``;
        the tile must contain every LR pixel the window needs (plus the bicubic
        support when ``skip="bicubic"``). Returns (B, C, y1 - y0, x1 - x0).
        ``samples`` (rows, columns): an :class:`~diinn_napari.model.grid.AxisSamples`
        puts that axis's output samples at explicit LR positions (e.g. point
        samples of Z planes) instead of the pixel-centre grid; ``output_shape``
        then counts those samples.
        """
        (h, w), (H, W), (y0, y1, x0, x1) = lr_shape, output_shape, window
        iy, ry, cy = window_queries(h, H, y0, y1, samples[0])
        ix, rx, cx = window_queries(w, W, x0, x1, samples[1])
        r0, c0 = int(iy[0]) - origin[0], int(ix[0]) - origin[1]
        r1, c1 = int(iy[-1]) - origin[0] + 1, int(ix[-1]) - origin[1] + 1
        if r0 < 0 or c0 < 0 or r1 > features.shape[-2] or c1 > features.shape[-1]:
            raise ValueError("the LR tile does not cover the requested output window")
        device = features.device
        table = self.decoder.table(features, (r0, r1, c0, c1), mode)
        batch, ny, nx = lr.shape[0], y1 - y0, x1 - x0
        local = (iy - iy[0])[:, None] * (c1 - c0) + (ix - ix[0])[None, :]
        rows = (torch.arange(batch)[:, None] * ((r1 - r0) * (c1 - c0)) + local.reshape(1, -1)).reshape(-1)
        p = torch.stack(
            [
                ry[:, None].expand(ny, nx),
                rx[None, :].expand(ny, nx),
                torch.full((ny, nx), cy),
                torch.full((ny, nx), cx),
            ],
            -1,
        ).reshape(1, ny * nx, 4).expand(batch, -1, -1).reshape(-1, 4)
        rows, p = rows.to(device), p.to(device=device, dtype=features.dtype)
        out = torch.cat([self.decoder(table, rows[i : i + chunk_size], p[i : i + chunk_size], mode)
                         for i in range(0, rows.numel(), chunk_size)])
        out = out.view(batch, ny, nx, -1).permute(0, 3, 1, 2)
        if self.config["skip"] == "bicubic":
            out = out + self.bicubic_window(lr * 2 - 1, lr_shape, output_shape, window, origin, samples)
        return out * 0.5 + 0.5

    def decode_points(
        self,
        lr: torch.Tensor,
        features: torch.Tensor,
        queries: list[tuple[tuple[int, int], torch.Tensor, torch.Tensor]],
        mode: str = "fast",
    ) -> list[torch.Tensor]:
        """Decode scattered output pixels, one output grid per batch item (used in training).

        ``queries[b] = (output_shape, ys, xs)``: integer pixel positions on item b's
        output grid. Returns, per item, a (C, len(ys)) tensor in [0, 1] units.
        """
        b, _, h, w = lr.shape
        table = self.decoder.table(features, (0, h, 0, w), mode)
        rows, ps = [], []
        for item, ((H, W), ys, xs) in enumerate(queries):
            iy, ry = axis_queries(h, H)
            ix, rx = axis_queries(w, W)
            rows.append(item * h * w + iy[ys] * w + ix[xs])
            cells = torch.tensor([cell_size(h, H), cell_size(w, W)]).expand(len(ys), 2)
            ps.append(torch.cat([ry[ys, None], rx[xs, None], cells], 1))
        rows = torch.cat(rows).to(features.device)
        out = self.decoder(table, rows, torch.cat(ps).to(features), mode).t()
        outs = list(out.split([len(ys) for _, ys, _ in queries], dim=1))
        if self.config["skip"] == "bicubic":
            for item, ((H, W), ys, xs) in enumerate(queries):
                full = self.bicubic_window(lr[item] * 2 - 1, (h, w), (H, W), (0, H, 0, W))
                outs[item] = outs[item] + full[:, ys.to(lr.device), xs.to(lr.device)]
        return [o * 0.5 + 0.5 for o in outs]

    @staticmethod
    def bicubic_window(lr, lr_shape, output_shape, window, origin=(0, 0), samples=(None, None)) -> torch.Tensor:
        """Bicubic interpolation of an LR tile at the global output pixel centres (or ``samples``) of ``window``."""
        (h, w), (H, W), (y0, y1, x0, x1) = lr_shape, output_shape, window
        th, tw = lr.shape[-2:]

        def matrix(axis, n_in, n_out, start, stop, lr_start, lr_stop):
            if samples[axis] is None:
                return bicubic_matrix(n_in, n_out, start, stop, lr_start, lr_stop)
            return sample_bicubic_matrix(samples[axis], n_in, start, stop, lr_start, lr_stop)

        ry = matrix(0, h, H, y0, y1, origin[0], origin[0] + th).to(lr)
        rx = matrix(1, w, W, x0, x1, origin[1], origin[1] + tw).to(lr)
        return ry @ lr @ rx.t()
