"""Indexes over learned codes: SparseHashTable, HierarchicalHashTable, PQIndex, BinaryIndex,
all behind one protocol, :class:`Index` (ids, the lifecycle, filtered search, files)."""

from ._base import Index
from .binary import BinaryIndex, hamming_topk, pack_bits, unpack_bits
from .hierarchical import HierarchicalHashTable
from .pq import PQIndex
from .table import SparseHashTable

__all__ = ["BinaryIndex", "HierarchicalHashTable", "Index", "PQIndex", "SparseHashTable",
           "hamming_topk", "pack_bits", "unpack_bits"]
