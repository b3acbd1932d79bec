"""Indexes over learned codes: SparseHashTable, HierarchicalHashTable, PQIndex, BinaryIndex."""

from .binary import BinaryIndex, hamming_topk, pack_bits, unpack_bits
from .hierarchical import HierarchicalHashTable
from .pq import PQIndex
from .table import SparseHashTable

__all__ = ["BinaryIndex", "HierarchicalHashTable", "PQIndex", "SparseHashTable", "hamming_topk",
           "pack_bits", "unpack_bits"]
