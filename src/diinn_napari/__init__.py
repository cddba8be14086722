"""diinn-napari: arbitrary-scale super-resolution (DIINN) for scientific images.

The public API is imported lazily so that loading the napari plugin does not
import torch:

    from diinn_napari import upscale
    out = upscale(image, 2.5)

Every shell (napari widget, batch, evaluation) builds one ``RunSettings`` and
runs it with an ``Engine``; ``upscale`` is the one-call convenience over both.
"""

__version__ = "0.3.0"

_LAZY = {
    "engine": ("Engine", "upscale", "upscale_lazy", "upscale_window", "iter_upscaled_planes", "upscale_steps", "Step", "Cancelled"),
    "settings": ("RunSettings",),
    "model": ("DIINN",),
    "weights": ("load_weights", "save_weights", "WeightsError"),
}
__all__ = [name for names in _LAZY.values() for name in names] + ["isotropic"]


def __getattr__(name):
    if name == "isotropic":  # the submodule: diinn_napari.isotropic.isotropic(volume, spacing, ...)
        from importlib import import_module

        return import_module(".isotropic", __name__)
    for module, names in _LAZY.items():
        if name in names:
            from importlib import import_module

            return getattr(import_module(f".{module}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
