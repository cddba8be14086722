"""PNG and JPEG through imageio / Pillow: one plane per file.

JPEG inputs are written back as PNG (no second lossy compression); PNG holds
uint8 (gray, RGB, RGBA) and uint16 (gray). The settings record is a PNG text
chunk.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from . import record as settings_record
from .base import ImageInfo, register, sample_layout


def array_axes(array: np.ndarray) -> str:
    """tifffile-style axes of an image read by scikit-image (PNG, JPEG, BMP, WebP)."""
    return "YXS" if array.ndim == 3 else "YX"


def read_pixels(path: Path) -> np.ndarray:
    """The pixels of a PNG, JPEG, BMP or WebP file; a ValueError naming the file if unreadable."""
    from skimage.io import imread

    try:
        return imread(path)
    except Exception as err:  # imageio raises many types for a broken file
        raise ValueError(f"{path.name}: cannot read this image ({err})") from err


class OnePlane:
    """The plane source of a one-plane file: ``source[()]`` reads it."""

    def __init__(self, info: ImageInfo):
        self.info, self.shape, self.dtype = info, info.shape, info.dtype

    def __getitem__(self, index: tuple[int, ...]) -> np.ndarray:
        return read_pixels(self.info.path)

    def close(self) -> None:
        pass

    def __enter__(self) -> OnePlane:
        return self

    def __exit__(self, *exc) -> None:
        pass


class PngFormat:
    """PNG and JPEG in, PNG out."""

    name = "png"
    suffixes = (".png", ".jpg", ".jpeg")
    holds_stacks = False
    kinds = ("png", "jpeg")

    def detect(self, path: Path) -> bool:
        return path.suffix.lower() in self.suffixes and not path.is_dir()

    def read_info(self, path: Path) -> ImageInfo:
        array = read_pixels(path)
        axes = array_axes(array)
        if sample_layout(path.name, axes, array.shape) == "bands":
            raise ValueError(f"{path.name}: {array.shape[-1]} samples per pixel; a PNG or JPEG is read as gray, RGB (3) "
                             "or RGBA (4)")
        return ImageInfo(path, "png" if path.suffix.lower() == ".png" else "jpeg", axes, array.shape, array.dtype)

    def open_planes(self, info: ImageInfo) -> OnePlane:
        return OnePlane(info)

    def read_array(self, path: Path) -> tuple[np.ndarray, str]:
        array = read_pixels(path)
        return array, array_axes(array)

    def output_name(self, path: Path) -> str:
        return path.name if path.suffix.lower() == ".png" else path.stem + ".png"

    def write(self, path: Path, info: ImageInfo, planes: Iterable[np.ndarray], record: dict | None = None) -> None:
        import imageio.v3 as iio
        from PIL import PngImagePlugin

        plane = next(iter(planes))
        if plane.dtype not in (np.uint8, np.uint16) or (plane.dtype == np.uint16 and plane.ndim == 3):
            raise ValueError(
                f"PNG cannot hold {'RGB ' if plane.ndim == 3 else ''}{plane.dtype} pixels; "
                "use --dtype uint8 (or uint16 for gray images)"
            )
        chunks = PngImagePlugin.PngInfo()
        if record is not None:
            chunks.add_text(settings_record.RECORD_KEY, settings_record.encode(record))
        iio.imwrite(path, plane, extension=".png", pnginfo=chunks)

    def read_record(self, path: Path) -> dict | None:
        from PIL import Image

        try:
            with Image.open(path) as image:
                return settings_record.decode(getattr(image, "text", {}).get(settings_record.RECORD_KEY))
        except (OSError, ValueError):
            return None


PNG = register(PngFormat())
