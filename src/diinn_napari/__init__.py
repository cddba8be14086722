"""diinn-napari: arbitrary-scale super-resolution (DIINN) for scientific images.

The public API is imported lazily so that loading the napari plugin does not
import torch:

    from diinn_napari import upscale
    out = upscale(image, 2.5)
"""

__version__ = "0.1.0"
__all__ = ["upscale", "iter_upscaled_planes", "upscale_steps", "Cancelled", "DIINN", "load_weights", "save_weights"]


def __getattr__(name):
    if name in ("upscale", "iter_upscaled_planes", "upscale_steps", "Cancelled"):
        from . import engine

        return getattr(engine, name)
    if name == "DIINN":
        from .model import DIINN

        return DIINN
    if name in ("load_weights", "save_weights"):
        from . import weights

        return getattr(weights, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
