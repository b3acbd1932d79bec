"""PyTorch losses of the five methods (importing this module imports torch).

Each is an ``nn.Module``: a batch in, a scalar out, autograd through everything continuous, on
any device. Docstrings give the formula and the paper.
"""

from .dht import BatchCodes, NPairsLoss, SemiHardTripletLoss, assign_batch_codes
from .dqn import CodebookRefresher, DQNLoss
from .householder import HouseholderQuantizationLoss
from .klhash import BinaryKLLoss, RelativeDistanceLoss

__all__ = [
    "BatchCodes",
    "BinaryKLLoss",
    "CodebookRefresher",
    "DQNLoss",
    "HouseholderQuantizationLoss",
    "NPairsLoss",
    "RelativeDistanceLoss",
    "SemiHardTripletLoss",
    "assign_batch_codes",
]
