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
# queries per band of output rows in decode_window: bounds the per-LR-pixel table (4 KiB per LR pixel with the
# 4 x 256 decoder) and the query arrays (28 bytes a query: index and positions) whatever the tile size. 16 Ki
# queries: under 0.5 MiB of query arrays, a quarter of a 256 x 256 block-store window (the peak memory of a
# result larger than memory is a few windows' temporaries: benchmarks/bench_zarr_memory.py)
BAND_QUERIES = 1 << 14


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
        batch, ny, nx = lr.shape[0], y1 - y0, x1 - x0
        cols = (ix - ix[0]).to(device)
        # positions and the decoded values stay fp32 under autocast: the low precision is for the products
        dtype = torch.promote_types(features.dtype, torch.float32)
        rx, ry = rx.to(device=device, dtype=dtype), ry.to(device=device, dtype=dtype)
        # (y, item, x, channel) order: a band of output rows is then one contiguous block
        out = torch.empty(ny, batch, nx, self.in_channels, dtype=dtype, device=device)
        # Bands of output rows, each with the table of only the LR rows it needs: memory per band is
        # bounded (BAND_QUERIES queries), whatever the window size, and the band's table stays in cache.
        rows_per_band = max(1, BAND_QUERIES // max(1, batch * nx))
        start = 0
        while start < ny:
            stop = min(ny, start + rows_per_band)
            while stop < ny and iy[stop] == iy[stop - 1]:  # an LR row's output rows in one band: its table once
                stop += 1
            band_iy = iy[start:stop]
            lo, hi = int(band_iy.min()), int(band_iy.max()) + 1
            table = self.decoder.table(features, (lo - origin[0], hi - origin[0], c0, c1), mode)
            n = stop - start
            local = (band_iy - lo).to(device)[:, None, None] * (c1 - c0) + cols[None, None, :]
            item = torch.arange(batch, device=device)[None, :, None] * ((hi - lo) * (c1 - c0))
            rows = (item + local).reshape(-1)
            p = torch.empty(n, batch, nx, 4, dtype=dtype, device=device)
            p[..., 0] = ry[start:stop, None, None]
            p[..., 1] = rx[None, None, :]
            p[..., 2] = cy
            p[..., 3] = cx
            p = p.view(-1, 4)
            band = out[start:stop].view(-1, self.in_channels)  # a view: chunks write their rows in place
            for i in range(0, rows.numel(), chunk_size):
                band[i : i + chunk_size] = self.decoder(table, rows[i : i + chunk_size], p[i : i + chunk_size], mode)
            start = stop
        out = out.permute(1, 3, 0, 2)
        if self.config["skip"] == "bicubic":
            with torch.autocast(device.type, enabled=False):  # the skip is exact interpolation: fp32 always
                out = out + self.bicubic_window(lr.to(dtype) * 2 - 1, lr_shape, output_shape, window, origin, samples)
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
