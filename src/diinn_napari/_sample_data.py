"""Offline sample images, one per domain the plugin serves (see samples/README.md for sources)."""

from __future__ import annotations

from pathlib import Path

SAMPLES = Path(__file__).parent / "samples"


def _read(name: str):
    import tifffile

    return tifffile.imread(SAMPLES / name)


def microscopy_sample():
    """scikit-image's 'cell' (a HeLa cell, phase contrast), shipped in its wheel."""
    from skimage import data

    return [(data.cell(), {"name": "cell (microscopy)", "colormap": "gray"})]


def thermal_sample():
    """Landsat-8 thermal infrared band 10, 30 m pixels, uint16."""
    return [(_read("thermal_landsat8_tirs_b10.tif"), {"name": "Landsat-8 TIRS B10 (thermal)", "colormap": "inferno",
                                                     "scale": (30.0, 30.0), "units": ("m", "m")})]


def satellite_sample():
    """NAIP aerial RGB, 5 m pixels."""
    return [(_read("satellite_naip_rgb.tif"), {"name": "NAIP RGB (satellite)", "rgb": True,
                                              "scale": (5.0, 5.0), "units": ("m", "m")})]
