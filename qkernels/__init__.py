"""qkernels: learn quantizable embeddings end to end and search them faster than a scan.

The public API lives here; see the README for a tour. Importing qkernels compiles nothing and
imports neither cupy nor torch: kernels compile (or load from Numba's cache) on first use.
"""

__version__ = "0.1.0"

from . import config, metrics
from .flow import solve_sparse_codes, sparse_code_objective
from .index import SparseHashTable

__all__ = [
    "SparseHashTable",
    "__version__",
    "config",
    "metrics",
    "solve_sparse_codes",
    "sparse_code_objective",
]
