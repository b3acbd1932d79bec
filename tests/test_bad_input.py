"""Bad input thrown at every public entry point. For each entry point and argument this file
writes down what must happen (KINDS, EMPTY, EXTRA_AXIS below), and each call must do exactly
that: either refuse with a ValueError or TypeError that has a message, or give a stated
answer. Nothing else passes.

For each entry point hypothesis picks one argument and one mutation of it:
- value-preserving (the other byte order, a strided view, an unaligned buffer): the answer
  equals the clean input's, exactly;
- another dtype: accepted and converted by value where the argument's kind says so (the answer
  equals the call on the mutated values converted back to the clean dtype), refused otherwise;
- complex, object or string arrays, Python lists, NaN: refused; +-Inf: refused except where a
  sign is all that is read (``pack_bits``);
- an empty axis, one axis more or one fewer: refused except where EMPTY or EXTRA_AXIS states
  the answer (zero rows in, zero rows out; a batch of one problem).
"""

from __future__ import annotations

import functools
import sys
from types import SimpleNamespace

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
_CODES = qk.pack_bits(_X)
_LABELS = np.arange(300) % 5
_SCORES = _RNG.standard_normal((2, 6, 8))
_S2 = _RNG.standard_normal((6, 8))
_PQ_CODES = _RNG.integers(0, 16, (30, 2)).astype(np.uint8)
_SPARSE_CODES = np.stack([np.arange(6) % 8, (np.arange(6) + 3) % 8], 1)


@functools.cache
def _fitted() -> SimpleNamespace:
    """The trained and filled objects that entries call, made on first use rather than at
    import: pytest-xdist imports this file in every worker, and each would compile their
    kernels at the same moment."""
    pq = qk.ProductQuantizer(8, 2, 4).train(_X)
    return SimpleNamespace(
        pq=pq, table=qk.SparseHashTable(8, 2).add(_X, _X),
        hier=qk.HierarchicalHashTable(8, 2).add(_X, _X[::-1].copy(), _X),
        pq_index=qk.PQIndex(pq).add(_X), binary=qk.BinaryIndex(8).add(_CODES, _X),
        itq=qk.ITQ(4).fit(_X), h2q=qk.HouseholderQuantizer(8).fit(_X, epochs=1))


# name -> (clean arguments, call, whether the arguments are torch tensors)
ENTRIES = {
    "solve_sparse_codes": ([_SCORES[0]], lambda s: qk.solve_sparse_codes(s, 2), False),
    "solve_sparse_codes-batched": ([_SCORES], lambda s: qk.solve_sparse_codes(s, 2), False),
    "sparse_code_objective": ([_SCORES[0], _SPARSE_CODES],
                              qk.sparse_code_objective, False),
    "solve_hierarchical_codes": ([_SCORES[0], _S2],
                                 lambda a, b: qk.solve_hierarchical_codes(a, b, 2), False),
    "SparseHashTable.add": ([_X[:40], _X[:40]],
                            lambda a, e: qk.SparseHashTable(8, 2).add(a, e).search(
                                _X[:5], _X[:5], 4), False),
    "SparseHashTable.search": ([_X[:20], _X[:20], np.arange(20)[:, None]],
                               lambda a, e, x: _fitted().table.search(a, e, 5, exclude=x), False),
    "SparseHashTable.add_codes": ([np.stack([np.arange(40) % 8, (np.arange(40) + 3) % 8], 1),
                                   _X[:40]],
                                  lambda c, e: qk.SparseHashTable(8, 2).add_codes(c, e).search(
                                      _X[:5], _X[:5], 4), False),
    "HierarchicalHashTable.search": ([_X[:10], _X[:10], _X[:10]],
                                     lambda a, b, e: _fitted().hier.search(a, b, e, 5), False),
    "ProductQuantizer.train": ([_X], lambda x: qk.ProductQuantizer(8, 2, 4).train(x).codebooks,
                               False),
    "ProductQuantizer.encode": ([_X[:30]], lambda x: _fitted().pq.encode(x), False),
    "ProductQuantizer.decode": ([_PQ_CODES], lambda c: _fitted().pq.decode(c), False),
    "PQIndex.add": ([_X[:50]], lambda x: qk.PQIndex(_fitted().pq).add(x).search(_X[:4], 3), False),
    "PQIndex.search": ([_X[:20]], lambda q: _fitted().pq_index.search(q, 5), False),
    "pack_bits": ([_X[:20]], qk.pack_bits, False),
    "unpack_bits": ([_CODES[:20]], lambda c: qk.unpack_bits(c, 8), False),
    "hamming_topk": ([_CODES[:10], _CODES], lambda q, d: qk.hamming_topk(q, d, 5), False),
    "hamming_topk-tiebreak": ([_X[:10], _X],
                              lambda qf, df: qk.hamming_topk(_CODES[:10], _CODES, 5,
                                                             tiebreak=(qf, df)), False),
    "BinaryIndex.add": ([_CODES[:40], _X[:40]],
                        lambda c, f: qk.BinaryIndex(8).add(c, f).search(_CODES[:3], 3), False),
    "BinaryIndex.search": ([_CODES[:10], _X[:10]],
                           lambda c, f: _fitted().binary.search(c, 5, f), False),
    "ITQ.fit": ([_X], lambda x: qk.ITQ(4).fit(x).encode(_X[:5]), False),
    "ITQ.encode": ([_X[:20]], lambda x: _fitted().itq.encode(x), False),
    "HouseholderQuantizer.encode": ([_X[:20]], lambda x: _fitted().h2q.encode(x),
                                    False),
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
                lambda z, y: losses.DQNLoss()(z, y, _fitted().pq), True),
    "BinaryKLLoss": ([torch.from_numpy(_X[:20])],
                     lambda x: losses.BinaryKLLoss()(x, torch.Generator().manual_seed(0)), True),
    "RelativeDistanceLoss": ([torch.from_numpy(_X[:20]), torch.from_numpy(_LABELS[:20]),
                              torch.from_numpy(1 - np.eye(5))],
                             lambda h, y, c: losses.RelativeDistanceLoss()(h, y, c), True),
    "HouseholderQuantizationLoss": ([torch.from_numpy(_X[:20])],
                                    losses.HouseholderQuantizationLoss(), True),
}


# How each argument (in ENTRIES' order) treats another dtype:
#   real:   real values: float16/32/64, int32 and bool are converted by value
#   sign:   as real, and +-Inf accepted (pack_bits reads the sign only)
#   index:  integers (codes, ids, labels, counts): int32 converted by value; floats and bools
#           refused
#   packed: packed binary codes, uint8 only (never cast, as FAISS)
#   loss:   a torch loss input: float16/32/64 accepted and computed in that dtype (the answer
#           within that dtype's precision of the clean one); integers and bools refused
#   paired: a loss input that must share its dtype with another one: every change refused
KINDS = {
    "solve_sparse_codes": ("real",),
    "solve_sparse_codes-batched": ("real",),
    "sparse_code_objective": ("real", "index"),
    "solve_hierarchical_codes": ("real", "real"),
    "SparseHashTable.add": ("real", "real"),
    "SparseHashTable.search": ("real", "real", "index"),
    "SparseHashTable.add_codes": ("index", "real"),
    "HierarchicalHashTable.search": ("real", "real", "real"),
    "ProductQuantizer.train": ("real",),
    "ProductQuantizer.encode": ("real",),
    "ProductQuantizer.decode": ("index",),
    "PQIndex.add": ("real",),
    "PQIndex.search": ("real",),
    "pack_bits": ("sign",),
    "unpack_bits": ("packed",),
    "hamming_topk": ("packed", "packed"),
    "hamming_topk-tiebreak": ("real", "real"),
    "BinaryIndex.add": ("packed", "real"),
    "BinaryIndex.search": ("packed", "real"),
    "ITQ.fit": ("real",),
    "ITQ.encode": ("real",),
    "HouseholderQuantizer.encode": ("real",),
    "metrics.precision_at_k": ("index", "index", "index"),
    "metrics.map_at_k": ("index", "index", "index"),
    "metrics.nmi": ("index", "index"),
    "metrics.search_speedup": ("index",),
    "assign_batch_codes": ("loss", "index"),
    "SemiHardTripletLoss": ("loss", "index", "real"),
    "NPairsLoss": ("paired", "paired", "index"),
    "DQNLoss": ("loss", "index"),
    "BinaryKLLoss": ("loss",),
    "RelativeDistanceLoss": ("loss", "index", "real"),
    "HouseholderQuantizationLoss": ("loss",),
}
ACCEPTED_DTYPES = {
    "real": {"float16", "float32", "float64", "int32", "bool"},
    "sign": {"float16", "float32", "float64", "int32", "bool"},
    "index": {"int32"},
    "packed": set(),
    "loss": {"float16", "float32", "float64"},
    "paired": {"float32"},
}
LOSS_TOLERANCE = {"float16": 1e-2, "float32": 0.0, "float64": 1e-5}


def _rows_cut(clean):
    """Zero rows in, zero rows out: the clean answer with no rows."""
    return tuple(x[:0] for x in clean) if isinstance(clean, tuple) else clean[:0]


def _nothing_found(clean):
    """A search of an empty database: every result missing."""
    D, I = clean
    missing = np.iinfo(np.int32).max if D.dtype.kind == "i" else np.inf
    return np.full_like(D, missing), np.full_like(I, -1)


# (entry, argument, axis) whose emptied axis is accepted -> the answer, from the clean one;
# every other empty axis is refused
EMPTY = {
    ("solve_sparse_codes", 0, 0): _rows_cut,
    ("solve_sparse_codes-batched", 0, 0): _rows_cut,
    ("solve_sparse_codes-batched", 0, 1): lambda clean: clean[:, :0],
    ("ProductQuantizer.encode", 0, 0): _rows_cut,
    ("ProductQuantizer.decode", 0, 0): _rows_cut,
    ("PQIndex.add", 0, 0): _nothing_found,
    ("PQIndex.search", 0, 0): _rows_cut,
    ("pack_bits", 0, 0): _rows_cut,
    ("unpack_bits", 0, 0): _rows_cut,
    ("hamming_topk", 0, 0): _rows_cut,
    ("hamming_topk", 1, 0): _nothing_found,
    ("ITQ.encode", 0, 0): _rows_cut,
    ("HouseholderQuantizer.encode", 0, 0): _rows_cut,
    ("HouseholderQuantizationLoss", 0, 0): lambda clean: torch.zeros_like(clean),
    # a table's exclude of shape (Q, 0): nothing excluded
    ("SparseHashTable.search", 2, 1): lambda clean: _fitted().table.search(_X[:20], _X[:20], 5),
}
# one axis more is a batch of one problem where batches are accepted; refused elsewhere
EXTRA_AXIS = {("solve_sparse_codes", 0): lambda clean: clean[None]}
# one axis fewer is refused, except where it is another documented form: a table's exclude of
# shape (Q,) is one array of ids excluded for every query
FEWER_AXES = {("SparseHashTable.search", 2):
              lambda: _fitted().table.search(_X[:20], _X[:20], 5, exclude=np.arange(20))}


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


def _converted_back(clean_arg, bad_arg):
    """The mutated values in the clean argument's array type and dtype."""
    if isinstance(clean_arg, torch.Tensor):
        return bad_arg.to(clean_arg.dtype)
    return np.asarray(bad_arg).astype(clean_arg.dtype)


def expected(name: str, position: int, mutation: str, axis: int, bad: list):
    """``("refused", None)`` or ``(how, answer)``: what the call must do, from KINDS, EMPTY
    and EXTRA_AXIS. ``how`` is "equal" or "close" (a loss computed in another dtype)."""
    args, call, _ = ENTRIES[name]
    kind = KINDS[name][position]
    clean_arg = args[position]
    if mutation in PRESERVING:
        return "equal", _clean(name)
    if mutation in ACCEPTED_DTYPES["real"] | {"complex", "object", "str", "list", "nan"}:
        if mutation not in ACCEPTED_DTYPES[kind]:
            return "refused", None
        if kind == "loss":
            return "close", _clean(name)
        good = list(args)
        good[position] = _converted_back(clean_arg, bad[position])
        return "equal", call(*good)
    if mutation == "inf":
        if kind != "sign":
            return "refused", None
        good = list(args)
        good[position] = _converted_back(clean_arg, bad[position])
        return "equal", call(*good)
    if mutation == "empty-axis":
        rule = EMPTY.get((name, position, axis % max(np.ndim(clean_arg), 1)))
        return ("refused", None) if rule is None else ("equal", rule(_clean(name)))
    if mutation == "extra-axis":
        rule = EXTRA_AXIS.get((name, position))
        return ("refused", None) if rule is None else ("equal", rule(_clean(name)))
    assert mutation == "fewer-axes", mutation
    rule = FEWER_AXES.get((name, position))
    return ("refused", None) if rule is None else ("equal", rule())


def _close(a, b, tolerance, name):
    if isinstance(a, (tuple, list)):
        for x, y in zip(a, b, strict=True):
            _close(x, y, tolerance, name)
        return
    a = a.detach().double().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().double().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    np.testing.assert_allclose(b, a, rtol=tolerance, atol=tolerance, err_msg=name)


@pytest.mark.parametrize("name", list(ENTRIES))
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_bad_input_is_refused_or_answered_as_stated(name, data):
    args, call, is_torch = ENTRIES[name]
    position = data.draw(st.integers(0, len(args) - 1), label="argument")
    mutations = TORCH_MUTATIONS if is_torch else PRESERVING + CHANGING
    mutation = data.draw(st.sampled_from(mutations), label="mutation")
    where = data.draw(st.floats(0, 1), label="where")
    axis = data.draw(st.integers(0, 3), label="axis")
    bad = list(args)
    bad[position] = _mutate(args[position], mutation, where, axis)
    how, answer = expected(name, position, mutation, axis, bad)
    what = f"{name}: {mutation} of argument {position}"
    if how == "refused":
        with pytest.raises((ValueError, TypeError)) as refused:
            call(*bad)
        assert str(refused.value).strip(), f"{what}: {refused.typename} with no message"
        return
    result = call(*bad)
    if how == "equal":
        _same(answer, result, what)
    else:
        _close(answer, result, LOSS_TOLERANCE[mutation], what)


def test_the_declarations_cover_every_argument():
    for name, (args, _, _) in ENTRIES.items():
        assert len(KINDS[name]) == len(args), name
    for name, position, _ in EMPTY:
        assert position < len(ENTRIES[name][0])


def test_every_public_entry_point_is_covered():
    covered = {name.split(".")[0].split("-")[0] for name in ENTRIES}
    public = {"solve_sparse_codes", "sparse_code_objective", "solve_hierarchical_codes",
              "SparseHashTable", "HierarchicalHashTable", "ProductQuantizer", "PQIndex",
              "pack_bits", "unpack_bits", "hamming_topk", "BinaryIndex", "ITQ",
              "HouseholderQuantizer", "metrics"}
    assert public <= covered, public - covered


BAD_SCALARS = [0, -1, 1.5, float("nan"), float("inf"), -float("inf"), 10**12, True, "3", None,
               np.float64(2.0), np.int64(2), torch.tensor(2)]
# name -> (call, domain). ("int", low, high): Python, numpy and 0-d torch integers in
# low..high (high None: no bound), never bools or floats; ("real", low, strict): any finite
# real number >= low (> low where strict), never bools or strings. A value inside the domain
# must be accepted with the answer of the same plain Python number; one outside, refused.
SCALARS = {
    "solve_sparse_codes k": (lambda v: qk.solve_sparse_codes(_SCORES[0], v), ("int", 1, 8)),
    "solve_sparse_codes penalty": (lambda v: qk.solve_sparse_codes(_SCORES[0], 2, v),
                                   ("real", 0, False)),
    "solve_hierarchical_codes k2": (lambda v: qk.solve_hierarchical_codes(_SCORES[0], _S2, v),
                                    ("int", 1, 8)),
    "solve_hierarchical_codes penalty_sibling": (
        lambda v: qk.solve_hierarchical_codes(_SCORES[0], _S2, 2, v), ("real", 0, False)),
    # buckets: int32 bucket ids
    "SparseHashTable num_buckets": (lambda v: qk.SparseHashTable(v, 1), ("int", 1, 2**31 - 1)),
    "SparseHashTable k": (lambda v: qk.SparseHashTable(8, v), ("int", 1, 8)),
    # topk: refused where (queries x topk) results would not fit in memory
    "SparseHashTable.search topk": (lambda v: _fitted().table.search(_X[:3], _X[:3], v),
                                    ("int", 1, 10**9)),
    # compound buckets d * d exact in float32
    "HierarchicalHashTable num_buckets": (lambda v: qk.HierarchicalHashTable(v, 1),
                                          ("int", 1, 46340)),
    "PQIndex.search topk": (lambda v: _fitted().pq_index.search(_X[:3], v), ("int", 1, 10**9)),
    "ProductQuantizer nbits": (lambda v: qk.ProductQuantizer(8, 2, v), ("int", 1, 16)),
    "ProductQuantizer num_subspaces": (lambda v: qk.ProductQuantizer(8, v, 4), ("int", 1, 8)),
    "hamming_topk topk": (lambda v: qk.hamming_topk(_CODES[:3], _CODES, v), ("int", 1, 10**9)),
    "unpack_bits nbits": (lambda v: qk.unpack_bits(_CODES[:3], v), ("int", 1, 8)),
    # int32 distances
    "BinaryIndex nbits": (lambda v: qk.BinaryIndex(v), ("int", 1, 2**31 - 1)),
    "ITQ nbits": (lambda v: qk.ITQ(v).fit(_X), ("int", 1, 8)),
    "HouseholderQuantizer dim": (lambda v: qk.HouseholderQuantizer(v), ("int", 1, 8192)),
    "metrics.precision_at_k k": (lambda v: qk.metrics.precision_at_k(
        np.arange(40).reshape(10, 4), _LABELS, _LABELS[:10], v), ("int", 1, 4)),
    "metrics.search_speedup db_size": (
        lambda v: qk.metrics.search_speedup(np.arange(1, 4), v), ("int", 1, None)),
    "SemiHardTripletLoss margin": (lambda v: losses.SemiHardTripletLoss(margin=v),
                                   ("real", 0, False)),
    "NPairsLoss reg": (lambda v: losses.NPairsLoss(reg=v), ("real", 0, False)),
    "NPairsLoss scale": (lambda v: losses.NPairsLoss(scale=v), ("real", 0, True)),
    "DQNLoss pq_weight": (lambda v: losses.DQNLoss(pq_weight=v), ("real", 0, False)),
    "BinaryKLLoss num_target_samples": (lambda v: losses.BinaryKLLoss(num_target_samples=v),
                                        ("int", 1, None)),
    "BinaryKLLoss eps": (lambda v: losses.BinaryKLLoss(eps=v), ("real", 0, True)),
    "RelativeDistanceLoss p": (lambda v: losses.RelativeDistanceLoss(p=v), ("real", 0, True)),
    "assign_batch_codes k": (lambda v: losses.assign_batch_codes(
        torch.from_numpy(_X[:20]), torch.from_numpy(_LABELS[:20]), v), ("int", 1, 8)),
}


# ITQ(None): as many bits as input dimensions; NPairsLoss(scale=None): outputs unnormalised
NONE_MEANS_DEFAULT = {"ITQ nbits", "NPairsLoss scale"}


def _plain(value, domain):
    """``value`` as the plain Python number the domain accepts, or None where it is outside."""
    kind = domain[0]
    if value is None or isinstance(value, (bool, np.bool_, str)):
        return None
    if isinstance(value, torch.Tensor):
        if value.dim() or value.dtype == torch.bool:
            return None
        value = value.item()
    if kind == "int":
        if not isinstance(value, (int, np.integer)):
            return None  # 1.5, 2.0 and nan are not integers
        low, high = domain[1], domain[2]
        value = int(value)
        return value if value >= low and (high is None or value <= high) else None
    value = float(value)
    low, strict = domain[1], domain[2]
    if not np.isfinite(value) or value < low or (strict and value == low):
        return None
    return value


def _summary(result):
    """What a call gave, comparable across calls: arrays as they are, objects by their
    plain attributes (with their types, so that 2 and 2.0 differ)."""
    if isinstance(result, tuple):
        return tuple(_summary(r) for r in result)
    if isinstance(result, torch.Tensor):
        return result.detach().numpy().tolist()
    if isinstance(result, np.ndarray):
        return (result.dtype.str, result.tolist())
    if isinstance(result, (int, float)):
        return (type(result).__name__, result)
    return {k: (type(v).__name__, v) for k, v in vars(result).items()
            if isinstance(v, (int, float, str, bool, type(None)))}


@pytest.mark.parametrize("name", list(SCALARS))
def test_bad_scalars_are_refused_or_taken_as_the_number(name):
    call, domain = SCALARS[name]
    for value in BAD_SCALARS:
        if value is None and name in NONE_MEANS_DEFAULT:
            continue
        plain = _plain(value, domain)
        if plain is None:
            with pytest.raises((ValueError, TypeError)) as refused:
                call(value)
            assert str(refused.value).strip(), f"{name}={value!r} raised with no message"
        else:
            assert _summary(call(value)) == _summary(call(plain)), (name, value)


def test_the_scalar_domains_are_what_the_classes_keep():
    """A spot check of _summary: the attribute a constructor keeps is the plain number."""
    assert _summary(qk.BinaryIndex(np.int64(16)))["nbits"] == ("int", 16)
    assert _summary(losses.SemiHardTripletLoss(margin=torch.tensor(2)))["margin"] == (
        "float", 2.0)
