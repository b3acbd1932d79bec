"""Input validation shared by every public entry point.

Each check raises TypeError (wrong kind of thing) or ValueError (right kind, wrong value) with a
message that says what was wrong and what is accepted. Checks never use ``assert`` (which
``python -O`` removes). They accept numpy and cupy arrays alike (for cupy the reductions run on
the device and only a boolean comes back).
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from typing import Any

import numba as nb
import numpy as np

__all__ = [
    "as_distance_array",
    "as_float_array",
    "as_index_array",
    "check_columns",
    "check_distance_range",
    "check_distinct_rows",
    "check_finite",
    "check_int",
    "check_nonnegative",
    "check_rank",
    "check_real",
    "check_same_rows",
    "check_topk",
]


# float types with their bits' integer type and the mask of every bit but the sign
_MAGNITUDE_BITS = {np.dtype(np.float32): (np.int32, np.int32(0x7FFFFFFF)),
                   np.dtype(np.float64): (np.int64, np.int64(0x7FFFFFFFFFFFFFFF))}


@nb.njit(cache=True, nogil=True)
def _top_magnitude_bits(bits, mask):
    """The largest ``bits[i] & mask``: the bits of the largest magnitude among floats whose bit
    patterns ``bits`` holds, where any NaN or Inf comes out at or above the infinity's bits.
    An integer maximum, so that it vectorises (numpy's ``isfinite(x).all()`` writes a bool
    array and reads it again: 116 us against 76 for 2 MB of float32 read from memory)."""
    top = mask & 0
    for i in range(bits.shape[0]):
        top = max(top, bits[i] & mask)
    return top


def _largest_magnitude(x: np.ndarray) -> float | None:
    """``max |x|`` of a non-empty C-contiguous float32 or float64 array in native byte order
    (``inf`` if it holds NaN or Inf), in one pass; None for any other array."""
    kind = _MAGNITUDE_BITS.get(x.dtype)
    if (kind is None or type(x) is not np.ndarray or not x.flags.c_contiguous
            or not x.dtype.isnative or x.size == 0):
        return None
    int_type, mask = kind
    top = _top_magnitude_bits(x.reshape(-1).view(int_type), mask)
    value = float(np.array(top, dtype=int_type).view(x.dtype))
    return value if math.isfinite(value) else math.inf


def _xp(x: Any):
    """numpy for numpy arrays, cupy for cupy arrays."""
    if isinstance(x, np.ndarray):
        return np
    import cupy

    return cupy


def check_int(value: Any, name: str, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as a Python int, checking ``low <= value <= high`` where given."""
    if (type(value) is int and (low is None or value >= low)
            and (high is None or value <= high)):
        return value  # the common case, without the abstract-class checks below
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got bool {value!r}")
    if not isinstance(value, numbers.Integral):
        try:
            value = operator.index(value)  # 0-d integer arrays and tensors
        except TypeError:
            raise TypeError(
                f"{name} must be an integer, got {type(value).__name__} {value!r}"
            ) from None
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        if high is None:
            accepted = f">= {low}"
        elif low is None:
            accepted = f"<= {high}"
        else:
            accepted = f"in {low}..{high}"
        raise ValueError(f"{name} must be {accepted}, got {value}")
    return value


def check_nonnegative(value: Any, name: str) -> float:
    """Return ``value`` as a float, checking it is a finite number >= 0."""
    return check_real(value, name, low=0.0)


def check_real(value: Any, name: str, *, low: float | None = None, strict: bool = False
               ) -> float:
    """Return ``value`` as a finite float, checking ``value >= low`` (``> low`` if ``strict``)."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}") from None
    below = low is not None and (number <= low if strict else number < low)
    if not math.isfinite(number) or below:
        bound = "" if low is None else f" {'>' if strict else '>='} {low:g}"
        raise ValueError(f"{name} must be a finite number{bound}, got {number}")
    return number


def check_columns(x: Any, name: str, what: str = "columns") -> None:
    """Reject a 2-d (or wider) array with an empty last axis."""
    if x.ndim >= 2 and x.shape[-1] == 0:
        raise ValueError(f"{name} has shape {tuple(x.shape)}: 0 {what}; at least 1 is needed")


def check_distance_range(x: Any, name: str, dim: int | None = None) -> None:
    """Reject float32 vectors whose squared distances can overflow float32.

    Two vectors of ``dim`` entries each at most ``b`` in magnitude are at squared distance at
    most ``4 b^2 dim``; above float32's largest value every distance would be ``inf`` and the
    ranking arbitrary. ``dim`` is the length of the vectors compared (default: the last axis
    of ``x``; a PQ codebook holds pieces of ``dim``-d vectors).
    """
    if x.size == 0:
        return
    largest = _largest_magnitude(x)
    if largest is None:
        largest = float(_xp(x).abs(x).max())
    _check_range(largest, x.shape, name, dim)


def as_distance_array(x: Any, name: str, dim: int | None = None) -> Any:
    """``as_float_array(x, name, dtype=np.float32)``, then ``check_distance_range``: the
    float32 vectors a kernel computes squared distances between, with the same errors in the
    same order. Where ``x`` is a C-contiguous float32 or float64 numpy array in native byte
    order, its largest magnitude, read once, decides all three checks (finite, within
    float32, distances within float32); rounding to float32 is monotone, so the cast's largest
    magnitude is that one rounded."""
    largest = _largest_magnitude(x) if x.dtype.kind == "f" else None
    if largest is None:
        x = as_float_array(x, name, dtype=np.float32)
        check_distance_range(x, name, dim)
        return x
    if largest == math.inf:
        check_finite(x, name)  # raises, naming the first NaN or Inf
    if x.dtype != np.float32:
        if largest > float(np.finfo(np.float32).max):
            _check_fits(x, name, np.dtype(np.float32))  # raises, naming the value
        x = x.astype(np.float32)
        largest = float(np.float32(largest))
    _check_range(largest, x.shape, name, dim)
    return x


def _check_range(largest: float, shape: tuple[int, ...], name: str, dim: int | None) -> None:
    """check_distance_range, given the largest magnitude of the array of that shape."""
    dim = max(1, shape[-1] if dim is None else dim)
    bound = math.sqrt(float(np.finfo(np.float32).max) / (4.0 * dim))
    if largest > bound:
        raise ValueError(
            f"{name} holds a value of magnitude {largest:.3g}; squared distances between "
            f"{dim}-d vectors that large overflow float32 (accepted: |x| <= {bound:.3g}); "
            "scale them down"
        )


def check_topk(topk: Any, ntotal: int, num_queries: int) -> tuple[int, int]:
    """``(topk, work)``: the requested count (>= 1) and the count a kernel needs to select,
    ``min(topk, ntotal)`` (the rest of each row is padding). A ``topk`` beyond the database
    whose padded result would not fit in memory is refused."""
    topk = check_int(topk, "topk", 1)
    if topk > ntotal and num_queries * topk > 2**28:
        raise ValueError(
            f"topk = {topk} exceeds the {ntotal} items searched, and the padded "
            f"({num_queries}, {topk}) result would take {num_queries * topk * 12 / 2**30:.1f} "
            f"GiB; ask for at most {max(ntotal, 1)}"
        )
    return topk, max(1, min(topk, ntotal))


def check_rank(x: Any, name: str, ranks: Sequence[int], shape_text: str) -> None:
    """Check that ``x.ndim`` is one of ``ranks``; ``shape_text`` names the accepted shapes."""
    if x.ndim not in tuple(ranks):
        raise ValueError(f"{name} must have shape {shape_text}, got shape {tuple(x.shape)}")


def check_finite(x: Any, name: str) -> None:
    """Reject NaN and Inf, naming the first offending position."""
    if x.dtype.kind not in "fc" or x.size == 0:
        return
    largest = _largest_magnitude(x)
    if largest is not None and largest < math.inf:
        return
    xp = _xp(x)
    finite = xp.isfinite(x)
    if not bool(finite.all()):
        where = tuple(int(i) for i in xp.argwhere(~finite)[0])
        value = x[where].item()
        raise ValueError(f"{name} must be finite, found {value} at index {where}")


def as_float_array(x: Any, name: str, *, dtype: Any = None) -> Any:
    """Return ``x`` as a float32 or float64 array, casting integer and bool input to float64.

    float16 is widened to float32. ``dtype`` forces one float type. Complex, object, string and
    other kinds are rejected with TypeError. NaN and Inf are rejected with ValueError.
    """
    kind = x.dtype.kind
    if kind == "f":
        target = x.dtype if x.dtype.itemsize >= 4 else np.dtype(np.float32)
    elif kind in "biu":
        target = np.dtype(np.float64)
    else:
        raise TypeError(
            f"{name} must hold real numbers (float, int or bool), got dtype {x.dtype}"
        )
    if dtype is not None:
        target = np.dtype(dtype)
    target = target.newbyteorder("=")
    if kind == "f" and target.itemsize < x.dtype.itemsize:
        # checked before narrowing, so that the message names the value the caller gave, not
        # the inf that the cast would make of it; finite and in range, the cast stays finite
        check_finite(x, name)
        _check_fits(x, name, target)
        return x.astype(target)
    if x.dtype != target:
        x = x.astype(target)
    check_finite(x, name)
    return x


def _check_fits(x: Any, name: str, target: np.dtype) -> None:
    if x.size == 0:
        return
    xp = _xp(x)
    limit = float(np.finfo(target).max)
    magnitude = xp.abs(x)
    if float(magnitude.max()) > limit:
        where = tuple(int(i) for i in xp.argwhere(magnitude > limit)[0])
        raise ValueError(
            f"{name} holds {x[where].item():g} at index {where}, beyond the {target} range "
            f"(|x| <= {limit:.4g}) that the kernel computes in"
        )


def as_index_array(x: Any, name: str, upper: int | None = None, *, allow_missing: bool = False):
    """Return ``x`` as an int64 array of indices in ``0..upper-1`` (and -1 if ``allow_missing``)."""
    if x.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {x.dtype}")
    xp = _xp(x)
    if x.size:
        low = -1 if allow_missing else 0
        lo, hi = int(x.min()), int(x.max())  # (before the cast: uint64 above int64 wraps)
        if lo < low or hi > (np.iinfo(np.int64).max if upper is None else upper - 1):
            bound = f"0..{upper - 1}" if upper is not None else "0..2**63 - 1"
            extra = " (or -1 for a missing entry)" if allow_missing else ""
            bad = lo if lo < low else hi
            raise ValueError(f"{name} must hold indices in {bound}{extra}, found {bad}")
    return x.astype(xp.int64, copy=False)


def check_distinct_rows(codes: np.ndarray, name: str) -> None:
    """Each row of ``(N, k)`` codes must name ``k`` different buckets (an item sits in a
    bucket once; a repeated bucket would return the same id twice)."""
    if codes.shape[1] > 1 and codes.shape[0]:
        ordered = np.sort(codes, axis=1)
        repeats = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
        if repeats.any():
            row = int(np.flatnonzero(repeats)[0])
            raise ValueError(f"{name} must hold distinct buckets in each row; row {row} is "
                             f"{codes[row].tolist()}")


def check_same_rows(a: Any, a_name: str, b: Any, b_name: str) -> None:
    """Check that two arrays have the same number of rows."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{a_name} has {a.shape[0]} rows but {b_name} has {b.shape[0]}; they must match"
        )
