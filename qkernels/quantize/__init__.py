"""Quantizers: ProductQuantizer (k-means per subspace), ITQ, and HouseholderQuantizer (torch)."""

from .itq import ITQ
from .pq import ProductQuantizer

__all__ = ["ITQ", "HouseholderQuantizer", "ProductQuantizer"]


def __getattr__(name: str):
    if name == "HouseholderQuantizer":  # imports torch
        from .householder import HouseholderQuantizer

        return HouseholderQuantizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
