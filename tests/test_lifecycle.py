"""The index protocol against a brute-force model: hypothesis interleaves add (with and
without ids), remove_ids, reset, merge_from, a round trip through bytes, reconstruct and
filtered searches, on every index kind, and after each step the index must hold exactly what
tests/reference.py's IndexModel holds and search exactly as the loop references search the
model's items (ids, distances, ties to the item added first, candidate counts)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import qkernels as qk
from tests import reference as ref

TOPK = 5
BUCKETS, K = 6, 2
DIM = 4


def _rows(result):
    return np.array(result, dtype=np.float64)


class Kind:
    """How one index kind is made, fed and checked against the loop references."""

    name = ""

    def make(self):
        raise NotImplementedError

    def payloads(self, rng, n):
        raise NotImplementedError

    def add(self, index, payloads, ids):
        raise NotImplementedError

    def queries(self, rng, q):
        raise NotImplementedError

    def search(self, index, queries, include=None, exclude=None):
        raise NotImplementedError

    def expected(self, items, queries, per_query_exclude=None):
        """(D, I[, counts]) of the loop reference over ``items`` ((id, payload) in order)."""
        raise NotImplementedError

    def reconstructed(self, payload):
        raise NotImplementedError


class Table(Kind):
    name = "table"

    def make(self):
        return qk.SparseHashTable(BUCKETS, K)

    def payloads(self, rng, n):
        act = rng.integers(0, 3, (n, BUCKETS)).astype(np.float64)  # bucket ties
        emb = rng.integers(0, 3, (n, DIM)).astype(np.float32)       # distance ties
        return list(zip(act, emb, strict=True))

    def add(self, index, payloads, ids):
        index.add(np.array([p[0] for p in payloads]).reshape(-1, BUCKETS),
                  np.array([p[1] for p in payloads]).reshape(-1, DIM), ids=ids)

    def queries(self, rng, q):
        return (rng.integers(0, 3, (q, BUCKETS)).astype(np.float64),
                rng.integers(0, 3, (q, DIM)).astype(np.float32))

    def search(self, index, queries, include=None, exclude=None):
        D, I = index.search(*queries, TOPK, include=include, exclude=exclude)
        return D, I, index.candidate_counts

    def expected(self, items, queries, per_query_exclude=None):
        codes = [ref.ranked_buckets(p[0])[:K] for _, p in items]
        return ref.sparse_table_search(codes, [p[1] for _, p in items], [i for i, _ in items],
                                       queries[0], queries[1], K, TOPK, "l2",
                                       per_query_exclude)

    def reconstructed(self, payload):
        return payload[1]


class PQ(Kind):
    """8-bit-free exact scan (nbits = 3) or the 4-bit fast scan, with fixed codebooks."""

    def __init__(self, nbits):
        self.nbits = nbits
        self.name = f"pq{nbits}"
        rng = np.random.default_rng(nbits)
        # integer codewords: many equal distances, ties to the item added first
        self.codebooks = rng.integers(-2, 3, (2, 1 << nbits, 2)).astype(np.float32)

    def make(self):
        pq = qk.ProductQuantizer(4, 2, self.nbits).set_codebooks(self.codebooks)
        return qk.PQIndex(pq)

    def payloads(self, rng, n):
        return list(rng.integers(0, 1 << self.nbits, (n, 2)).astype(np.uint8))

    def add(self, index, payloads, ids):
        index.add_codes(np.array(payloads, dtype=np.uint8).reshape(-1, 2), ids=ids)

    def queries(self, rng, q):
        return (rng.integers(-2, 3, (q, 4)).astype(np.float32),)

    def search(self, index, queries, include=None, exclude=None):
        return index.search(queries[0], TOPK, include=include, exclude=exclude)

    def expected(self, items, queries, per_query_exclude=None):
        codes = [p for _, p in items]
        search = (ref.pq_fastscan_search if self.nbits == 4 else ref.pq_search)
        D, I = search(queries[0], codes, self.codebooks, TOPK)
        ids = [i for i, _ in items]
        return D, [[ids[r] if r >= 0 else -1 for r in row] for row in I]

    def reconstructed(self, payload):
        return np.concatenate([self.codebooks[m, payload[m]] for m in range(2)])


class Binary(Kind):
    name = "binary"

    def make(self):
        return qk.BinaryIndex(12)

    def payloads(self, rng, n):
        return list(qk.pack_bits(rng.integers(0, 2, (n, 12)).astype(np.uint8)))

    def add(self, index, payloads, ids):
        index.add(np.array(payloads, dtype=np.uint8).reshape(-1, 2), ids=ids)

    def queries(self, rng, q):
        return (qk.pack_bits(rng.integers(0, 2, (q, 12)).astype(np.uint8)),)

    def search(self, index, queries, include=None, exclude=None):
        return index.search(queries[0], TOPK, include=include, exclude=exclude)

    def expected(self, items, queries, per_query_exclude=None):
        D, I = ref.hamming_search(queries[0], [p for _, p in items], TOPK)
        ids = [i for i, _ in items]
        return D, [[ids[r] if r >= 0 else -1 for r in row] for row in I]

    def reconstructed(self, payload):
        return payload


def _check_search(kind, index, model, rng, mode):
    queries = kind.queries(rng, 3)
    held = model.ids
    include = exclude = rows = None
    if mode == "include":
        include = np.array(sorted(rng.choice(held, min(len(held), 4), replace=False))
                           if held else [], dtype=np.int64)
        include = np.concatenate([include, [10**6]])  # an id nobody holds: ignored
    elif mode == "exclude" and held:
        exclude = np.array(rng.choice(held, min(len(held), 3), replace=False), dtype=np.int64)
    elif mode == "per-query" and held:
        rows = np.array([rng.choice(held, 2) for _ in range(3)], dtype=np.int64)
        rows[0, 1] = -1  # padding
    got = kind.search(index, queries, include=include, exclude=rows if rows is not None
                      else exclude)
    if rows is not None:  # one query at a time, each over what passes its own row
        for q in range(3):
            one = tuple(a[q:q + 1] for a in queries)
            passing = model.passing(exclude=[i for i in rows[q] if i >= 0])
            want = kind.expected(passing, one)
            for g, w in zip(got, want, strict=False):
                np.testing.assert_array_equal(np.asarray(g)[q], _rows(w)[0])
        return
    want = kind.expected(model.passing(include=include, exclude=exclude), queries)
    for g, w in zip(got, want, strict=False):
        np.testing.assert_array_equal(np.asarray(g, dtype=np.float64), _rows(w))


class Lifecycle(RuleBasedStateMachine):
    kind: Kind

    def __init__(self):
        super().__init__()
        self.index = self.kind.make()
        self.model = ref.IndexModel()
        self.rng = np.random.default_rng(0)

    @rule(n=st.integers(0, 12), given=st.booleans(), seed=st.integers(0, 2**16))
    def add(self, n, given, seed):
        rng = np.random.default_rng(seed)
        payloads = self.kind.payloads(rng, n)
        ids = None
        if given:
            fresh = np.setdiff1d(rng.choice(200, 40, replace=False), self.model.ids)[:n]
            if fresh.shape[0] < n:
                return
            ids = rng.permutation(fresh)
        self.kind.add(self.index, payloads, ids)
        self.model.add(payloads, ids)

    @precondition(lambda self: self.model.ids)
    @rule(seed=st.integers(0, 2**16))
    def add_a_held_id(self, seed):
        rng = np.random.default_rng(seed)
        held = int(rng.choice(self.model.ids))
        with pytest.raises(ValueError, match=f"id {held} is already in the index"):
            self.kind.add(self.index, self.kind.payloads(rng, 1), np.array([held]))

    @rule(seed=st.integers(0, 2**16), share=st.floats(0, 1))
    def remove(self, seed, share):
        rng = np.random.default_rng(seed)
        held = self.model.ids
        chosen = rng.choice(held, int(share * len(held)), replace=False) if held else []
        chosen = np.array(chosen, dtype=np.int64)
        assert self.index.remove_ids(chosen) == self.model.remove(chosen)

    @rule(unknown=st.integers(500, 600))
    def remove_unknown(self, unknown):
        with pytest.raises(ValueError, match=f"id {unknown} is not in the index"):
            self.index.remove_ids(np.array([unknown]))

    @precondition(lambda self: self.model.ids)
    @rule()
    def remove_twice(self):
        held = self.model.ids[0]
        with pytest.raises(ValueError, match=f"ids holds {held} twice"):
            self.index.remove_ids(np.array([held, held]))

    @rule()
    def reset(self):
        self.index.reset()
        self.model.reset()

    @rule(n=st.integers(0, 8), given=st.booleans(), seed=st.integers(0, 2**16))
    def merge(self, n, given, seed):
        rng = np.random.default_rng(seed)
        other, other_model = self.kind.make(), ref.IndexModel()
        payloads = self.kind.payloads(rng, n)
        ids = None
        if given:  # ids this index does not hold
            ids = rng.permutation(np.setdiff1d(np.arange(300, 400), self.model.ids))[:n]
        self.kind.add(other, payloads, ids)
        other_model.add(payloads, ids)
        self.index.merge_from(other)
        self.model.merge(other_model)
        assert other.ntotal == 0

    @rule()
    def round_trip(self):
        self.index = type(self.index).from_bytes(self.index.to_bytes())

    @rule(seed=st.integers(0, 2**16),
          mode=st.sampled_from(["none", "include", "exclude", "per-query"]))
    def search(self, seed, mode):
        _check_search(self.kind, self.index, self.model, np.random.default_rng(seed), mode)

    @precondition(lambda self: self.model.ids)
    @rule(seed=st.integers(0, 2**16))
    def reconstruct(self, seed):
        rng = np.random.default_rng(seed)
        chosen = rng.choice(len(self.model.items), min(3, len(self.model.items)),
                            replace=False)
        ids = np.array([self.model.items[c][0] for c in chosen], dtype=np.int64)
        got = self.index.reconstruct(ids)
        for row, c in zip(got, chosen, strict=True):
            np.testing.assert_array_equal(row, self.kind.reconstructed(self.model.items[c][1]))

    @invariant()
    def holds_what_the_model_holds(self):
        assert self.index.ntotal == len(self.model.items)
        assert self.index.ids.tolist() == self.model.ids
        assert self.index.next_id == self.model.next_id
        assert self.index.default_ids == self.model.default_ids


KINDS = [Table(), PQ(3), PQ(4), Binary()]


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_the_protocol_against_the_model(kind):
    machine = type(f"Lifecycle_{kind.name}", (Lifecycle,), {"kind": kind})
    settings(max_examples=15, stateful_step_count=25, deadline=None,
             suppress_health_check=[HealthCheck.too_slow])(machine)
    machine.TestCase().runTest()


# ------------------------------------------------------------------ refusals

def _binary(n=10, **kwargs):
    rng = np.random.default_rng(0)
    return qk.BinaryIndex(16).add(qk.pack_bits(rng.integers(0, 2, (n, 16)).astype(np.uint8)),
                                  **kwargs)


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: _binary().remove_ids(np.array([3, 99])), ValueError,
     r"id 99 is not in the index \(1 of the 2 ids are not\)"),
    (lambda: _binary().remove_ids(np.array([3, 3])), ValueError, "ids holds 3 twice"),
    (lambda: _binary().remove_ids(np.array([2**63], dtype=np.uint64)), ValueError,
     "outside int64"),
    (lambda: _binary().remove_ids(np.array([1.0])), TypeError, "must hold integers"),
    (lambda: _binary(ids=np.array([2**63 + 1] * 1 + list(range(9)), dtype=np.uint64)),
     ValueError, "outside int64"),
    (lambda: _binary(ids=np.arange(10) - 1), ValueError, "ids holds -1"),
    (lambda: _binary(ids=np.zeros(10, dtype=np.int64)), ValueError, "ids holds 0 twice"),
    (lambda: _binary(ids=np.arange(9)), ValueError, "ids has 9 entries for 10 items"),
    (lambda: _binary().add(_binary().codes[:1], ids=np.array([4])), ValueError,
     "id 4 is already in the index"),
    (lambda: _binary().search(_binary().codes, 3, include=np.array([1]),
                              exclude=np.array([2])), ValueError, "include or exclude, not both"),
    (lambda: _binary().search(_binary().codes, 3, exclude=np.zeros((4, 2), dtype=np.int64)),
     ValueError, "exclude has 4 rows but there are 10 queries"),
    (lambda: _binary().search(_binary().codes, 3, include=np.zeros((10, 2), dtype=np.int64)),
     ValueError, r"include must have shape \(n,\) ids for every query, got shape \(10, 2\)"),
    (lambda: _binary().search(_binary().codes, 3, exclude=np.array([-2])), ValueError,
     "exclude holds -2"),
    (lambda: _binary().merge_from(qk.BinaryIndex(24)), ValueError,
     "differ in nbits: 16 here, 24 there"),
    (lambda: _binary().merge_from(qk.SparseHashTable(4, 1)), TypeError,
     "merge_from takes a BinaryIndex"),
    (lambda: _binary().merge_from(_binary(ids=np.arange(10) + 5)), ValueError,
     "id 5 is in both indexes"),
    (lambda: qk.SparseHashTable(8, 1).merge_from(qk.SparseHashTable(8, 2)), ValueError,
     "differ in k"),
    (lambda: qk.PQIndex(qk.ProductQuantizer(4, 2, 3).set_codebooks(np.zeros((2, 8, 2)))).
     merge_from(qk.PQIndex(qk.ProductQuantizer(4, 2, 3).set_codebooks(np.ones((2, 8, 2))))),
     ValueError, "different codebooks"),
    (lambda: _binary().reconstruct(np.array([42])), ValueError, "id 42 is not in the index"),
    (lambda: qk.BinaryIndex.from_bytes(b"not an index"), ValueError, "not a readable"),
    (lambda: qk.BinaryIndex.from_bytes(_binary().to_bytes()[:-20]), ValueError,
     "not a readable"),
    (lambda: qk.PQIndex.from_bytes(_binary().to_bytes()), ValueError,
     "not a qkernels PQIndex file"),
    (lambda: qk.BinaryIndex.from_bytes("text"), TypeError, "from_bytes takes bytes"),
    (lambda: qk.Index(), TypeError, "the protocol the four indexes share"),
])
def test_the_protocol_refuses_clearly(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_a_merge_leaves_the_other_index_empty_and_reusable():
    index, other = _binary(), _binary()
    index.merge_from(other)
    assert index.ids.tolist() == list(range(20)) and other.ntotal == 0 and other.next_id == 0
    other.add(index.codes[:2])
    assert other.ids.tolist() == [0, 1]
