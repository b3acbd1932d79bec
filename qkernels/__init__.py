"""qkernels: learn quantizable embeddings end to end and search them faster than a scan.

The public API lives here; the documentation (``docs/``, ``make docs``) is the tour. Importing
qkernels compiles nothing and imports neither cupy nor torch: kernels compile (or load from
Numba's cache) on first use, and the names that need torch (``HouseholderQuantizer``,
``losses``, ``distributed``) import it when first used.
"""

__version__ = "0.1.0"

from . import config, metrics
from ._show import show_config
from .flow import (
    hierarchical_code_objective,
    solve_hierarchical_codes,
    solve_sparse_codes,
    sparse_code_objective,
)
from .index import (
    BinaryIndex,
    HierarchicalHashTable,
    Index,
    PQIndex,
    SparseHashTable,
    hamming_topk,
    pack_bits,
    unpack_bits,
)
from .quantize import ITQ, ProductQuantizer

__all__ = [
    "ITQ",
    "BinaryIndex",
    "HierarchicalHashTable",
    "HouseholderQuantizer",
    "Index",
    "PQIndex",
    "ProductQuantizer",
    "SparseHashTable",
    "__version__",
    "config",
    "distributed",
    "hamming_topk",
    "hierarchical_code_objective",
    "losses",
    "metrics",
    "pack_bits",
    "show_config",
    "solve_hierarchical_codes",
    "solve_sparse_codes",
    "sparse_code_objective",
    "unpack_bits",
]


def __getattr__(name: str):
    if name == "HouseholderQuantizer":
        from .quantize.householder import HouseholderQuantizer

        return HouseholderQuantizer
    if name in ("losses", "distributed"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
