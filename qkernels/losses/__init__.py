"""PyTorch losses of the five methods (importing this module imports torch).

Each is an ``nn.Module``: a batch in, a scalar out, autograd through everything continuous, on
any device. Docstrings give the formula and the paper.
"""

from .dht import (
    BatchCodes,
    HierarchicalBatchCodes,
    NPairsLoss,
    SemiHardTripletLoss,
    assign_batch_codes,
    assign_hierarchical_codes,
)
from .dqn import CodebookRefresher, DQNLoss
from .householder import HouseholderQuantizationLoss
from .klhash import BinaryKLLoss, RelativeDistanceLoss

__all__ = [
    "BatchCodes",
    "BinaryKLLoss",
    "CodebookRefresher",
    "DQNLoss",
    "HierarchicalBatchCodes",
    "HouseholderQuantizationLoss",
    "NPairsLoss",
    "RelativeDistanceLoss",
    "SemiHardTripletLoss",
    "assign_batch_codes",
    "assign_hierarchical_codes",
]
