"""SparseHashTable: identical (D, I) and candidate counts to the loop reference."""

import numba
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qkernels as qk
from qkernels import _simd
from qkernels.index import _table_cpu
from tests import reference as ref


@numba.njit
def _widen(bits, out):
    _simd.widen_half(bits, out)


@pytest.mark.parametrize("length", [0, 1, 15, 16, 17, 64, 1 << 16])
def test_float16_rows_widen_exactly(length):
    """The float16 re-ranking rows' widening equals numpy's conversion to the bit, every
    pattern (subnormals, infinities, NaN payloads, both zeros) in a row of each length, from
    the bits as uint16 and as int16 (as the table's scan reads them)."""
    patterns = np.random.default_rng(length).permutation(1 << 16).astype(np.uint16)
    for start in range(0, 1 << 16, max(length, 1)):
        bits = patterns[start:start + length]  # (the last row may be shorter)
        expected = bits.view(np.float16).astype(np.float32)
        for as_read in (bits, bits.view(np.int16)):
            out = np.full(bits.shape[0] + 3, 7.0, dtype=np.float32)
            _widen(as_read, out)
            np.testing.assert_array_equal(out[:-3].view(np.uint32), expected.view(np.uint32))
            assert (out[-3:] == 7.0).all()  # nothing written beyond the row


def clustered(rng, n, num_buckets, dim, num_classes=6, integer_activations=False):
    """Items from Gaussian classes; each class favours a few buckets, as learned codes do."""
    labels = rng.integers(0, num_classes, n)
    centers = rng.standard_normal((num_classes, dim)) * 3
    embeddings = (centers[labels] + rng.standard_normal((n, dim))).astype(np.float32)
    favoured = rng.standard_normal((num_classes, num_buckets)) * 0.3
    for c in range(num_classes):
        favoured[c, rng.choice(num_buckets, min(3, num_buckets), replace=False)] += 2.0
    activations = favoured[labels] + rng.standard_normal((n, num_buckets)) * 0.5
    if integer_activations:  # ties everywhere
        activations = np.round(activations)
    return activations, embeddings


@numba.njit
def _distances(query, row_a, row_b):
    return (_simd.sq_l2_f32_pair(query, row_a, row_b), _simd.sq_l2_f32(query, row_a),
            _simd.sq_l2_f32(query, row_b), _simd.dot_f32_pair(query, row_a, row_b),
            _simd.dot_f32(query, row_a), _simd.dot_f32(query, row_b))


@given(st.integers(0, 2**32 - 1), st.integers(1, 70))
def test_two_row_distances_equal_one_row_ones_to_the_bit(seed, dim):
    """The scan's two-item distances (two chains side by side) against one-item ones and the
    lane arithmetic of the reference, bit for bit, for every length (the tails included)."""
    rng = np.random.default_rng(seed)
    query, row_a, row_b = (rng.standard_normal(dim).astype(np.float32) * 10 for _ in range(3))
    l2_pair, l2_a, l2_b, ip_pair, ip_a, ip_b = _distances(query, row_a, row_b)
    bits = lambda *x: np.array(x, dtype=np.float32).view(np.int32).tolist()  # noqa: E731
    assert bits(*l2_pair) == bits(l2_a, l2_b) == bits(ref.lane_distance(query, row_a, False),
                                                      ref.lane_distance(query, row_b, False))
    assert bits(*ip_pair) == bits(ip_a, ip_b) == bits(-ref.lane_distance(query, row_a, True),
                                                      -ref.lane_distance(query, row_b, True))


def reference_codes(activations, k):
    return [ref.ranked_buckets(row)[:k] for row in activations]


@numba.njit
def _ranked_row(dists, rows, items, width, topk, gated):
    """Candidates into one ranked row as the probe does (``gated``: only those below the
    ``topk``-th key); the keys, the items and the keys' distances."""
    keys = np.full(width, _simd.RANK_EMPTY)
    kept = np.full(width, -1, dtype=np.int64)
    for i in range(dists.shape[0]):
        key = _simd.rank_key(dists[i], rows[i])
        if not gated or key < keys[topk - 1]:
            _simd.insert_ranked(keys, kept, key, items[i])
    decoded = np.empty(width, dtype=np.float32)
    for i in range(width):
        decoded[i] = _simd.ranked_distance(keys[i])
    return keys, kept, decoded


_AWKWARD = np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, -1e-45,
                     3.4e38, -3.4e38, 0.5, 2.0], dtype=np.float32)


@given(st.integers(0, 2**32 - 1), st.integers(0, 60), st.sampled_from([8, 16, 24, 32]),
       st.integers(1, 32), st.booleans())
def test_ranked_rows_equal_the_sorted_reference(seed, count, width, topk, gated):
    rng = np.random.default_rng(seed)
    topk = min(topk, width)
    # ties everywhere: a few awkward values (signed zeros, infinities, NaN, subnormals) and a
    # few ordinary ones, over distinct rows as wide as 31 bits
    pool = np.concatenate([_AWKWARD, rng.standard_normal(4).astype(np.float32)])
    dists = pool[rng.integers(0, pool.shape[0], count)]
    rows = rng.choice(2**31 - 1, count, replace=False).astype(np.int32)
    items = rng.integers(0, 2**40, count)
    keys, kept, decoded = _ranked_row(dists, rows, items, width, topk, gated)
    # ungated, the whole row is the sorted prefix; gated, its first topk entries
    filled = min(count, topk if gated else width)
    entries = list(zip(dists.tolist(), rows.tolist(), items.tolist(), strict=True))
    want = ref.ranked_top(entries, filled)
    assert kept[:filled].tolist() == [item for _, _, item in want]
    assert (keys[filled:topk] == _simd.RANK_EMPTY).all()
    assert (np.diff(keys[:filled].astype(object)) > 0).all()  # distinct keys, ascending
    for got, (d, _, _) in zip(decoded[:filled], want, strict=True):
        if np.isnan(d):
            assert np.isnan(got)
        else:  # a zero comes back as +0.0, anything else to the bit
            assert np.float32(got).tobytes() == np.float32(0.0 if d == 0 else d).tobytes()


def assert_reference_answer(table, D, I, want):
    """A search's ``D``, ``I`` and the table's candidate counts equal the reference's
    ``want`` (``sparse_table_search``'s lists)."""
    rD, rI, rcounts = want
    np.testing.assert_array_equal(I, np.array(rI, dtype=np.int64).reshape(I.shape))
    np.testing.assert_array_equal(D, np.array(rD, dtype=np.float32).reshape(D.shape))
    np.testing.assert_array_equal(table.candidate_counts, rcounts)


def assert_same(table, db_act, db_emb, db_ids, q_act, q_emb, topk, exclude=None):
    rows = None if exclude is None else (exclude[:, None] if exclude.ndim == 1 else exclude)
    D, I = table.search(q_act, q_emb, topk, exclude=rows)
    assert_reference_answer(table, D, I, ref.sparse_table_search(
        reference_codes(db_act, table.k), db_emb, db_ids, q_act, q_emb, table.k, topk,
        table.metric, exclude))
    return D, I


@given(st.integers(0, 2**32 - 1), st.integers(0, 30), st.integers(1, 40), st.integers(1, 12),
       st.sampled_from([np.float32, np.float64]), st.sampled_from(["ties", "float", "zeros"]))
def test_bucket_choice_equals_the_sorted_reference(seed, rows, d, k, dtype, values):
    """The buckets an item or a query takes (vectorised maxima up to k = 8, an insertion
    beyond): largest first, lower index first on ties, -0.0 tied with 0.0, both float types."""
    k = min(k, d)
    rng = np.random.default_rng(seed)
    if values == "ties":
        act = rng.integers(-2, 3, (rows, d))
    elif values == "float":
        act = rng.standard_normal((rows, d)) * 10.0 ** rng.integers(-30, 30, (rows, d))
    else:  # ReLU outputs: zeros of both signs, and the smallest subnormals
        act = rng.choice([0.0, -0.0, 1.0, 1e-45, -1e-45], (rows, d))
    act = act.astype(dtype)
    out = np.full((rows, k), -1)
    _table_cpu.topk_rows(act, k, out)
    for i in range(rows):
        assert out[i].tolist() == ref.top_k(act[i].tolist(), k)


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 120),
    num_buckets=st.integers(1, 24),
    dim=st.integers(1, 19),
    k=st.integers(1, 4),
    topk=st.integers(1, 30),
    metric=st.sampled_from(["l2", "ip"]),
    integer_activations=st.booleans(),
)
def test_search_equals_the_reference(seed, n, num_buckets, dim, k, topk, metric,
                                     integer_activations):
    rng = np.random.default_rng(seed)
    k = min(k, num_buckets)
    db_act, db_emb = clustered(rng, n, num_buckets, dim, integer_activations=integer_activations)
    q_act, q_emb = clustered(rng, 9, num_buckets, dim, integer_activations=integer_activations)
    table = qk.SparseHashTable(num_buckets, k, metric=metric).add(db_act, db_emb)
    assert_same(table, db_act, db_emb, np.arange(n), q_act, q_emb, topk)


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 300),
    allowed=st.integers(0, 40),
    k=st.integers(1, 4),
    topk=st.integers(1, 30),
    metric=st.sampled_from(["l2", "ip"]),
    storage=st.sampled_from(["float32", "float16"]),
)
def test_include_equals_the_reference_over_the_allowed_items(seed, n, allowed, k, topk,
                                                            metric, storage):
    """A search with ``include``: the reference's answer and candidate counts over the allowed
    items alone. Few allowed items (at most one in ``k`` stored ones) are searched over their own
    bucket lists, more through a filter over every list: both drawn here. The ids repeat
    allowed ones and name some that the table does not hold."""
    rng = np.random.default_rng(seed)
    num_buckets = 16
    db_act, db_emb = clustered(rng, n, num_buckets, 6, integer_activations=True)
    q_act, q_emb = clustered(rng, 7, num_buckets, 6, integer_activations=True)
    ids = rng.choice(10 * n, n, replace=False)
    table = qk.SparseHashTable(num_buckets, k, metric=metric, storage=storage).add(
        db_act, db_emb, ids=ids)
    picked = rng.choice(n, min(allowed, n), replace=False)
    include = np.concatenate([ids[picked], ids[picked[:2]], [10 * n, 10 * n + 3]])
    D, I = table.search(q_act, q_emb, topk, include=rng.permutation(include))
    kept = np.sort(picked)  # the reference takes the allowed items in the order added
    stored = db_emb.astype(np.float16).astype(np.float32) if storage == "float16" else db_emb
    assert_reference_answer(table, D, I, ref.sparse_table_search(
        reference_codes(db_act[kept], k), stored[kept], ids[kept], q_act, q_emb, k, topk,
        metric))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 3), topk=st.integers(1, 40),
       metric=st.sampled_from(["l2", "ip"]))
def test_tied_distances_break_by_insertion_row(seed, k, topk, metric):
    # three distinct rows, each stored many times, and a zero query (every inner product
    # 0): ties everywhere, across the chunks of buckets the probe merges; the ids run
    # backwards, so breaking ties by id instead of insertion row would show
    rng = np.random.default_rng(seed)
    n, num_buckets = 90, 24
    db_act, _ = clustered(rng, n, num_buckets, 4)
    db_emb = rng.integers(-2, 3, (3, 4)).astype(np.float32)[rng.integers(0, 3, n)]
    ids = np.arange(n)[::-1] * 7
    table = qk.SparseHashTable(num_buckets, k, metric=metric).add(db_act, db_emb, ids=ids)
    q_act, _ = clustered(rng, 6, num_buckets, 4)
    q_emb = np.concatenate([np.zeros((1, 4)), db_emb[:5]]).astype(np.float32)
    assert_same(table, db_act, db_emb, ids, q_act, q_emb, topk)


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 120), k=st.integers(1, 3),
       topk=st.integers(1, 20), metric=st.sampled_from(["l2", "ip"]),
       storage=st.sampled_from(["float16", "pq", "pq, 9 bits"]))
def test_compressed_storage_equals_the_reference(seed, n, k, topk, metric, storage):
    """float16 embeddings re-rank by the distances of the float16 values; PQ codes by
    asymmetric distance, as PQIndex ranks, uint8 codes and uint16 ones (above 8 bits: not
    to be taken for float16 bit patterns, which are uint16 too)."""
    rng = np.random.default_rng(seed)
    act = rng.integers(0, 3, (n, 8)).astype(np.float64)
    emb = (rng.standard_normal((n, 8)) * 2).astype(np.float32)
    q_act = rng.integers(0, 3, (5, 8)).astype(np.float64)
    q_emb = (rng.standard_normal((5, 8)) * 2).astype(np.float32)
    codes = reference_codes(act, k)
    if storage == "float16":
        table = qk.SparseHashTable(8, k, metric, storage="float16").add(act, emb)
        kept = emb.astype(np.float16).astype(np.float32)
        want = ref.sparse_table_search(codes, kept, np.arange(n), q_act, q_emb, k, topk, metric)
    else:
        # integer codewords: equal distances, ties to the item added first
        nbits = 9 if storage == "pq, 9 bits" else 3
        pq = qk.ProductQuantizer(8, 4, nbits).set_codebooks(
            rng.integers(-2, 3, (4, 2**nbits, 2)).astype(np.float32))
        table = qk.SparseHashTable(8, k, metric, storage=pq).add(act, emb)
        pq_codes = pq.encode(emb)
        want = ref.sparse_table_search(
            codes, None, np.arange(n), q_act, q_emb, k, topk, metric,
            distance=lambda q, item: ref.adc_distance(q_emb[q], pq_codes[item], pq.codebooks,
                                                      metric == "ip"))
        np.testing.assert_array_equal(table.reconstruct(np.arange(n)), pq.decode(pq_codes))
    D, I = table.search(q_act, q_emb, topk)
    assert_reference_answer(table, D, I, want)


def test_compressed_tables_save_load_merge_and_refuse_mixes(tmp_path):
    rng = np.random.default_rng(1)
    act, emb = rng.standard_normal((300, 16)), rng.standard_normal((300, 8)).astype(np.float32)
    pq = qk.ProductQuantizer(8, 4, 6).train(emb)
    for storage in ("float16", pq):
        table = qk.SparseHashTable(16, 2, storage=storage).add(act, emb)
        before = table.search(act[:7], emb[:7], 5)
        loaded = qk.SparseHashTable.load(_saved(table, tmp_path / "t.npz"))
        for a, b in zip(before, loaded.search(act[:7], emb[:7], 5), strict=True):
            np.testing.assert_array_equal(a, b)
        other = qk.SparseHashTable(16, 2, storage=storage).add(act[:10], emb[:10])
        table.merge_from(other)
        assert table.ntotal == 310
    # per item: the stored row, k int32 codes and k int32 list entries, an int64 id, an int32
    # insertion row; and the lists' offsets
    for storage, row in (("float32", 32), ("float16", 16), (pq, 4)):
        table = qk.SparseHashTable(16, 2, storage=storage).add(act, emb)
        assert table.nbytes == 300 * (row + 8 + 8 + 8 + 4) + 8 * 17, storage
    with pytest.raises(ValueError, match="keep their embeddings differently"):
        qk.SparseHashTable(16, 2).merge_from(qk.SparseHashTable(16, 2, storage="float16"))
    with pytest.raises(ValueError, match="storage must be one of"):
        qk.SparseHashTable(16, 2, storage="int8")
    with pytest.raises(TypeError, match="not trained"):
        qk.SparseHashTable(16, 2, storage=qk.ProductQuantizer(8, 4, 6))
    with pytest.raises(ValueError, match="beyond float16"):
        qk.SparseHashTable(16, 2, storage="float16").add(act[:1], emb[:1] * 1e6)
    with pytest.raises(ValueError, match="has dimension 4"):
        qk.SparseHashTable(16, 2, storage=pq).add(act[:1], emb[:1, :4])


def _saved(table, path):
    table.save(path)
    return path


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_expansion_and_exclusion_with_queries_from_the_database(k):
    rng = np.random.default_rng(k)
    db_act, db_emb = clustered(rng, 300, 32, 12)
    ids = rng.permutation(10_000)[:300]
    table = qk.SparseHashTable(32, k).add(db_act, db_emb, ids=ids)
    queries = rng.choice(300, 25, replace=False)
    # topk 16: the rule rarely needs more buckets; topk 200: it always does
    for topk in (16, 200):
        _, I = assert_same(table, db_act, db_emb, ids, db_act[queries], db_emb[queries], topk,
                           exclude=ids[queries])
        assert not (I == ids[queries][:, None]).any()
    # several excluded ids per query, -1 entries ignored
    exclude = np.stack([ids[queries], np.full(25, -1), ids[(queries + 1) % 300]], axis=1)
    assert_same(table, db_act, db_emb, ids, db_act[queries], db_emb[queries], 16,
                exclude=exclude)
    # an id excluded twice is one excluded item: the expansion must not count it twice
    # (it did: the table then probed more buckets than the rule and returned other items)
    twice = np.stack([ids[queries], ids[queries], ids[queries], np.full(25, -1)], axis=1)
    for topk in (16, 200):
        assert_same(table, db_act, db_emb, ids, db_act[queries], db_emb[queries], topk,
                    exclude=twice)


def test_scan_and_merge_compile_once_for_every_k():
    """k = 1 tables hand the scan the ids and the merge none, k > 1 the other way round: the
    two arrays must be of one Numba type, or each k compiles its own scan (seconds) on first
    use."""
    from qkernels.index import table as table_module

    rng = np.random.default_rng(0)
    act, emb = clustered(rng, 200, 16, 8)
    for k in (1, 2):
        index = qk.SparseHashTable(16, k).add(act, emb)
        index.search(act[:3], emb[:3], 4)
        assert numba.typeof(index._state.ids) == numba.typeof(table_module._NO_IDS)


def test_expansion_fires_exactly_when_the_first_buckets_are_short():
    # two buckets of two items each; a query in bucket 0 needs bucket 1 to reach topk = 3
    act = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    emb = np.arange(4, dtype=np.float32)[:, None]
    table = qk.SparseHashTable(2, 1).add(act, emb)
    D, I = table.search(np.array([[1.0, 0.5]]), np.array([[0.0]]), topk=2)
    np.testing.assert_array_equal(I, [[0, 1]])
    assert table.candidate_counts.tolist() == [2]
    D, I = table.search(np.array([[1.0, 0.5]]), np.array([[0.0]]), topk=3)
    np.testing.assert_array_equal(I, [[0, 1, 2]])
    np.testing.assert_array_equal(D, [[0.0, 1.0, 4.0]])
    assert table.candidate_counts.tolist() == [4]


def test_items_in_several_probed_buckets_count_once():
    act = np.array([[2.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    emb = np.zeros((2, 3), np.float32)
    table = qk.SparseHashTable(3, 2).add(act, emb)
    table.search(np.array([[1.0, 1.0, 0.0]]), np.zeros((1, 3)), topk=5)
    assert table.candidate_counts.tolist() == [2]


def test_repeated_adds_append_and_equal_one_add():
    rng = np.random.default_rng(7)
    act, emb = clustered(rng, 200, 16, 8)
    q_act, q_emb = clustered(rng, 20, 16, 8)
    whole = qk.SparseHashTable(16, 2).add(act, emb)
    parts = qk.SparseHashTable(16, 2)
    parts.add(act[:50], emb[:50])
    parts.search(q_act, q_emb, 5)  # builds, then more items come
    parts.add(act[50:120], emb[50:120]).add(act[120:], emb[120:])
    for a, b in zip(whole.search(q_act, q_emb, 10), parts.search(q_act, q_emb, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(parts) == parts.ntotal == 200


def test_add_codes_equals_add():
    rng = np.random.default_rng(8)
    act, emb = clustered(rng, 150, 16, 8)
    q_act, q_emb = clustered(rng, 10, 16, 8)
    codes = np.array(reference_codes(act, 3))
    a = qk.SparseHashTable(16, 3).add(act, emb)
    b = qk.SparseHashTable(16, 3).add_codes(codes, emb)
    for x, y in zip(a.search(q_act, q_emb, 8), b.search(q_act, q_emb, 8), strict=True):
        np.testing.assert_array_equal(x, y)


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(9)
    act, emb = clustered(rng, 100, 16, 8)
    q_act, q_emb = clustered(rng, 10, 16, 8)
    table = qk.SparseHashTable(16, 2, metric="ip").add(act, emb, ids=np.arange(100) * 3)
    before = table.search(q_act, q_emb, 7)
    table.save(tmp_path / "table.npz")
    loaded = qk.SparseHashTable.load(tmp_path / "table.npz")
    assert (loaded.num_buckets, loaded.k, loaded.metric, loaded.dim) == (16, 2, "ip", 8)
    for x, y in zip(before, loaded.search(q_act, q_emb, 7), strict=True):
        np.testing.assert_array_equal(x, y)
    loaded.add(act[:5], emb[:5])  # a loaded table keeps growing
    assert loaded.ntotal == 105
    qk.SparseHashTable(4, 1).save(tmp_path / "empty.npz")
    assert qk.SparseHashTable.load(tmp_path / "empty.npz").ntotal == 0


def test_bad_files_are_refused(tmp_path):
    rng = np.random.default_rng(10)
    act, emb = clustered(rng, 50, 8, 4)
    qk.SparseHashTable(8, 1).add(act, emb).save(tmp_path / "t.npz")
    data = (tmp_path / "t.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable qkernels SparseHashTable file"):
        qk.SparseHashTable.load(tmp_path / "truncated.npz")
    np.savez(tmp_path / "foreign.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="is not a qkernels SparseHashTable file"):
        qk.SparseHashTable.load(tmp_path / "foreign.npz")
    (tmp_path / "noise.npz").write_bytes(rng.bytes(1000))
    with pytest.raises(ValueError, match="not a readable"):
        qk.SparseHashTable.load(tmp_path / "noise.npz")
    np.savez(tmp_path / "pickled.npz", __format__=np.array("SparseHashTable"),
             __version__=np.array(1), ids=np.array([object()], dtype=object))
    with pytest.raises(ValueError, match="not a readable"):
        qk.SparseHashTable.load(tmp_path / "pickled.npz")
    good = dict(np.load(tmp_path / "t.npz"))
    good["codes"] = good["codes"][:10]
    np.savez(tmp_path / "inconsistent.npz", **good)
    with pytest.raises(ValueError, match="corrupted SparseHashTable file"):
        qk.SparseHashTable.load(tmp_path / "inconsistent.npz")
    good = dict(np.load(tmp_path / "t.npz"))
    good["__version__"] = np.array(99)
    np.savez(tmp_path / "future.npz", **good)
    with pytest.raises(ValueError, match="format version 99"):
        qk.SparseHashTable.load(tmp_path / "future.npz")


def test_empty_table_and_topk_beyond_the_table():
    table = qk.SparseHashTable(8, 2)
    D, I = table.search(np.zeros((3, 8)), np.zeros((3, 5)), topk=4)
    assert (I == -1).all() and np.isinf(D).all()
    table.add(np.eye(8)[:3], np.zeros((3, 5)))
    D, I = table.search(np.eye(8)[:1], np.zeros((1, 5)), topk=6)
    assert sorted(I[0, :3].tolist()) == [0, 1, 2]
    assert (I[0, 3:] == -1).all() and np.isinf(D[0, 3:]).all()
    ip = qk.SparseHashTable(8, 1, metric="ip")
    D, _ = ip.search(np.zeros((1, 8)), np.zeros((1, 5)), topk=2)
    assert (D == -np.inf).all()


@pytest.mark.parametrize("exclude_shape", [(0,), (0, 3)])
def test_zero_queries_with_excluded_ids(exclude_shape):
    rng = np.random.default_rng(0)
    table = qk.SparseHashTable(8, 2).add(rng.standard_normal((30, 8)),
                                         rng.standard_normal((30, 5)))
    D, I = table.search(np.zeros((0, 8)), np.zeros((0, 5)), 4,
                        exclude=np.zeros(exclude_shape, dtype=np.int64))
    assert D.shape == I.shape == (0, 4) and D.dtype == np.float32 and I.dtype == np.int64
    compound = qk.HierarchicalHashTable(4, 2).add(rng.standard_normal((30, 4)),
                                                  rng.standard_normal((30, 4)),
                                                  rng.standard_normal((30, 5)))
    D, I = compound.search(np.zeros((0, 4)), np.zeros((0, 4)), np.zeros((0, 5)), 4,
                           exclude=np.zeros(exclude_shape, dtype=np.int64))
    assert D.shape == I.shape == (0, 4)


def test_torch_tensors_in_and_out():
    rng = np.random.default_rng(11)
    act, emb = clustered(rng, 60, 8, 4)
    table = qk.SparseHashTable(8, 2).add(torch.from_numpy(act), torch.from_numpy(emb))
    D, I = table.search(torch.from_numpy(act[:5]), torch.from_numpy(emb[:5]), 3)
    assert isinstance(D, torch.Tensor) and D.dtype == torch.float32
    assert isinstance(I, torch.Tensor) and I.dtype == torch.int64
    Dn, In = table.search(act[:5], emb[:5], 3)
    np.testing.assert_array_equal(I.numpy(), In)
    np.testing.assert_array_equal(D.numpy(), Dn)


def test_deterministic_across_thread_counts():
    rng = np.random.default_rng(12)
    act, emb = clustered(rng, 2000, 32, 16)
    q_act, q_emb = clustered(rng, 64, 32, 16)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = qk.SparseHashTable(32, 3).add(act, emb).search(q_act, q_emb, 10)
    finally:
        numba.set_num_threads(before)
    many = qk.SparseHashTable(32, 3).add(act, emb).search(q_act, q_emb, 10)
    for a, b in zip(one, many, strict=True):
        np.testing.assert_array_equal(a, b)


@given(st.integers(0, 2**32 - 1), st.integers(0, 300), st.integers(1, 40), st.integers(1, 4),
       st.integers(1, 5))
def test_counting_sort_equals_a_stable_sort(seed, n, num_buckets, k, chunks):
    rng = np.random.default_rng(seed)
    k = min(k, num_buckets)
    codes = np.array([rng.permutation(num_buckets)[:k] for _ in range(n)],
                     dtype=np.int64).reshape(n, k)
    offsets, items = _table_cpu.counting_sort(codes, num_buckets, chunks)
    for r in range(num_buckets):
        expected = [i for i in range(n) if r in codes[i]]
        assert items[offsets[r]:offsets[r + 1]].tolist() == expected


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: qk.SparseHashTable(4, 5), ValueError, r"k must be in 1\.\.4"),
        (lambda: qk.SparseHashTable(0, 1), ValueError,
         r"num_buckets must be in 1\.\.16777216, got 0"),
        (lambda: qk.SparseHashTable(4, 1, metric="cos"), ValueError, "metric must be one of"),
        (lambda: qk.SparseHashTable(4, 1).add(np.zeros((2, 3)), np.zeros((2, 2))), ValueError,
         "activations has 3 columns; this table has 4 buckets"),
        (lambda: qk.SparseHashTable(4, 1).add(np.zeros((2, 4)), np.zeros((3, 2))), ValueError,
         "the codes has 2 rows but embeddings has 3"),
        (lambda: qk.SparseHashTable(4, 1).add(np.full((1, 4), np.nan), np.zeros((1, 2))),
         ValueError, "activations must be finite"),
        (lambda: qk.SparseHashTable(4, 1).add(np.zeros((1, 4)), np.full((1, 2), np.inf)),
         ValueError, "embeddings must be finite"),
        (lambda: qk.SparseHashTable(4, 1).add(np.zeros((1, 4)), np.zeros((1, 2)), ids=[-3]),
         TypeError, "ids must be a numpy array"),
        (lambda: qk.SparseHashTable(4, 1).add(np.zeros((1, 4)), np.zeros((1, 2)),
                                              ids=np.array([-3])), ValueError,
         "ids holds -3: ids are integers >= 0"),
        (lambda: qk.SparseHashTable(4, 1).add(np.zeros((1, 4)), np.zeros((1, 2)))
         .add(np.zeros((1, 4)), np.zeros((1, 3))), ValueError,
         "embeddings has dimension 3; the table's embeddings have 2"),
        (lambda: qk.SparseHashTable(4, 1).add(np.zeros((1, 4)), np.zeros((1, 2)))
         .search(np.zeros((1, 4)), np.zeros((1, 3)), 1), ValueError,
         "query_embeddings has dimension 3"),
        (lambda: qk.SparseHashTable(4, 1).search(np.zeros((1, 4)), np.zeros((2, 3)), 1),
         ValueError, "query_activations has 1 rows but query_embeddings has 2"),
        (lambda: qk.SparseHashTable(4, 1).search(np.zeros((1, 4)), np.zeros((1, 3)), 0),
         ValueError, "topk must be >= 1"),
        (lambda: qk.SparseHashTable(4, 1).search(np.zeros((1, 4)), np.zeros((1, 3)), 1,
                                                 exclude=np.zeros((2, 1), int)), ValueError,
         "exclude has 2 rows but there are 1 queries"),
        (lambda: qk.SparseHashTable(4, 2).add_codes(np.array([[1, 1]]), np.zeros((1, 2))),
         ValueError, "distinct"),
        (lambda: qk.SparseHashTable(4, 2).add_codes(np.array([[1]]), np.zeros((1, 2))),
         ValueError, "codes has 1 columns; this table has k = 2"),
        (lambda: qk.SparseHashTable(4, 1).add(torch.zeros(1, 4), np.zeros((1, 2))), TypeError,
         "activations is a torch array but embeddings is a numpy array"),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_exclude_ids_is_a_deprecated_name_for_exclude_by_rows():
    rng = np.random.default_rng(4)
    table = qk.SparseHashTable(8, 2).add(rng.standard_normal((60, 8)),
                                         rng.standard_normal((60, 3)))
    q_act, q_emb = rng.standard_normal((4, 8)), rng.standard_normal((4, 3))
    with pytest.warns(DeprecationWarning, match="exclude_ids is deprecated"):
        old = table.search(q_act, q_emb, 5, exclude_ids=np.arange(4))
    new = table.search(q_act, q_emb, 5, exclude=np.arange(4)[:, None])
    for a, b in zip(old, new, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("hook", ["search_probes", "count_candidates"])
def test_probe_counts_outside_k_to_every_bucket_are_refused(hook):
    """A query probes its k best buckets first and at most every bucket: other counts are a
    clear error (a count above the buckets once wrote past the probe lists: a heap
    corruption that aborted the process); 0 counts nothing, where counting allows it."""
    rng = np.random.default_rng(0)
    act, emb = rng.standard_normal((30, 8)), rng.standard_normal((30, 4)).astype(np.float32)
    table = qk.SparseHashTable(8, 3).add(act, emb)

    def call(probes):
        probes = np.array(probes)
        if hook == "count_candidates":
            return table.count_candidates(act[:3], probes)
        return table.search_probes(act[:3], emb[:3], 4, probes)[2]

    zero = "0 or " if hook == "count_candidates" else ""
    for probes, bad in (([3, 100, 8], 1), ([3, 3, 9], 2), ([2, 3, 3], 0), ([3, -1, 3], 1)):
        value = probes[bad]
        message = ("must hold indices" if value < 0 else
                   rf"probes\[{bad}\] is {value}; accepted: {zero}3\.\.8")
        with pytest.raises(ValueError, match=message):
            call(probes)
    every = call([8, 8, 8])
    assert every.tolist() == [30, 30, 30]  # every bucket: every item
    if hook == "count_candidates":
        assert call([0, 3, 8]).tolist()[0] == 0
    else:
        with pytest.raises(ValueError, match=r"probes\[0\] is 0; accepted: 3\.\.8"):
            call([0, 3, 8])
