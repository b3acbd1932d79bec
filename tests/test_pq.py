"""ProductQuantizer and PQIndex against the loop reference and FAISS."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qkernels as qk
from qkernels.quantize import _pq_cpu
from tests import reference as ref

faiss = pytest.importorskip("faiss")


def data(seed, n, dim, centers=5):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim)) * 3
    return (c[rng.integers(0, centers, n)] + rng.standard_normal((n, dim))).astype(np.float32)


@given(st.integers(0, 2**32 - 1), st.integers(4, 40), st.integers(1, 4), st.integers(1, 3),
       st.integers(0, 4), st.booleans())
def test_kmeans_equals_the_reference(seed, n, k, dsub, iterations, duplicates):
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((n, dsub)).astype(np.float32)
    if duplicates:  # repeated points: k-means++ runs out of distinct ones, clusters go empty
        points = points[rng.integers(0, max(1, n // 4), n)]
    k = min(k, n)
    uniforms = rng.random((1, k))
    got = np.empty((1, k, dsub), dtype=np.float32)
    _pq_cpu.train(points, 1, k, iterations, uniforms, got)
    expected = ref.kmeans_subspace(points, k, uniforms[0], iterations)
    np.testing.assert_array_equal(got[0], expected)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), m=st.sampled_from([8, 16, 24]), n=st.integers(1, 90),
       num_queries=st.sampled_from([1, 3, 20]), topk=st.integers(1, 12),
       metric=st.sampled_from(["l2", "ip"]), symmetric=st.booleans(), duplicates=st.booleans())
def test_8bit_codes_read_as_words_equal_the_reference(seed, m, n, num_queries, topk, metric,
                                                      symmetric, duplicates):
    """8-bit codes of a multiple of 8 sub-quantizers are scanned as uint64 words."""
    rng = np.random.default_rng(seed)
    codebooks = rng.integers(-2, 3, (m, 256, 1)).astype(np.float32)  # small integers: ties
    pq = qk.ProductQuantizer(m, m, 8).set_codebooks(codebooks)
    codes = rng.integers(0, 256, (n, m), dtype=np.uint8)
    if duplicates:
        codes = codes[rng.integers(0, max(1, n // 4), n)]
    q = rng.integers(-2, 3, (num_queries, m)).astype(np.float32)
    D, I = qk.PQIndex(pq, metric=metric).add_codes(codes).search(q, topk, symmetric=symmetric)
    rD, rI = ref.pq_search(q, codes, codebooks, topk, metric, symmetric)
    np.testing.assert_array_equal(I, rI)
    np.testing.assert_array_equal(D, np.array(rD, dtype=np.float32))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), m=st.sampled_from([8, 16]), n=st.integers(1, 70),
       num_queries=st.sampled_from([2, 3, 5, 8, 9, 16, 17, 20, 33, 40]),
       topk=st.integers(1, 12), metric=st.sampled_from(["l2", "ip"]),
       how=st.sampled_from(["exclude", "include"]))
def test_8bit_word_scan_of_query_groups_with_filters_equals_the_reference(
        seed, m, n, num_queries, topk, metric, how):
    """Queries go through the scan together in vector lanes (sixteen, or eight), in parallel
    over queries (more than ``SPLIT_DATABASE_MAX_QUERIES``) and over chunks of the database
    (fewer), with filters: each query's excluded rows differ in length, so the queries of a
    group fill their heaps at different items."""
    rng = np.random.default_rng(seed)
    codebooks = rng.integers(-2, 3, (m, 256, 1)).astype(np.float32)  # small integers: ties
    pq = qk.ProductQuantizer(m, m, 8).set_codebooks(codebooks)
    codes = rng.integers(0, 256, (n, m), dtype=np.uint8)
    q = rng.integers(-2, 3, (num_queries, m)).astype(np.float32)
    index = qk.PQIndex(pq, metric=metric).add_codes(codes)
    rD, rI = ref.pq_search(q, codes, codebooks, n, metric)
    if how == "exclude":
        exclude = np.full((num_queries, n), -1, dtype=np.int64)
        allowed = []
        for row in range(num_queries):
            dropped = rng.choice(n, size=rng.integers(0, n + 1), replace=False)
            exclude[row, :len(dropped)] = dropped
            allowed.append(set(range(n)) - set(dropped.tolist()))
        D, I = index.search(q, topk, exclude=exclude)
    else:
        include = rng.choice(n, size=rng.integers(0, n + 1), replace=False)
        allowed = [set(include.tolist())] * num_queries
        D, I = index.search(q, topk, include=include)
    missing = -np.inf if metric == "ip" else np.inf
    for row in range(num_queries):
        kept = [(d, i) for d, i in zip(rD[row], rI[row], strict=True) if i in allowed[row]]
        kept = (kept + [(missing, -1)] * topk)[:topk]
        np.testing.assert_array_equal(I[row], [i for _, i in kept])
        np.testing.assert_array_equal(D[row], np.array([d for d, _ in kept], dtype=np.float32))


@pytest.mark.parametrize("split", [True, False], ids=["by-database", "by-query"])
def test_every_count_of_queries_in_lanes_equals_the_reference(monkeypatch, split):
    """1 to 40 queries, split over the database or over queries: groups of sixteen and of
    eight lanes, full and part-filled, a last query alone, and an odd number of items (the
    lane scan takes two items a step, the last one alone)."""
    if not split:
        monkeypatch.setattr(qk.config, "SPLIT_DATABASE_MAX_QUERIES", 0)
    rng = np.random.default_rng(7)
    m, n, topk = 16, 301, 9
    codebooks = rng.integers(-2, 3, (m, 256, 1)).astype(np.float32)  # small integers: ties
    codes = rng.integers(0, 256, (n, m), dtype=np.uint8)
    q = rng.integers(-2, 3, (40, m)).astype(np.float32)
    index = qk.PQIndex(qk.ProductQuantizer(m, m, 8).set_codebooks(codebooks)).add_codes(codes)
    rD, rI = ref.pq_search(q, codes, codebooks, topk, "l2")
    for count in range(1, 41):
        D, I = index.search(q[:count], topk)
        np.testing.assert_array_equal(I, rI[:count], err_msg=f"{count} queries")
        np.testing.assert_array_equal(D, np.array(rD[:count], dtype=np.float32))


@given(st.integers(0, 2**32 - 1), st.sampled_from([(8, 2), (8, 4), (12, 3), (5, 5), (6, 1)]),
       st.integers(1, 4))
def test_encode_decode_and_search_equal_the_reference(seed, shape, nbits):
    dim, m = shape
    x = data(seed, 60, dim)
    q = data(seed + 1, 7, dim)
    pq = qk.ProductQuantizer(dim, m, nbits, iterations=5, seed=seed % 1000).train(x)
    codes = pq.encode(x)
    assert codes.dtype == np.uint8 and codes.shape == (60, m)
    np.testing.assert_array_equal(codes, ref.pq_encode(x, pq.codebooks))
    decoded = pq.decode(codes)
    dsub = dim // m
    for i in range(3):
        for j in range(m):
            np.testing.assert_array_equal(decoded[i, j * dsub:(j + 1) * dsub],
                                          pq.codebooks[j, codes[i, j]])
    for metric in ("l2", "ip"):
        index = qk.PQIndex(pq, metric=metric, fast_scan=False).add_codes(codes)
        for symmetric in (False, True):
            D, I = index.search(q, 12, symmetric=symmetric)
            rD, rI = ref.pq_search(q, codes, pq.codebooks, 12, metric, symmetric)
            np.testing.assert_array_equal(I, rI)
            np.testing.assert_array_equal(D, np.array(rD, dtype=np.float32))


def test_few_queries_split_the_database_and_agree():
    x = data(3, 3000, 16)
    q = data(4, 40, 16)
    pq = qk.ProductQuantizer(16, 4, 6, iterations=4).train(x)
    index = qk.PQIndex(pq).add(x)
    many = index.search(q, 15)
    few = [index.search(q[i:i + 2], 15) for i in range(0, 40, 2)]
    np.testing.assert_array_equal(np.concatenate([f[1] for f in few]), many[1])
    np.testing.assert_array_equal(np.concatenate([f[0] for f in few]), many[0])


def test_same_codes_and_ids_as_faiss_indexpq():
    x = data(5, 5000, 32, centers=40)
    q = data(6, 60, 32, centers=40)
    pq = qk.ProductQuantizer(32, 8, 8, iterations=10).train(x)
    f = faiss.IndexPQ(32, 8, 8)
    faiss.copy_array_to_vector(pq.codebooks.ravel(), f.pq.centroids)
    f.is_trained = True
    f.add(x)
    ours = qk.PQIndex(pq).add(x)
    np.testing.assert_array_equal(faiss.vector_to_array(f.codes).reshape(-1, 8), ours.codes)
    Df, If = f.search(q, 10)
    D, I = ours.search(q, 10)
    np.testing.assert_array_equal(I, If)
    np.testing.assert_allclose(D, Df, rtol=1e-5)
    f.search_type = faiss.IndexPQ.ST_SDC
    f.pq.compute_sdc_table()
    Df, If = f.search(q, 10)
    D, I = ours.search(q, 10, symmetric=True)
    np.testing.assert_array_equal(I, If)
    np.testing.assert_allclose(D, Df, rtol=1e-5)


def test_training_is_deterministic_under_a_seed_and_reduces_error():
    x = data(7, 4000, 16, centers=30)
    a = qk.ProductQuantizer(16, 4, 5, seed=1).train(x)
    b = qk.ProductQuantizer(16, 4, 5, seed=1).train(x)
    np.testing.assert_array_equal(a.codebooks, b.codebooks)
    err = lambda p: float(((p.decode(p.encode(x)) - x) ** 2).mean())  # noqa: E731
    assert err(a) < err(qk.ProductQuantizer(16, 4, 5, iterations=0, seed=1).train(x))
    # subsampling (at most 8 points per codeword here) keeps it deterministic
    c = qk.ProductQuantizer(16, 4, 5, seed=1, max_points_per_centroid=8).train(x)
    d = qk.ProductQuantizer(16, 4, 5, seed=1, max_points_per_centroid=8).train(x)
    np.testing.assert_array_equal(c.codebooks, d.codebooks)


def test_codes_above_eight_bits_are_uint16():
    x = data(8, 600, 4, centers=50)
    pq = qk.ProductQuantizer(4, 2, 9, iterations=2).train(x)
    codes = pq.encode(x)
    assert codes.dtype == np.uint16 and 255 < codes.max() < 512
    np.testing.assert_array_equal(codes, ref.pq_encode(x, pq.codebooks))
    D, I = qk.PQIndex(pq).add_codes(codes).search(x[:3], 5)
    rD, rI = ref.pq_search(x[:3], codes, pq.codebooks, 5)
    np.testing.assert_array_equal(I, rI)
    np.testing.assert_array_equal(D, np.array(rD, dtype=np.float32))


def test_torch_in_torch_out_and_save_load(tmp_path):
    x = data(9, 600, 8)
    pq = qk.ProductQuantizer(8, 2, 4).train(torch.from_numpy(x))
    codes = pq.encode(torch.from_numpy(x))
    assert isinstance(codes, torch.Tensor) and codes.dtype == torch.uint8
    index = qk.PQIndex(pq).add(x)
    _, I = index.search(torch.from_numpy(x[:5]), 3)
    assert isinstance(I, torch.Tensor)
    index.save(tmp_path / "pq.npz")
    loaded = qk.PQIndex.load(tmp_path / "pq.npz")
    np.testing.assert_array_equal(loaded.search(x[:5], 3)[1], I.numpy())
    pq.save(tmp_path / "q.npz")
    np.testing.assert_array_equal(qk.ProductQuantizer.load(tmp_path / "q.npz").codebooks,
                                  pq.codebooks)
    np.savez(tmp_path / "foreign.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="not a qkernels PQIndex file"):
        qk.PQIndex.load(tmp_path / "foreign.npz")


def test_empty_index_and_topk_beyond_it():
    x = data(10, 300, 8)
    pq = qk.ProductQuantizer(8, 2, 3).train(x)
    D, I = qk.PQIndex(pq).search(x[:2], 4)
    assert (I == -1).all() and np.isinf(D).all()
    D, I = qk.PQIndex(pq).add(x[:3]).search(x[:2], 5)
    assert (I[:, 3:] == -1).all() and sorted(I[0, :3]) == [0, 1, 2]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: qk.ProductQuantizer(10, 3), ValueError, "not divisible by num_subspaces"),
        (lambda: qk.ProductQuantizer(8, 2, 17), ValueError, r"nbits must be in 1\.\.16"),
        (lambda: qk.ProductQuantizer(8, 2, 0), ValueError, r"nbits must be in 1\.\.16"),
        (lambda: qk.ProductQuantizer(8, 2, 8).train(np.zeros((100, 8))), ValueError,
         "at least 2\\*\\*nbits = 256 points, got 100"),
        (lambda: qk.ProductQuantizer(8, 2, 2).train(np.zeros((100, 7))), ValueError,
         "x has dimension 7; this quantizer has 8"),
        (lambda: qk.ProductQuantizer(8, 2, 2).train(np.full((10, 8), np.nan)), ValueError,
         "x must be finite"),
        (lambda: qk.ProductQuantizer(8, 2, 2).encode(np.zeros((1, 8))), RuntimeError,
         "not trained"),
        (lambda: qk.PQIndex(qk.ProductQuantizer(8, 2, 2).train(data(1, 20, 8)))
         .search(np.zeros((1, 6)), 1), ValueError, "q has dimension 6"),
        (lambda: qk.PQIndex(qk.ProductQuantizer(8, 2, 2).train(data(1, 20, 8)))
         .add_codes(np.array([[0, 4]])), ValueError, r"indices in 0\.\.3"),
        (lambda: qk.PQIndex(qk.ProductQuantizer(8, 2, 2).train(data(1, 20, 8)))
         .add_codes(np.zeros((1, 3), np.uint8)), ValueError, "3 columns"),
        (lambda: qk.PQIndex("pq"), TypeError, "pq must be a ProductQuantizer"),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()
