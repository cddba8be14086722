import numpy as np
import pytest
import torch

from diinn_napari.model import DIINN


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
