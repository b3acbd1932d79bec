"""Packed binary codes, shared by the quantizers that make them (ITQ, H2Q) and the index that
searches them: pack_bits, unpack_bits and the check of packed input. A module of its own so that
``quantize`` does not import ``index``."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._arrays import origin_of, to_cupy, to_numpy
from ._checks import check_columns, check_int, check_rank

__all__ = ["pack_bits", "packed", "unpack_bits"]


def pack_bits(x: Any) -> Any:
    """Binary codes of ``x`` ``(N, bits)``: bit ``j`` is ``x[:, j] > 0``.

    Returns uint8 ``(N, ceil(bits / 8))`` in the layout of FAISS binary indexes: bit ``j`` is
    bit ``j % 8`` (least significant first) of byte ``j // 8``, the last byte zero-padded.
    Works on numpy arrays and torch tensors (the result has the caller's type).
    """
    origin = origin_of(x, names=("x",))
    a = to_numpy(x, allow_device_copy=True)
    check_rank(a, "x", (2,), "(N, bits)")
    check_columns(a, "x", "bits")
    if a.dtype.kind not in "biuf":
        raise TypeError(f"x must hold real numbers or booleans, got dtype {a.dtype}")
    if a.dtype.kind == "f" and a.size and np.isnan(a).any():
        where = tuple(int(i) for i in np.argwhere(np.isnan(a))[0])
        raise ValueError(f"x holds NaN at index {where}; a NaN has no sign (bit j is "
                         "x[:, j] > 0, and +-inf are accepted)")
    return origin.wrap(np.packbits(a > 0, axis=1, bitorder="little"))


def unpack_bits(codes: Any, nbits: int) -> Any:
    """The ``(N, nbits)`` uint8 0/1 bits of packed codes (the inverse of :func:`pack_bits`)."""
    origin = origin_of(codes, names=("codes",))
    c = packed(codes, "codes")
    nbits = check_int(nbits, "nbits", 1, 8 * c.shape[1])
    return origin.wrap(np.unpackbits(c, axis=1, count=nbits, bitorder="little"))


def packed(codes: Any, name: str, nbytes: int | None = None, device: bool = False):
    """Packed codes as a numpy array, or as a cupy array when ``device`` (no copy)."""
    c = to_cupy(codes) if device else to_numpy(codes, allow_device_copy=True, name=name)
    check_rank(c, name, (2,), "(N, bytes) packed uint8 codes")
    check_columns(c, name, "bytes")
    if c.dtype != np.uint8:
        raise TypeError(
            f"{name} must be packed uint8 codes (see qk.pack_bits), got dtype {c.dtype}; "
            "codes are never cast silently"
        )
    if nbytes is not None and c.shape[1] != nbytes:
        raise ValueError(f"{name} has {c.shape[1]} bytes per code; expected {nbytes}")
    return c
