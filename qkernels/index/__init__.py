"""Indexes over learned codes: SparseHashTable, PQIndex and BinaryIndex."""

from .binary import BinaryIndex, hamming_topk, pack_bits, unpack_bits
from .pq import PQIndex
from .table import SparseHashTable

__all__ = ["BinaryIndex", "PQIndex", "SparseHashTable", "hamming_topk", "pack_bits",
           "unpack_bits"]
