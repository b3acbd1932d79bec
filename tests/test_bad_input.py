"""Bad input thrown at every public entry point: each call either raises a ValueError or
TypeError that says what was wrong, or gives the same answer as the clean input.

For each entry point hypothesis picks one argument and one mutation of it:
- value-preserving: the other byte order, a strided (non-contiguous) view, an unaligned buffer
  -> the answer must equal the clean one, exactly;
- value-changing: another dtype (float16/32/64, int, bool, complex, object, string), NaN or
  +-Inf at a random position, an empty axis, one axis more or less, a Python list
  -> a clean ValueError/TypeError with a message, or a result (never another exception, a
  crash or a hang). NaN must always be refused where the argument holds real values.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qkernels as qk
from qkernels import losses

PRESERVING = ("byteswap", "strided", "unaligned")
CHANGING = ("float16", "float32", "float64", "int32", "bool", "complex", "object", "str",
            "nan", "inf", "empty-axis", "extra-axis", "fewer-axes", "list")
TORCH_MUTATIONS = ("strided", "float16", "float32", "float64", "int32", "bool", "complex",
                   "nan", "inf", "empty-axis", "extra-axis", "fewer-axes", "list")


def _rng():
    return np.random.default_rng(7)


_RNG = _rng()
_X = _RNG.standard_normal((300, 8)).astype(np.float32)
_PQ = qk.ProductQuantizer(8, 2, 4).train(_X)
_CODES = qk.pack_bits(_X)
_TABLE = qk.SparseHashTable(8, 2).add(_X, _X)
_HIER = qk.HierarchicalHashTable(8, 2).add(_X, _X[::-1].copy(), _X)
_PQINDEX = qk.PQIndex(_PQ).add(_X)
_BINARY = qk.BinaryIndex(8).add(_CODES, _X)
_ITQ = qk.ITQ(4).fit(_X)
_H2Q = qk.HouseholderQuantizer(8).fit(_X, epochs=1)
_LABELS = np.arange(300) % 5
_SCORES = _RNG.standard_normal((2, 6, 8))
_S2 = _RNG.standard_normal((6, 8))

# name -> (clean arguments, call, whether the arguments are torch tensors)
ENTRIES = {
    "solve_sparse_codes": ([_SCORES[0]], lambda s: qk.solve_sparse_codes(s, 2), False),
    "solve_sparse_codes-batched": ([_SCORES], lambda s: qk.solve_sparse_codes(s, 2), False),
    "sparse_code_objective": ([_SCORES[0], qk.solve_sparse_codes(_SCORES[0], 2)],
                              qk.sparse_code_objective, False),
    "solve_hierarchical_codes": ([_SCORES[0], _S2],
                                 lambda a, b: qk.solve_hierarchical_codes(a, b, 2), False),
    "SparseHashTable.add": ([_X[:40], _X[:40]],
                            lambda a, e: qk.SparseHashTable(8, 2).add(a, e).search(
                                _X[:5], _X[:5], 4), False),
    "SparseHashTable.search": ([_X[:20], _X[:20], np.arange(20)],
                               lambda a, e, x: _TABLE.search(a, e, 5, exclude_ids=x), False),
    "SparseHashTable.add_codes": ([np.stack([np.arange(40) % 8, (np.arange(40) + 3) % 8], 1),
                                   _X[:40]],
                                  lambda c, e: qk.SparseHashTable(8, 2).add_codes(c, e).search(
                                      _X[:5], _X[:5], 4), False),
    "HierarchicalHashTable.search": ([_X[:10], _X[:10], _X[:10]],
                                     lambda a, b, e: _HIER.search(a, b, e, 5), False),
    "ProductQuantizer.train": ([_X], lambda x: qk.ProductQuantizer(8, 2, 4).train(x).codebooks,
                               False),
    "ProductQuantizer.encode": ([_X[:30]], _PQ.encode, False),
    "ProductQuantizer.decode": ([_PQ.encode(_X[:30])], _PQ.decode, False),
    "PQIndex.add": ([_X[:50]], lambda x: qk.PQIndex(_PQ).add(x).search(_X[:4], 3), False),
    "PQIndex.search": ([_X[:20]], lambda q: _PQINDEX.search(q, 5), False),
    "pack_bits": ([_X[:20]], qk.pack_bits, False),
    "unpack_bits": ([_CODES[:20]], lambda c: qk.unpack_bits(c, 8), False),
    "hamming_topk": ([_CODES[:10], _CODES], lambda q, d: qk.hamming_topk(q, d, 5), False),
    "hamming_topk-tiebreak": ([_X[:10], _X],
                              lambda qf, df: qk.hamming_topk(_CODES[:10], _CODES, 5,
                                                             tiebreak=(qf, df)), False),
    "BinaryIndex.add": ([_CODES[:40], _X[:40]],
                        lambda c, f: qk.BinaryIndex(8).add(c, f).search(_CODES[:3], 3), False),
    "BinaryIndex.search": ([_CODES[:10], _X[:10]], lambda c, f: _BINARY.search(c, 5, f), False),
    "ITQ.fit": ([_X], lambda x: qk.ITQ(4).fit(x).encode(_X[:5]), False),
    "ITQ.encode": ([_X[:20]], _ITQ.encode, False),
    "HouseholderQuantizer.encode": ([_X[:20]], _H2Q.encode, False),
    "metrics.precision_at_k": ([np.arange(40).reshape(10, 4), _LABELS, _LABELS[:10]],
                               lambda i, d, q: qk.metrics.precision_at_k(i, d, q, 4), False),
    "metrics.map_at_k": ([np.arange(40).reshape(10, 4), _LABELS, _LABELS[:10]],
                         lambda i, d, q: qk.metrics.map_at_k(i, d, q, 4), False),
    "metrics.nmi": ([np.arange(300) % 7, _LABELS], qk.metrics.nmi, False),
    "metrics.search_speedup": ([np.arange(1, 11)],
                               lambda c: qk.metrics.search_speedup(c, 300), False),
    "assign_batch_codes": ([torch.from_numpy(_X[:20]), torch.from_numpy(_LABELS[:20])],
                           lambda a, y: losses.assign_batch_codes(a, y, 2), True),
    "SemiHardTripletLoss": ([torch.from_numpy(_X[:20]), torch.from_numpy(_LABELS[:20]),
                             torch.from_numpy((_X[:20] > 0).astype(np.float32))],
                            losses.SemiHardTripletLoss(), True),
    "NPairsLoss": ([torch.from_numpy(_X[:10]), torch.from_numpy(_X[10:20]),
                    torch.from_numpy(_LABELS[:10])], losses.NPairsLoss(), True),
    "DQNLoss": ([torch.from_numpy(_X[:20]), torch.from_numpy(_LABELS[:20])],
                lambda z, y: losses.DQNLoss()(z, y, _PQ), True),
    "BinaryKLLoss": ([torch.from_numpy(_X[:20])],
                     lambda x: losses.BinaryKLLoss()(x, torch.Generator().manual_seed(0)), True),
    "RelativeDistanceLoss": ([torch.from_numpy(_X[:20]), torch.from_numpy(_LABELS[:20]),
                              torch.from_numpy(1 - np.eye(5))],
                             lambda h, y, c: losses.RelativeDistanceLoss()(h, y, c), True),
    "HouseholderQuantizationLoss": ([torch.from_numpy(_X[:20])],
                                    losses.HouseholderQuantizationLoss(), True),
}


def _swapped(x: np.ndarray) -> np.ndarray:
    return x.astype(x.dtype.newbyteorder(">" if sys.byteorder == "little" else "<"))


def _strided(x):
    if isinstance(x, torch.Tensor):
        wide = torch.zeros((*x.shape[:-1], 2 * x.shape[-1]), dtype=x.dtype) if x.dim() else x
        if x.dim() == 0:
            return x
        wide[..., ::2] = x
        return wide[..., ::2]
    wide = np.zeros((*x.shape[:-1], 2 * x.shape[-1]), dtype=x.dtype) if x.ndim else x
    if x.ndim == 0:
        return x
    wide[..., ::2] = x
    return wide[..., ::2]


def _unaligned(x: np.ndarray) -> np.ndarray:
    buffer = bytearray(x.nbytes + 1)
    out = np.frombuffer(buffer, dtype=x.dtype, offset=1, count=x.size).reshape(x.shape)
    out[...] = x
    return out


def _mutate(x, mutation: str, where: float, axis_choice: int):
    is_torch = isinstance(x, torch.Tensor)
    a = x.numpy() if is_torch else x
    if mutation == "byteswap":
        out = _swapped(a)
    elif mutation == "strided":
        return _strided(x)
    elif mutation == "unaligned":
        out = _unaligned(a)
    elif mutation in ("float16", "float32", "float64", "int32", "bool", "complex"):
        out = a.astype(np.complex64 if mutation == "complex" else mutation)
    elif mutation == "object":
        out = a.astype(object)
    elif mutation == "str":
        out = a.astype(str)
    elif mutation in ("nan", "inf"):
        out = a.astype(np.float64 if a.dtype.kind != "f" else a.dtype)
        if out.size:
            out.reshape(-1)[int(where * out.size) % out.size] = (
                np.nan if mutation == "nan" else -np.inf)
    elif mutation == "empty-axis":
        axis = axis_choice % max(a.ndim, 1)
        out = np.take(a, np.arange(0), axis=axis) if a.ndim else a
    elif mutation == "extra-axis":
        out = a[None]
    elif mutation == "fewer-axes":
        out = a.reshape(-1) if a.ndim > 1 else a[:1].reshape(())
    elif mutation == "list":
        return a.tolist()
    else:
        raise AssertionError(mutation)
    if is_torch and out.dtype.kind not in "OU":
        return torch.from_numpy(np.ascontiguousarray(out))
    return out


def _same(a, b, name):
    if isinstance(a, (tuple, list)):
        assert isinstance(b, (tuple, list)) and len(a) == len(b), name
        for x, y in zip(a, b, strict=True):
            _same(x, y, name)
        return
    if isinstance(a, torch.Tensor):
        a, b = a.detach().numpy(), b.detach().numpy()
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


_CLEAN = {}


def _clean(name):
    if name not in _CLEAN:
        args, call, _ = ENTRIES[name]
        _CLEAN[name] = call(*args)
    return _CLEAN[name]


@pytest.mark.parametrize("name", list(ENTRIES))
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_bad_input_is_refused_clearly_or_answered_as_the_clean_input(name, data):
    args, call, is_torch = ENTRIES[name]
    position = data.draw(st.integers(0, len(args) - 1), label="argument")
    mutations = TORCH_MUTATIONS if is_torch else PRESERVING + CHANGING
    mutation = data.draw(st.sampled_from(mutations), label="mutation")
    where = data.draw(st.floats(0, 1), label="where")
    axis = data.draw(st.integers(0, 3), label="axis")
    bad = list(args)
    bad[position] = _mutate(args[position], mutation, where, axis)
    try:
        result = call(*bad)
    except (ValueError, TypeError) as error:
        assert str(error).strip(), f"{name}: {mutation}: {type(error).__name__}, no message"
        return
    if mutation in PRESERVING:
        _same(_clean(name), result, f"{name}: {mutation} of argument {position}")
    real = np.asarray(args[position]).dtype.kind == "f"
    if mutation == "nan" and real:
        pytest.fail(f"{name}: NaN in argument {position} was accepted")


def test_every_public_entry_point_is_covered():
    covered = {name.split(".")[0].split("-")[0] for name in ENTRIES}
    public = {"solve_sparse_codes", "sparse_code_objective", "solve_hierarchical_codes",
              "SparseHashTable", "HierarchicalHashTable", "ProductQuantizer", "PQIndex",
              "pack_bits", "unpack_bits", "hamming_topk", "BinaryIndex", "ITQ",
              "HouseholderQuantizer", "metrics"}
    assert public <= covered, public - covered


BAD_SCALARS = [0, -1, 1.5, float("nan"), float("inf"), -float("inf"), 10**12, True, "3", None,
               np.float64(2.0), np.int64(2), torch.tensor(2)]
SCALARS = {
    "solve_sparse_codes k": lambda v: qk.solve_sparse_codes(_SCORES[0], v),
    "solve_sparse_codes penalty": lambda v: qk.solve_sparse_codes(_SCORES[0], 2, v),
    "solve_hierarchical_codes k2": lambda v: qk.solve_hierarchical_codes(_SCORES[0], _S2, v),
    "solve_hierarchical_codes penalty_sibling": lambda v: qk.solve_hierarchical_codes(
        _SCORES[0], _S2, 2, v),
    "SparseHashTable num_buckets": lambda v: qk.SparseHashTable(v, 1),
    "SparseHashTable k": lambda v: qk.SparseHashTable(8, v),
    "SparseHashTable.search topk": lambda v: _TABLE.search(_X[:3], _X[:3], v),
    "HierarchicalHashTable num_buckets": lambda v: qk.HierarchicalHashTable(v, 1),
    "PQIndex.search topk": lambda v: _PQINDEX.search(_X[:3], v),
    "ProductQuantizer nbits": lambda v: qk.ProductQuantizer(8, 2, v),
    "ProductQuantizer num_subspaces": lambda v: qk.ProductQuantizer(8, v, 4),
    "hamming_topk topk": lambda v: qk.hamming_topk(_CODES[:3], _CODES, v),
    "unpack_bits nbits": lambda v: qk.unpack_bits(_CODES[:3], v),
    "BinaryIndex nbits": lambda v: qk.BinaryIndex(v),
    "ITQ nbits": lambda v: qk.ITQ(v).fit(_X),
    "HouseholderQuantizer dim": lambda v: qk.HouseholderQuantizer(v),
    "metrics.precision_at_k k": lambda v: qk.metrics.precision_at_k(
        np.arange(40).reshape(10, 4), _LABELS, _LABELS[:10], v),
    "metrics.search_speedup db_size": lambda v: qk.metrics.search_speedup(np.arange(1, 4), v),
    "SemiHardTripletLoss margin": lambda v: losses.SemiHardTripletLoss(margin=v),
    "NPairsLoss reg": lambda v: losses.NPairsLoss(reg=v),
    "NPairsLoss scale": lambda v: losses.NPairsLoss(scale=v),
    "DQNLoss pq_weight": lambda v: losses.DQNLoss(pq_weight=v),
    "BinaryKLLoss num_target_samples": lambda v: losses.BinaryKLLoss(num_target_samples=v),
    "BinaryKLLoss eps": lambda v: losses.BinaryKLLoss(eps=v),
    "RelativeDistanceLoss p": lambda v: losses.RelativeDistanceLoss(p=v),
    "assign_batch_codes k": lambda v: losses.assign_batch_codes(
        torch.from_numpy(_X[:20]), torch.from_numpy(_LABELS[:20]), v),
}


# ITQ(None): as many bits as input dimensions; NPairsLoss(scale=None): outputs unnormalised
NONE_MEANS_DEFAULT = {"ITQ nbits", "NPairsLoss scale"}


@pytest.mark.parametrize("name", list(SCALARS))
def test_bad_scalars_are_refused_clearly_or_accepted_as_numbers(name):
    for value in BAD_SCALARS:
        if value is None and name in NONE_MEANS_DEFAULT:
            continue
        try:
            SCALARS[name](value)
        except (ValueError, TypeError) as error:
            assert str(error).strip(), f"{name}={value!r} raised with no message"
            continue
        # accepted: only a finite number of the right kind may be
        assert value is not None and not isinstance(value, (bool, str)), (name, value)
        number = float(value)
        assert np.isfinite(number) and number >= 0, (name, value)
