"""The index protocol against a brute-force model: hypothesis interleaves add (with and
without ids), remove_ids, reset, merge_from, a round trip through bytes, reconstruct and
filtered searches, on every index kind, and after each step the index must hold exactly what
tests/reference.py's IndexModel holds and search exactly as the loop references search the
model's items (ids, distances, ties to the item added first, candidate counts)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
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

    def expected(self, items, queries, per_query_exclude=None, exact=False):
        """(D, I[, counts]) of the loop reference over ``items`` ((id, payload) in order);
        ``exact``: as the GPU path answers where the CPU would approximate (the fast scan)."""
        raise NotImplementedError

    def reconstructed(self, payload):
        raise NotImplementedError


class TableKind(Kind):
    """The hash tables: their search also gives the candidate counts."""

    def search(self, index, queries, include=None, exclude=None):
        D, I = index.search(*queries, TOPK, include=include, exclude=exclude)
        return D, I, index.candidate_counts


class Table(TableKind):
    """A SparseHashTable keeping float32 or float16 embeddings or PQ codes of more than eight
    bits (uint16, which the re-ranking must not take for float16 bit patterns)."""

    def __init__(self, storage="float32", metric="l2"):
        self.storage, self.metric = storage, metric
        self.name = "table" if storage == "float32" else f"table-{storage}-{metric}"
        if storage == "pq9":
            # 512 distinct integer codewords a subspace, so that a codeword's own vector
            # encodes to it alone (distance 0, every other at least 1)
            rng = np.random.default_rng(9)
            grid = np.stack(np.meshgrid(np.arange(-11, 12), np.arange(-11, 12)), -1)
            grid = grid.reshape(-1, 2).astype(np.float32)
            self.codebooks = np.stack([grid[rng.permutation(grid.shape[0])[:512]]
                                       for _ in range(DIM // 2)])

    def make(self):
        storage = self.storage
        if storage == "pq9":
            storage = qk.ProductQuantizer(DIM, DIM // 2, 9).set_codebooks(self.codebooks)
        return qk.SparseHashTable(BUCKETS, K, self.metric, storage=storage)

    def payloads(self, rng, n):
        act = rng.integers(0, 3, (n, BUCKETS)).astype(np.float64)  # bucket ties
        if self.storage == "pq9":  # (activations, embedding, its code)
            codes = rng.integers(0, 512, (n, DIM // 2))
            emb = self.codebooks[np.arange(DIM // 2), codes].reshape(n, DIM)
            return list(zip(act, emb, codes, strict=True))
        if self.storage == "float16":  # thirds: rounded to float16, still with ties
            emb = (rng.integers(-6, 7, (n, DIM)) / 3).astype(np.float32)
        else:
            emb = rng.integers(0, 3, (n, DIM)).astype(np.float32)  # distance ties
        return list(zip(act, emb, strict=True))

    def add(self, index, payloads, ids):
        index.add(np.array([p[0] for p in payloads]).reshape(-1, BUCKETS),
                  np.array([p[1] for p in payloads]).reshape(-1, DIM), ids=ids)

    def queries(self, rng, q):
        return (rng.integers(0, 3, (q, BUCKETS)).astype(np.float64),
                rng.integers(-2, 3, (q, DIM)).astype(np.float32))

    def expected(self, items, queries, per_query_exclude=None, exact=False):
        codes = [ref.ranked_buckets(p[0])[:K] for _, p in items]
        distance = None
        if self.storage == "pq9":
            def distance(q, item):
                return ref.adc_distance(queries[1][q], items[item][1][2], self.codebooks,
                                        self.metric == "ip")
        return ref.sparse_table_search(codes, [self.reconstructed(p) for _, p in items],
                                       [i for i, _ in items], queries[0], queries[1], K, TOPK,
                                       self.metric, per_query_exclude, distance=distance)

    def reconstructed(self, payload):
        if self.storage == "float16":
            return payload[1].astype(np.float16).astype(np.float32)
        return payload[1]


class Hierarchical(TableKind):
    """A HierarchicalHashTable, against the flat table rule over compound buckets ranked in
    the cascade's probe order."""

    name = "hierarchical"
    D = 3

    def make(self):
        return qk.HierarchicalHashTable(self.D, K)

    def payloads(self, rng, n):
        level1 = rng.integers(0, 3, (n, self.D)).astype(np.float64)  # parent ties
        level2 = rng.integers(0, 3, (n, self.D)).astype(np.float64)
        emb = rng.integers(0, 3, (n, DIM)).astype(np.float32)
        return list(zip(level1, level2, emb, strict=True))

    def add(self, index, payloads, ids):
        index.add(*(np.array([p[t] for p in payloads]).reshape(len(payloads), width)
                    for t, width in enumerate((self.D, self.D, DIM))), ids=ids)

    def queries(self, rng, q):
        return (rng.integers(0, 3, (q, self.D)).astype(np.float64),
                rng.integers(0, 3, (q, self.D)).astype(np.float64),
                rng.integers(0, 3, (q, DIM)).astype(np.float32))

    def expected(self, items, queries, per_query_exclude=None, exact=False):
        d = self.D
        codes = [[ref.ranked_buckets(p[0])[0] * d + t for t in ref.ranked_buckets(p[1])[:K]]
                 for _, p in items]
        compound = []  # activations whose ranking is the cascade's probe order
        for level1, level2 in zip(queries[0], queries[1], strict=True):
            order = ref.hierarchical_probe_order(level1, level2)
            row = np.empty(d * d)
            row[order] = -np.arange(d * d, dtype=np.float64)
            assert ref.ranked_buckets(row) == order
            compound.append(row)
        return ref.sparse_table_search(codes, [p[2] for _, p in items], [i for i, _ in items],
                                       compound, queries[2], K, TOPK, "l2",
                                       per_query_exclude)

    def reconstructed(self, payload):
        return payload[2]


class PQ(Kind):
    """PQIndex with fixed codebooks: the exact scan at 3 and 8 bits (uint8 codes) and at 9
    (uint16), the 4-bit fast scan; by squared distance or inner product."""

    def __init__(self, nbits, metric="l2", rerank=None):
        self.nbits, self.metric, self.rerank = nbits, metric, rerank
        self.name = (f"pq{nbits}" + ("" if metric == "l2" else f"-{metric}")
                     + ("" if rerank is None else f"-rerank{rerank}"))
        self.dtype = np.uint8 if nbits <= 8 else np.uint16
        rng = np.random.default_rng(nbits)
        # integer codewords: many equal distances, ties to the item added first
        self.codebooks = rng.integers(-2, 3, (2, 1 << nbits, 2)).astype(np.float32)

    def make(self):
        pq = qk.ProductQuantizer(4, 2, self.nbits).set_codebooks(self.codebooks)
        return qk.PQIndex(pq, self.metric)

    def payloads(self, rng, n):
        return list(rng.integers(0, 1 << self.nbits, (n, 2)).astype(self.dtype))

    def add(self, index, payloads, ids):
        index.add_codes(np.array(payloads, dtype=self.dtype).reshape(-1, 2), ids=ids)

    def queries(self, rng, q):
        return (rng.integers(-2, 3, (q, 4)).astype(np.float32),)

    def search(self, index, queries, include=None, exclude=None):
        return index.search(queries[0], TOPK, rerank=self.rerank, include=include,
                            exclude=exclude)

    def expected(self, items, queries, per_query_exclude=None, exact=False):
        codes = [p for _, p in items]
        if self.nbits == 4 and not exact:
            D, I = ref.pq_fastscan_search(queries[0], codes, self.codebooks, TOPK, self.metric,
                                          self.rerank)
        else:
            D, I = ref.pq_search(queries[0], codes, self.codebooks, TOPK, self.metric)
        ids = [i for i, _ in items]
        return D, [[ids[r] if r >= 0 else -1 for r in row] for row in I]

    def reconstructed(self, payload):
        return np.concatenate([self.codebooks[m, payload[m]] for m in range(2)])


class Binary(Kind):
    """BinaryIndex, ties to the item added first or (``features``) broken by the distance
    between tie-break features."""

    def __init__(self, features=False):
        self.features = features
        self.name = "binary-features" if features else "binary"

    def make(self):
        return qk.BinaryIndex(12)

    def payloads(self, rng, n):
        codes = list(qk.pack_bits(rng.integers(0, 2, (n, 12)).astype(np.uint8)))
        if not self.features:
            return codes
        return list(zip(codes, rng.integers(0, 3, (n, 3)).astype(np.float32), strict=True))

    def add(self, index, payloads, ids):
        if not self.features:
            index.add(np.array(payloads, dtype=np.uint8).reshape(-1, 2), ids=ids)
            return
        index.add(np.array([p[0] for p in payloads], dtype=np.uint8).reshape(-1, 2),
                  np.array([p[1] for p in payloads]).reshape(-1, 3), ids=ids)

    def queries(self, rng, q):
        codes = qk.pack_bits(rng.integers(0, 2, (q, 12)).astype(np.uint8))
        if not self.features:
            return (codes,)
        return codes, rng.integers(0, 3, (q, 3)).astype(np.float32)

    def search(self, index, queries, include=None, exclude=None):
        # (the query features, where there are any, follow topk)
        return index.search(queries[0], TOPK, *queries[1:], include=include, exclude=exclude)

    def expected(self, items, queries, per_query_exclude=None, exact=False):
        if self.features:
            D, I = ref.hamming_search(queries[0], [p[0] for _, p in items], TOPK, queries[1],
                                      [p[1] for _, p in items])
        else:
            D, I = ref.hamming_search(queries[0], [p for _, p in items], TOPK)
        ids = [i for i, _ in items]
        return D, [[ids[r] if r >= 0 else -1 for r in row] for row in I]

    def reconstructed(self, payload):
        return payload[0] if self.features else payload


def _check_search(kind, index, model, rng, mode, device=None):
    """One search of three queries with the filter ``mode`` against the loop reference over
    the model's items; ``device``: the queries and filters as arrays of the cupy stand-in
    (the GPU paths, kernels under the CUDA emulation), the answer checked to come back there."""
    queries = kind.queries(rng, 3)
    held = model.ids
    include = exclude = rows = None
    if mode == "include":
        include = np.array(sorted(rng.choice(held, min(len(held), 4), replace=False))
                           if held else [], dtype=np.int64)
        include = np.concatenate([include, [10**6]])  # an id nobody holds: ignored
    elif mode == "exclude" and held:
        exclude = np.array(rng.choice(held, min(len(held), 3), replace=False), dtype=np.int64)
        exclude = np.concatenate([exclude, [10**6]])  # an id nobody holds: ignored
    elif mode == "per-query" and held:
        rows = np.array([rng.choice(held, 2) for _ in range(3)], dtype=np.int64)
        rows[0, 1] = -1  # padding
        rows[2, 0] = 10**6  # an id nobody holds: ignored
    exclude_given = rows if rows is not None else exclude
    # a fast-scan index answers GPU queries by the exact scan, where they are searched there
    exact = (device is not None and include is None and exclude_given is None
             and bool(model.items))
    if device is None:
        got = kind.search(index, queries, include=include, exclude=exclude_given)
    else:
        def put(a):
            return None if a is None else device.asarray(a)

        got = kind.search(index, tuple(put(a) for a in queries), include=put(include),
                          exclude=put(exclude_given))
        assert all(isinstance(g, device.ndarray) for g in got), [type(g) for g in got]
        got = [device.asnumpy(g) for g in got]
    if rows is not None:  # one query at a time, each over what passes its own row
        for q in range(3):
            one = tuple(a[q:q + 1] for a in queries)
            passing = model.passing(exclude=[i for i in rows[q] if i >= 0])
            want = kind.expected(passing, one)
            for g, w in zip(got, want, strict=False):
                np.testing.assert_array_equal(np.asarray(g)[q], _rows(w)[0])
        return
    want = kind.expected(model.passing(include=include, exclude=exclude), queries,
                         exact=exact)
    for g, w in zip(got, want, strict=False):
        np.testing.assert_array_equal(np.asarray(g, dtype=np.float64), _rows(w))


class Lifecycle(RuleBasedStateMachine):
    kind: Kind
    device = None  # the cupy stand-in where the GPU paths are searched too

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

    @precondition(lambda self: self.device is not None)
    @rule(seed=st.integers(0, 2**16),
          mode=st.sampled_from(["none", "include", "exclude", "per-query"]))
    def search_on_device(self, seed, mode):
        _check_search(self.kind, self.index, self.model, np.random.default_rng(seed), mode,
                      self.device)

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


KINDS = [Table(), Table("float16", "ip"), Table("pq9"), Hierarchical(), PQ(3), PQ(4),
         PQ(4, "ip", rerank=0), PQ(4, rerank=7), PQ(8, "ip"), PQ(9), Binary(),
         Binary(features=True)]


def _run(machine):
    # half the profile's examples (20 in `make test`, 1000 with HYPOTHESIS_PROFILE=thorough)
    settings(max_examples=settings.default.max_examples // 2, stateful_step_count=25,
             deadline=None,
             suppress_health_check=[HealthCheck.too_slow])(machine)
    machine.TestCase().runTest()


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_the_protocol_against_the_model(kind):
    _run(type(f"Lifecycle_{kind.name}", (Lifecycle,), {"kind": kind}))


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 90),
       share=st.sampled_from([0.0, 0.04, 0.1, 0.2, 0.25, 0.6, 1.0]),
       num_queries=st.sampled_from([1, 3, 40]))
def test_include_of_few_or_many_items(kind, seed, n, share, num_queries):
    """``include`` of a share of the items (drawn ids, repeated ones and ids nobody holds):
    the reference's answer over the allowed items. Few allowed items are searched as a
    snapshot of them alone (a table: as bucket lists of them), more through a filter over
    every item: both drawn (many queries and a small share, one query or a large share)."""
    rng = np.random.default_rng(seed)
    index, model = kind.make(), ref.IndexModel()
    payloads = kind.payloads(rng, n)
    ids = rng.permutation(np.arange(5 * n))[:n]
    kind.add(index, payloads, ids)
    model.add(payloads, ids)
    allowed = rng.choice(ids, int(share * n), replace=False)
    include = np.concatenate([allowed, allowed[:2], [5 * n, 10**6]]).astype(np.int64)
    queries = kind.queries(rng, num_queries)
    got = kind.search(index, queries, include=rng.permutation(include))
    want = kind.expected(model.passing(include=include), queries)
    for g, w in zip(got, want, strict=False):
        np.testing.assert_array_equal(np.asarray(g, dtype=np.float64), _rows(w))


@pytest.mark.emulated
@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_the_protocol_on_the_gpu_paths(kind, standin, monkeypatch):
    """The same, with searches of device arrays too (tests/cupy_standin.py): the GPU paths
    of every index kind, or their fall-back to the host where a search is not done there,
    after any sequence of changes, equal to the loop references."""
    from tests import cupy_standin

    # the emulation runs every CUDA thread; the kernels at other sizes are test_emulated's
    monkeypatch.setattr(qk.config, "GPU_THREADS_PER_BLOCK", 64)
    _run(type(f"Lifecycle_{kind.name}_gpu", (Lifecycle,),
              {"kind": kind, "device": cupy_standin.module}))


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


def test_features_belong_to_the_items_held():
    """Whether a BinaryIndex has tie-break features is a property of its items: an index
    emptied by remove_ids takes codes with or without them (of any dimension), as a new or
    reset one does, and accepts query features while empty; one holding items refuses a mix."""
    codes = _binary().codes
    features = np.arange(30, dtype=np.float32).reshape(10, 3)
    index = qk.BinaryIndex(16).add(codes, features)
    with pytest.raises(ValueError, match="features were given with the earlier codes"):
        index.add(codes[:1])
    with pytest.raises(ValueError, match="features have dimension 2; earlier ones 3"):
        index.add(codes[:1], features[:1, :2])
    index.remove_ids(index.ids)
    assert index.features is None
    D, I = index.search(codes[:2], 3, features[:2])  # nothing to break ties between
    assert (I == -1).all() and (D == np.iinfo(np.int32).max).all()
    assert (index.tiebreak_keys(features[:2], I) == np.inf).all()  # (a sharded merge's hook)
    index.add(codes[:2])  # no features now
    assert index.features is None
    with pytest.raises(ValueError, match="features were not given with the earlier codes"):
        index.add(codes[:1], features[:1])
    with pytest.raises(ValueError, match="query_features need features added"):
        index.search(codes[:2], 3, features[:2])
    index.remove_ids(index.ids)
    index.add(codes[:2], features[:2, :2])  # features again, of another dimension
    np.testing.assert_array_equal(index.features, features[:2, :2])
    with pytest.raises(ValueError, match="one index holds tie-break features and the other"):
        index.merge_from(qk.BinaryIndex(16).add(codes[:1]))
    emptied = qk.BinaryIndex(16).add(codes[:1], features[:1])
    emptied.remove_ids(emptied.ids)
    index.merge_from(emptied)  # an empty index has no features to disagree on
    assert index.ntotal == 2


def test_a_pq_table_merged_into_an_empty_one_keeps_its_dimension():
    """A table keeping PQ codes learns nothing of its dimension from a merge (the codes have
    one column a sub-quantizer): merged into an empty table it still searches and adds
    vectors of the quantizer's dimension."""
    rng = np.random.default_rng(0)
    pq = qk.ProductQuantizer(8, 4, 9).train(rng.standard_normal((600, 8)).astype(np.float32))
    act, emb = rng.standard_normal((20, 6)), rng.standard_normal((20, 8)).astype(np.float32)
    table = qk.SparseHashTable(6, 2, storage=pq)
    table.merge_from(qk.SparseHashTable(6, 2, storage=pq).add(act, emb))
    assert table.dim == 8
    table.add(act[:3], emb[:3])
    want = qk.SparseHashTable(6, 2, storage=pq).add(np.concatenate([act, act[:3]]),
                                                    np.concatenate([emb, emb[:3]]))
    for a, b in zip(table.search(act, emb, 4), want.search(act, emb, 4), strict=True):
        np.testing.assert_array_equal(a, b)
