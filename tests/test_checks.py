import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qkernels._checks import (
    _largest_magnitude,
    as_distance_array,
    as_float_array,
    as_index_array,
    check_distance_range,
    check_finite,
    check_int,
    check_nonnegative,
    check_rank,
    check_same_rows,
)


def test_check_int_accepts_numpy_integers_and_rejects_the_rest():
    assert check_int(np.int32(3), "k", 1, 4) == 3
    assert check_int(np.array(2), "k") == 2
    with pytest.raises(TypeError, match="k must be an integer, got float"):
        check_int(2.0, "k")
    with pytest.raises(TypeError, match="k must be an integer"):
        check_int(True, "k")
    with pytest.raises(ValueError, match=r"k must be in 1\.\.4, got 5"):
        check_int(5, "k", 1, 4)
    with pytest.raises(ValueError, match="n must be >= 0, got -1"):
        check_int(-1, "n", 0)
    with pytest.raises(ValueError, match="n must be <= 3"):
        check_int(4, "n", None, 3)


def test_check_nonnegative():
    assert check_nonnegative(0, "penalty") == 0.0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="penalty must be a finite number >= 0"):
            check_nonnegative(bad, "penalty")
    with pytest.raises(TypeError, match="penalty must be a real number"):
        check_nonnegative("1", "penalty")


def test_float_arrays_cast_ints_and_bools_keep_float32():
    assert as_float_array(np.arange(3), "x").dtype == np.float64
    assert as_float_array(np.array([True, False]), "x").dtype == np.float64
    x32 = np.ones(3, np.float32)
    assert as_float_array(x32, "x") is x32
    assert as_float_array(np.ones(2, np.float16), "x").dtype == np.float32
    assert as_float_array(x32, "x", dtype=np.float64).dtype == np.float64
    with pytest.raises(TypeError, match="real numbers"):
        as_float_array(np.ones(2, complex), "x")
    with pytest.raises(TypeError, match="real numbers"):
        as_float_array(np.array(["a"]), "x")


def test_nan_and_inf_are_located():
    x = np.zeros((2, 3))
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"scores must be finite, found nan at index \(1, 2\)"):
        check_finite(x, "scores")
    x[1, 2] = -np.inf
    with pytest.raises(ValueError, match="found -inf"):
        as_float_array(x, "scores")
    check_finite(np.zeros(0), "empty")  # nothing to complain about


def test_rank_and_rows():
    with pytest.raises(ValueError, match=r"scores must have shape \(n, d\), got shape \(3,\)"):
        check_rank(np.zeros(3), "scores", (2,), "(n, d)")
    with pytest.raises(ValueError, match="a has 2 rows but b has 3"):
        check_same_rows(np.zeros(2), "a", np.zeros(3), "b")


def test_index_arrays():
    np.testing.assert_array_equal(as_index_array(np.array([0, 2], np.int32), "I", 3), [0, 2])
    with pytest.raises(ValueError, match=r"indices in 0\.\.2, found 3"):
        as_index_array(np.array([3]), "I", 3)
    with pytest.raises(ValueError, match="found -1"):
        as_index_array(np.array([-1]), "I", 3)
    assert as_index_array(np.array([-1]), "I", 3, allow_missing=True)[0] == -1
    with pytest.raises(TypeError, match="integers"):
        as_index_array(np.array([0.5]), "I")
    # uint64 above int64: refused with the value given (a cast first made it negative)
    big = np.array([1, 2**63 + 5], dtype=np.uint64)
    with pytest.raises(ValueError, match=r"indices in 0\.\.2\*\*63 - 1, found 9223372036854775813"):
        as_index_array(big, "I")
    with pytest.raises(ValueError, match=r"indices in 0\.\.2, found 9223372036854775813"):
        as_index_array(big, "I", 3)
    np.testing.assert_array_equal(as_index_array(np.array([2**63 - 1], np.uint64), "I"),
                                  [2**63 - 1])


@settings(max_examples=200, deadline=None)
@given(dtype=st.sampled_from([np.float32, np.float64]), data=st.data())
def test_largest_magnitude_and_finiteness_equal_numpy(dtype, data):
    """The one-pass check (an integer maximum over the bit patterns) against numpy, over any
    bit patterns: NaN payloads of both signs, infinities, subnormals, -0.0; any layout."""
    bits = 8 * np.dtype(dtype).itemsize
    exponent = (1 << (bits - 1)) - (1 << (23 if bits == 32 else 52))  # all exponent bits
    special = st.sampled_from([exponent, exponent + 1, exponent + 12345,
                               (1 << (bits - 1)) - 1])  # inf, NaNs
    pattern = st.integers(0, (1 << bits) - 1) | special.flatmap(
        lambda value: st.sampled_from([value, value | (1 << (bits - 1))]))
    words = data.draw(st.lists(pattern, min_size=1, max_size=40))
    x = np.array(words, dtype=np.uint32 if bits == 32 else np.uint64).view(dtype)
    finite = bool(np.isfinite(x).all())
    expected = float(np.abs(x).max()) if finite else math.inf
    assert _largest_magnitude(x) == expected
    assert _largest_magnitude(x.reshape(1, -1)) == expected
    if x.size > 2:
        assert _largest_magnitude(x[::2]) is None  # not contiguous: numpy's path
    assert _largest_magnitude(x.astype(np.dtype(dtype).newbyteorder(">"))) is None
    if finite:
        check_finite(x, "x")
    else:
        with pytest.raises(ValueError, match="x must be finite"):
            check_finite(x, "x")


def _outcome(call):
    try:
        out = call()
    except (TypeError, ValueError) as error:
        return type(error), str(error)
    return out


@settings(max_examples=300, deadline=None)
@given(dtype=st.sampled_from([np.float16, np.float32, np.float64, np.int64, np.bool_,
                              np.complex64]),
       layout=st.sampled_from(["C", "strided", "big-endian"]), dim=st.none() | st.integers(1, 9),
       data=st.data())
def test_the_distance_check_in_one_pass_equals_the_two_checks(dtype, layout, dim, data):
    """``as_distance_array`` against ``as_float_array`` to float32 followed by
    ``check_distance_range``: the same array, or the same error and message, for values
    around every bound (NaN, Inf, beyond float32, distances that overflow) in every layout."""
    bound = math.sqrt(float(np.finfo(np.float32).max) / 4.0)  # dim 1 (the largest bound)
    special = st.sampled_from([0.0, -0.0, 1.5, math.nan, math.inf, -math.inf, bound,
                               bound * 1.0001, bound / 3.0, 3.5e38, 3.5e38 * 0.9, 1e39, -1e300])
    values = data.draw(st.lists(special | st.floats(allow_nan=False, width=64), min_size=0,
                                max_size=24))
    with np.errstate(all="ignore"):
        x = np.array(values, dtype=np.float64).reshape(-1, 2 if len(values) % 2 == 0 else 1)
        x = x.astype(dtype)
    if layout == "strided":
        x = np.repeat(x, 2, axis=0)[::2]
    elif layout == "big-endian":
        x = x.astype(x.dtype.newbyteorder(">"))

    def two_checks():
        a = as_float_array(x, "x", dtype=np.float32)
        check_distance_range(a, "x", dim)
        return a

    want = _outcome(two_checks)
    got = _outcome(lambda: as_distance_array(x, "x", dim))
    if isinstance(want, tuple):
        assert got == want
    else:
        assert got.dtype == np.float32 and got.dtype.isnative
        np.testing.assert_array_equal(got, want)
