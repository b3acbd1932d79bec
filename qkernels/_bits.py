"""Packed binary codes, shared by the quantizers that make them (ITQ, H2Q) and the index that
searches them: pack_bits, unpack_bits and the check of packed input. A module of its own so that
``quantize`` does not import ``index``."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _gpu
from ._arrays import origin_of, to_cupy, to_numpy
from ._checks import check_columns, check_int, check_rank

__all__ = ["pack_bits", "packed", "unpack_bits"]


def pack_bits(x: Any) -> Any:
    """Binary codes of ``x``: bit ``j`` of an item is ``x[:, j] > 0``.

    Parameters
    ----------
    x : array_like, shape (N, bits)
        Real numbers or booleans; numpy array, torch tensor or cupy array (GPU input is
        packed on its device). ``+-inf`` are accepted (only the sign is read).

    Returns
    -------
    array of uint8, shape (N, ceil(bits / 8))
        The layout of FAISS binary indexes: bit ``j`` is bit ``j % 8`` (least significant
        first) of byte ``j // 8``, the last byte zero-padded; the caller's array type.

    Raises
    ------
    ValueError
        If ``x`` holds NaN (which has no sign) or has another rank or no columns.
    TypeError
        If ``x`` holds neither real numbers nor booleans.

    See Also
    --------
    unpack_bits : the inverse.
    hamming_topk : the search over these codes.

    Examples
    --------
    >>> import numpy as np, qkernels as qk
    >>> qk.pack_bits(np.array([[1.0, -1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0]]))
    array([[5, 1]], dtype=uint8)
    """
    origin = origin_of(x, names=("x",))
    on_device = origin.is_cuda and _gpu.available()
    a = to_cupy(x) if on_device else to_numpy(x, allow_device_copy=True)
    check_rank(a, "x", (2,), "(N, bits)")
    check_columns(a, "x", "bits")
    if a.dtype.kind not in "biuf":
        raise TypeError(f"x must hold real numbers or booleans, got dtype {a.dtype}")
    xp = _gpu.array_module(a)
    if a.dtype.kind == "f" and a.size and bool(xp.isnan(a).any()):
        where = tuple(int(i) for i in xp.argwhere(xp.isnan(a))[0])
        raise ValueError(f"x holds NaN at index {where}; a NaN has no sign (bit j is "
                         "x[:, j] > 0, and +-inf are accepted)")
    if on_device:
        return origin.wrap(pack_signs(a))
    return origin.wrap(np.packbits(a > 0, axis=1, bitorder="little"))


def pack_signs(a: Any) -> Any:
    """``pack_bits`` of a checked (N, bits) array on a GPU, without leaving it: each byte is
    the sum of its eight bits times 1, 2, ..., 128 (least significant first)."""
    xp = _gpu.array_module(a)
    n, bits = a.shape
    nbytes = -(-bits // 8)
    padded = xp.zeros((n, nbytes * 8), dtype=xp.uint8)
    padded[:, :bits] = a > 0
    weights = xp.left_shift(xp.ones(8, dtype=xp.uint8), xp.arange(8, dtype=xp.uint8))
    return (padded.reshape(n, nbytes, 8) * weights).sum(axis=2, dtype=xp.uint8)


def unpack_bits(codes: Any, nbits: int) -> Any:
    """The bits of packed codes, the inverse of :func:`pack_bits`.

    Parameters
    ----------
    codes : array_like of uint8, shape (N, B)
        Packed codes; never cast from another dtype.
    nbits : int
        Bits per code, ``1..8 * B``.

    Returns
    -------
    array of uint8, shape (N, nbits)
        0 and 1; the caller's array type.

    Raises
    ------
    ValueError
        If ``nbits`` is outside ``1..8 * B`` or ``codes`` has another rank.
    TypeError
        If ``codes`` is not uint8.

    Examples
    --------
    >>> import numpy as np, qkernels as qk
    >>> qk.unpack_bits(np.array([[5, 1]], dtype=np.uint8), 9)
    array([[1, 0, 1, 0, 0, 0, 0, 0, 1]], dtype=uint8)
    """
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
