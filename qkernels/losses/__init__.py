"""PyTorch losses of the five methods (importing this module imports torch)."""

from .householder import HouseholderQuantizationLoss

__all__ = ["HouseholderQuantizationLoss"]
