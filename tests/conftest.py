import signal

import numpy as np
import pytest
import torch

from diinn_napari.model import DIINN


def ctrl_c_reaches_it() -> None:
    """``preexec_fn`` for a child the test will Ctrl-C: SIGINT at its default, as under a terminal. A test run
    started in the background by a shell without job control (``cmd &`` in a script) inherits SIGINT ignored,
    and so would its children, which Python then leaves ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def tiny_model(channels: int = 1, variant: str = "f", skip: str = "bicubic", seed: int = 0) -> DIINN:
    """A small random DIINN (2 res-blocks, width 32) for fast tests."""
    torch.manual_seed(seed)
    return DIINN(channels, variant=variant, skip=skip, decoder_width=32, encoder_args={"n_resblocks": 2, "features": 16}).eval()


@pytest.fixture
def model():
    return tiny_model()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def gray_weights(tmp_path_factory) -> str:
    """A weights file of a tiny random gray model (seed 0), shared by the whole session."""
    from diinn_napari.weights import save_weights
    return str(save_weights(tiny_model(), tmp_path_factory.mktemp("weights") / "gray.safetensors"))


@pytest.fixture(scope="session")
def rgb_weights(tmp_path_factory) -> str:
    """A weights file of a tiny random RGB model (seed 0)."""
    from diinn_napari.weights import save_weights
    return str(save_weights(tiny_model(3), tmp_path_factory.mktemp("weights") / "rgb.safetensors"))


@pytest.fixture(scope="session")
def other_gray_weights(tmp_path_factory) -> str:
    """A second tiny gray model (seed 1): different weights, same architecture."""
    from diinn_napari.weights import save_weights
    return str(save_weights(tiny_model(seed=1), tmp_path_factory.mktemp("weights") / "other.safetensors"))


@pytest.fixture(autouse=True)
def remembered_settings(tmp_path, monkeypatch):
    """The widget remembers its settings in a file of each test's own, never in the user's config folder."""
    path = tmp_path / "diinn-widget.json"
    monkeypatch.setenv("DIINN_NAPARI_SETTINGS", str(path))
    return path
