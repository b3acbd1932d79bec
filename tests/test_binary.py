"""pack_bits / unpack_bits / hamming_topk / BinaryIndex against loops and FAISS."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qkernels as qk
from qkernels.index import _hamming_cpu, binary
from tests import reference as ref

faiss = pytest.importorskip("faiss")


def codes(rng, n, nbits, classes=None):
    """Random codes; with ``classes``, items near a few centre codes so that ties abound."""
    if classes is None:
        return qk.pack_bits(rng.standard_normal((n, nbits)))
    centres = rng.standard_normal((classes, nbits))
    x = centres[rng.integers(0, classes, n)] + 0.3 * rng.standard_normal((n, nbits))
    return qk.pack_bits(x)


@given(st.integers(0, 2**32 - 1), st.integers(1, 300), st.integers(0, 80),
       st.integers(1, 20), st.integers(1, 40), st.booleans(), st.sampled_from([1, 7, 32, 1024]))
def test_hamming_topk_equals_the_reference(seed, nbits, n, num_queries, topk, clustered, block):
    """Also with small blocks of the scan (the library's is 1024 items), so that the skip of a
    block whose minimum cannot enter the heap, and partial last blocks, are exercised."""
    rng = np.random.default_rng(seed)
    db = codes(rng, n, nbits, 3 if clustered else None)
    queries = codes(rng, num_queries, nbits, 3 if clustered else None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(binary, "_BLOCK", block)
        D, I = qk.hamming_topk(queries, db, topk)
    rD, rI = ref.hamming_search(queries, db, topk)
    np.testing.assert_array_equal(D, rD)
    np.testing.assert_array_equal(I, rI)
    assert D.dtype == np.int32 and I.dtype == np.int64


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), nbits=st.sampled_from([8, 64, 100, 128, 192, 256]),
       n=st.integers(1, 150), num_queries=st.sampled_from([19, 20, 32, 33, 52]),
       topk=st.integers(1, 12), clustered=st.booleans(), filtered=st.booleans())
def test_queries_in_lanes_equal_the_reference(seed, nbits, n, num_queries, topk, clustered,
                                              filtered):
    """Groups of 32 queries: those of 20 or more and codes of at most three words go through
    the lane scan (two items a step, an odd last one alone; a part-filled group), the others
    (19 queries, 256 bits) through the block scan; with a filter, each query's excluded rows
    differ, so its heap fills at its own item."""
    rng = np.random.default_rng(seed)
    db = codes(rng, n, nbits, 3 if clustered else None)
    queries = codes(rng, num_queries, nbits, 3 if clustered else None)
    rD, rI = ref.hamming_search(queries, db, n)
    mask = binary.NO_MASK
    excluded = np.empty((num_queries, 0), dtype=np.int64)
    allowed = [set(range(n))] * num_queries
    if filtered:
        mask = (rng.random(n) < 0.8).astype(np.uint8)
        excluded = np.full((num_queries, n), -1, dtype=np.int64)
        allowed = []
        for q in range(num_queries):
            dropped = np.sort(rng.choice(n, size=rng.integers(0, n + 1), replace=False))
            excluded[q, :len(dropped)] = dropped
            allowed.append({i for i in range(n) if mask[i]} - set(dropped.tolist()))
    work = min(topk, n)
    D = np.empty((num_queries, work), dtype=np.int32)
    I = np.empty((num_queries, work), dtype=np.int64)
    _hamming_cpu.topk_by_query(binary._words(queries), binary._word_columns(db), work,
                               binary._BLOCK, _hamming_cpu.LANES, D, I, mask, excluded)
    for q in range(num_queries):
        kept = [(d, i) for d, i in zip(rD[q], rI[q], strict=True) if i in allowed[q]]
        kept = (kept + [(np.iinfo(np.int32).max, -1)] * work)[:work]
        np.testing.assert_array_equal(I[q], [i for _, i in kept])
        np.testing.assert_array_equal(D[q], [d for d, _ in kept])


@given(st.integers(0, 2**32 - 1), st.sampled_from([8, 12, 64, 100, 128]), st.integers(1, 60),
       st.integers(1, 8))
def test_tiebreak_by_feature_distance_equals_the_reference(seed, nbits, n, topk):
    rng = np.random.default_rng(seed)
    db_features = rng.standard_normal((n, 6)).astype(np.float32)
    q_features = rng.standard_normal((5, 6)).astype(np.float32)
    db = codes(rng, n, nbits, classes=2)
    queries = codes(rng, 5, nbits, classes=2)
    D, I = qk.hamming_topk(queries, db, topk, tiebreak=(q_features, db_features))
    rD, rI = ref.hamming_search(queries, db, topk, q_features, db_features)
    np.testing.assert_array_equal(D, rD)
    np.testing.assert_array_equal(I, rI)


def test_tiebreak_orders_equal_hamming_distances_by_features():
    db = np.zeros((3, 1), np.uint8)  # three identical codes
    db_features = np.array([[3.0], [1.0], [2.0]], np.float32)
    _, I = qk.hamming_topk(np.zeros((1, 1), np.uint8), db, 3,
                           tiebreak=(np.zeros((1, 1), np.float32), db_features))
    assert I.tolist() == [[1, 2, 0]]
    _, I = qk.hamming_topk(np.zeros((1, 1), np.uint8), db, 3)
    assert I.tolist() == [[0, 1, 2]]


@pytest.mark.parametrize("nbits", [64, 128, 256])
def test_identical_distances_to_faiss_indexbinaryflat(nbits):
    rng = np.random.default_rng(nbits)
    db = codes(rng, 20_000, nbits, classes=50)
    queries = codes(rng, 300, nbits, classes=50)
    index = faiss.IndexBinaryFlat(nbits)
    index.add(db)
    Df, If = index.search(queries, 10)
    D, I = qk.hamming_topk(queries, db, 10)
    np.testing.assert_array_equal(D, Df)
    # ids agree wherever faiss's own tie order is the (distance, index) order
    _, rI = ref.hamming_search(queries[:20], db, 10)
    np.testing.assert_array_equal(I[:20], rI)
    assert (I == If).mean() > 0.9


def test_pack_bits_matches_faiss_layout_and_round_trips():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20, 37)).astype(np.float32)
    packed = qk.pack_bits(x)
    assert packed.shape == (20, 5) and packed.dtype == np.uint8
    expected = np.zeros_like(packed)
    faiss.fvecs2bitvecs(faiss.swig_ptr(x), faiss.swig_ptr(expected), 37, 20)
    np.testing.assert_array_equal(packed, expected)
    np.testing.assert_array_equal(qk.unpack_bits(packed, 37), (x > 0).astype(np.uint8))
    assert qk.pack_bits(np.array([[0.0, -0.0, 1e-30]])).tolist() == [[4]]  # 0 is not > 0
    t = qk.pack_bits(torch.from_numpy(x))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.uint8


def test_few_query_path_equals_many_query_path():
    rng = np.random.default_rng(2)
    db = codes(rng, 5000, 96, classes=20)
    queries = codes(rng, 40, 96, classes=20)
    D, I = qk.hamming_topk(queries, db, 20)
    for start in range(0, 40, 3):
        d, i = qk.hamming_topk(queries[start:start + 3], db, 20)
        np.testing.assert_array_equal(d, D[start:start + 3])
        np.testing.assert_array_equal(i, I[start:start + 3])


def test_binary_index_search_save_load(tmp_path):
    rng = np.random.default_rng(3)
    db = codes(rng, 500, 40, classes=5)
    features = rng.standard_normal((500, 4)).astype(np.float32)
    index = qk.BinaryIndex(40).add(db[:200], features[:200]).add(db[200:], features[200:])
    queries = codes(rng, 7, 40, classes=5)
    qf = rng.standard_normal((7, 4)).astype(np.float32)
    D, I = index.search(queries, 9, query_features=qf)
    rD, rI = ref.hamming_search(queries, db, 9, qf, features)
    np.testing.assert_array_equal(I, rI)
    np.testing.assert_array_equal(D, rD)
    index.save(tmp_path / "b.npz")
    loaded = qk.BinaryIndex.load(tmp_path / "b.npz")
    for a, b in zip(loaded.search(queries, 9, query_features=qf), (D, I), strict=True):
        np.testing.assert_array_equal(a, b)
    plain = qk.BinaryIndex(40).add(db)
    np.testing.assert_array_equal(plain.search(queries, 9)[1], qk.hamming_topk(queries, db, 9)[1])
    D, I = qk.BinaryIndex(8).search(np.zeros((2, 1), np.uint8), 3)
    assert (I == -1).all() and (D == np.iinfo(np.int32).max).all()


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: qk.hamming_topk(np.zeros((1, 2), np.int64), np.zeros((3, 2), np.uint8), 1),
         TypeError, "packed uint8 codes .* never cast silently"),
        (lambda: qk.hamming_topk(np.zeros((1, 3), np.uint8), np.zeros((3, 2), np.uint8), 1),
         ValueError, "query_codes has 3 bytes per code; expected 2"),
        (lambda: qk.hamming_topk(np.zeros((1, 2), np.uint8), np.zeros((3, 2), np.uint8), 0),
         ValueError, "topk must be >= 1"),
        (lambda: qk.hamming_topk(np.zeros((1, 2), np.uint8), np.zeros((3, 2), np.uint8), 1,
                                 tiebreak=np.zeros(3)), TypeError, "pair"),
        (lambda: qk.hamming_topk(np.zeros((1, 2), np.uint8), np.zeros((3, 2), np.uint8), 1,
                                 tiebreak=(np.zeros((1, 2)), np.zeros((3, 3)))), ValueError,
         "dimension"),
        (lambda: qk.pack_bits(np.zeros(5)), ValueError, r"\(N, bits\)"),
        (lambda: qk.unpack_bits(np.zeros((2, 1), np.uint8), 9), ValueError,
         r"nbits must be in 1\.\.8"),
        (lambda: qk.BinaryIndex(12).add(np.full((1, 2), 255, np.uint8)), ValueError,
         "beyond nbits = 12"),
        (lambda: qk.BinaryIndex(16).add(np.zeros((1, 2), np.uint8))
         .search(np.zeros((1, 2), np.uint8), 1, query_features=np.zeros((1, 2))), ValueError,
         "need features added"),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()
