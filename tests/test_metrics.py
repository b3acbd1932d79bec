import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import normalized_mutual_info_score

import qkernels as qk
from tests import reference as ref


@st.composite
def retrieval_case(draw, multilabel=False):
    """Search results with missing entries (-1), repeated labels (ties) and random sizes."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n_db = draw(st.integers(1, 40))
    n_q = draw(st.integers(1, 12))
    num_classes = draw(st.integers(1, 5))
    k_total = draw(st.integers(1, 12))
    k = draw(st.integers(1, k_total))
    if multilabel:
        db = (rng.random((n_db, num_classes)) < 0.4).astype(np.int64)
        queries = (rng.random((n_q, num_classes)) < 0.4).astype(np.int64)
    else:
        db = rng.integers(0, num_classes, n_db)
        queries = rng.integers(0, num_classes, n_q)
    I = rng.integers(0, n_db, (n_q, k_total))
    I[rng.random(I.shape) < draw(st.sampled_from([0.0, 0.2, 1.0]))] = -1
    return I, db, queries, k


@given(retrieval_case())
def test_precision_matches_reference(case):
    I, db, queries, k = case
    assert qk.metrics.precision_at_k(I, db, queries, k) == pytest.approx(
        ref.precision_at_k(I, db, queries, k), abs=1e-12
    )


@given(retrieval_case(multilabel=True))
def test_precision_multilabel_matches_reference(case):
    I, db, queries, k = case
    assert qk.metrics.precision_at_k(I, db, queries, k) == pytest.approx(
        ref.precision_at_k(I, db, queries, k), abs=1e-12
    )


@given(st.one_of(retrieval_case(), retrieval_case(multilabel=True)))
def test_map_matches_reference(case):
    I, db, queries, k = case
    assert qk.metrics.map_at_k(I, db, queries, k) == pytest.approx(
        ref.map_at_k(I, db, queries, k), abs=1e-12
    )


@given(retrieval_case(), st.integers(0, 2**32 - 1))
def test_mahp_matches_reference(case, seed):
    I, db, queries, k = case
    num_classes = int(max(db.max(), queries.max())) + 1
    rng = np.random.default_rng(seed)
    sim = rng.integers(0, 4, (num_classes, num_classes)) / 3.0  # ties in similarity too
    sim = (sim + sim.T) / 2
    np.fill_diagonal(sim, 1.0)
    if rng.random() < 0.2:
        sim[:] = 0.0  # nothing is similar: every ranking is ideal
    assert qk.metrics.mahp_at_k(I, db, queries, sim, k) == pytest.approx(
        ref.mahp_at_k(I, db, queries, sim, k), abs=1e-12
    )


@given(st.one_of(retrieval_case(), retrieval_case(multilabel=True)), st.data())
def test_precision_recall_curve_matches_reference(case, data):
    I, db, queries, _ = case
    cutoffs = np.array(sorted(data.draw(st.sets(st.integers(1, I.shape[1]), min_size=1))))
    precision, recall = qk.metrics.precision_recall_curve(I, db, queries, cutoffs)
    want_p, want_r = ref.precision_recall_curve(I, db, queries, cutoffs)
    np.testing.assert_allclose(precision, want_p, atol=1e-12)
    np.testing.assert_allclose(recall, want_r, atol=1e-12)


def test_precision_recall_curve_of_a_full_ranking():
    """Ranking the whole database: recall climbs to exactly 1 at c = N, and there precision is
    the share of relevant items; P@c agrees with precision_at_k at every cutoff."""
    rng = np.random.default_rng(3)
    db, queries = rng.integers(0, 4, 60), rng.integers(0, 4, 9)
    I = np.argsort(rng.random((9, 60)), axis=1)
    precision, recall = qk.metrics.precision_recall_curve(I, db, queries)
    assert recall[-1] == pytest.approx(1.0)
    assert np.all(np.diff(recall) >= 0)
    keep = [np.any(db == q) for q in queries]
    share = np.mean([np.mean(db == q) for q, k in zip(queries, keep, strict=True) if k])
    assert precision[-1] == pytest.approx(share)
    for c in (1, 7, 60):
        want = qk.metrics.precision_at_k(I[keep], db, queries[keep], c)
        assert precision[c - 1] == pytest.approx(want)
    with pytest.raises(ValueError, match="cutoffs must lie in"):
        qk.metrics.precision_recall_curve(I, db, queries, np.array([0, 3]))


@st.composite
def bucket_case(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(1, 50))
    k = draw(st.integers(1, 4))
    labels = rng.integers(0, draw(st.integers(1, 6)), n)
    buckets = rng.integers(0, draw(st.integers(1, 8)), (n, k))
    if draw(st.booleans()):
        buckets[rng.random(buckets.shape) < 0.2] = -1
        buckets[0, 0] = 0  # at least one active pair
    return buckets, labels


@given(bucket_case())
def test_nmi_matches_reference(case):
    buckets, labels = case
    assert qk.metrics.nmi(buckets, labels) == pytest.approx(ref.nmi(buckets, labels), abs=1e-12)


@given(st.integers(0, 2**32 - 1), st.integers(1, 60))
def test_nmi_one_bucket_per_item_matches_sklearn(seed, n):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, n)
    buckets = rng.integers(0, 7, n)
    expected = normalized_mutual_info_score(labels, buckets, average_method="arithmetic")
    assert qk.metrics.nmi(buckets, labels) == pytest.approx(expected, abs=1e-10)


def test_nmi_of_a_perfect_and_of_an_independent_partition():
    labels = np.repeat(np.arange(4), 5)
    assert qk.metrics.nmi(labels + 10, labels) == pytest.approx(1.0)
    assert qk.metrics.nmi(np.zeros(20, dtype=np.int64), labels) == pytest.approx(0.0)
    # one count per (item, active bucket): two pure buckets per class give I = H(Y) = log 4 and
    # H(C) = log 8, so NMI = 2 log 4 / (log 8 + log 4) = 0.8
    codes = np.stack([2 * labels, 2 * labels + 1], axis=1)
    assert qk.metrics.nmi(codes, labels) == pytest.approx(0.8)


@given(st.lists(st.integers(0, 1000), min_size=1, max_size=30), st.integers(1, 10**6))
def test_search_speedup_matches_reference(counts, db_size):
    got = qk.metrics.search_speedup(np.array(counts), db_size)
    expected = ref.search_speedup(counts, db_size)
    assert got == pytest.approx(expected) or (math.isinf(got) and math.isinf(expected))


@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.integers(1, 12),
       st.sampled_from(["float", "sign", "01", "bool"]))
def test_bit_balance_matches_reference(seed, n, bits, kind):
    rng = np.random.default_rng(seed)
    skew = rng.uniform(-2, 2, bits)  # uneven bits, some nearly constant
    x = (rng.standard_normal((n, bits)) + skew).astype(np.float32)
    codes = {"float": x, "sign": np.where(x > 0, 1, -1), "01": (x > 0).astype(np.uint8),
             "bool": x > 0}[kind]
    got = qk.metrics.bit_balance(codes)
    expected = ref.bit_balance(codes.tolist())
    assert got.keys() == expected.keys()
    for key in got:
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key


def test_bit_balance_of_balanced_and_of_constant_bits():
    # all four patterns of two bits once each: balanced and independent
    balanced = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]])
    assert qk.metrics.bit_balance(balanced) == {"imbalance": 0.0, "correlation": 0.0,
                                                "entropy": 1.0}
    # a copied bit correlates perfectly; a constant bit is imbalance 1, entropy 0
    copied = np.array([[1, 1, 1], [-1, -1, 1], [1, 1, 1], [-1, -1, 1]])
    got = qk.metrics.bit_balance(copied)
    assert got["imbalance"] == pytest.approx(1 / 3)
    assert got["entropy"] == pytest.approx(2 / 3)
    assert got["correlation"] == pytest.approx(2 / 6)  # (0,1) and (1,0) of 6 ordered pairs
    assert qk.metrics.bit_balance(torch.tensor(balanced)) == qk.metrics.bit_balance(balanced)


def test_hand_computed_values():
    # query 0 (class 1): hit, miss, hit, missing; query 1 (class 0): miss, hit, -1, -1
    db = np.array([1, 0, 1, 2])
    queries = np.array([1, 0])
    I = np.array([[0, 1, 2, -1], [0, 1, -1, -1]])
    assert qk.metrics.precision_at_k(I, db, queries, 4) == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert qk.metrics.precision_at_k(I, db, queries, 1) == pytest.approx(0.5)
    ap0 = (1 / 1 + 2 / 3) / 2
    ap1 = (1 / 2) / 1
    assert qk.metrics.map_at_k(I, db, queries, 4) == pytest.approx((ap0 + ap1) / 2)
    assert qk.metrics.search_speedup(np.array([10, 30]), 1000) == pytest.approx(50.0)


def test_mahp_hand_computed():
    sim = np.array([[1.0, 0.5], [0.5, 1.0]])
    db = np.array([0, 1, 0])
    # query of class 0 gets (class 1, class 0): HP@1 = 0.5 / 1, HP@2 = 1.5 / 2
    value = qk.metrics.mahp_at_k(np.array([[1, 0]]), db, np.array([0]), sim, 2)
    assert value == pytest.approx((0.5 + 0.75) / 2)


def test_metrics_accept_torch_tensors():
    I = torch.tensor([[0, 1], [1, -1]])
    db = torch.tensor([0, 1])
    q = torch.tensor([0, 0])
    assert qk.metrics.precision_at_k(I, db, q, 2) == pytest.approx(ref.precision_at_k(
        I.numpy(), db.numpy(), q.numpy(), 2))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: qk.metrics.precision_at_k(np.zeros((2, 3), int), np.zeros(4, int),
                                           np.zeros(2, int), 4), "larger than the 3 results"),
        (lambda: qk.metrics.precision_at_k(np.zeros((2, 3), int), np.zeros(4, int),
                                           np.zeros(3, int), 2), "rows"),
        (lambda: qk.metrics.precision_at_k(np.full((1, 2), 7), np.zeros(4, int),
                                           np.zeros(1, int), 2), "indices in 0..3"),
        (lambda: qk.metrics.precision_at_k(np.zeros((1, 2), int), np.zeros(4, int),
                                           np.zeros(1, int), 0), "k must be >= 1"),
        (lambda: qk.metrics.map_at_k(np.zeros((1, 2), int), np.full((4, 2), 3),
                                     np.zeros((1, 2), int), 2), "only 0 and 1"),
        (lambda: qk.metrics.map_at_k(np.zeros((1, 2), int), np.zeros(4, int),
                                     np.zeros((1, 2), int), 2), "both"),
        (lambda: qk.metrics.precision_at_k(np.zeros((1, 2)), np.zeros(4, int),
                                           np.zeros(1, int), 2), "integers"),
        (lambda: qk.metrics.nmi(np.zeros(3, int), np.zeros(4, int)), "rows"),
        (lambda: qk.metrics.nmi(np.full(3, -1), np.zeros(3, int)), "no bucket"),
        (lambda: qk.metrics.search_speedup(np.array([], dtype=np.int64), 10), "empty"),
        (lambda: qk.metrics.search_speedup(np.array([-1]), 10), "indices"),
        (lambda: qk.metrics.search_speedup(np.array([1]), 0), "db_size must be >= 1"),
        (lambda: qk.metrics.search_speedup([1, 2], 10), "numpy array, a torch tensor"),
        (lambda: qk.metrics.mahp_at_k(np.zeros((1, 1), int), np.zeros(2, int), np.zeros(1, int),
                                      np.ones((2, 3)), 1), "square"),
        (lambda: qk.metrics.mahp_at_k(np.zeros((1, 1), int), np.zeros(2, int), np.zeros(1, int),
                                      -np.ones((2, 2)), 1), ">= 0"),
        (lambda: qk.metrics.bit_balance(np.zeros(4)), "bits"),
        (lambda: qk.metrics.bit_balance(np.zeros((0, 4))), "at least one item"),
        (lambda: qk.metrics.bit_balance(np.full((2, 2), np.nan)), "codes must be finite"),
    ],
)
def test_bad_input_gets_a_clear_error(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()
