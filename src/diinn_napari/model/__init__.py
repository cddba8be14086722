"""The DIINN network: encoders, the implicit decoder and the conventions they share."""

from .decoder import DIINNDecoder
from .diinn import DIINN, VARIANTS
from .encoders import ENCODERS, make_encoder

__all__ = ["DIINN", "DIINNDecoder", "ENCODERS", "VARIANTS", "make_encoder"]
