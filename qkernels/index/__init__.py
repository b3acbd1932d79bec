"""Indexes over learned codes: SparseHashTable (and, as they land, PQIndex and BinaryIndex)."""

from .table import SparseHashTable

__all__ = ["SparseHashTable"]
