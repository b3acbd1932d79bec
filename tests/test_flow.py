"""solve_sparse_codes: exact against OR-tools, networkx, HiGHS and brute force."""

import numba
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import qkernels as qk
from qkernels import _heap, _simd
from tests import reference as ref


def _incr(n, penalty=1.0, bucket_costs=None):
    return ref.increments(n, penalty, bucket_costs)


def _check_codes(codes, n, d, k):
    assert codes.shape == (n, k)
    assert codes.dtype == np.int64
    assert ((codes >= 0) & (codes < d)).all()
    if k > 1:
        assert (np.diff(codes, axis=1) > 0).all(), "rows must be sorted with distinct buckets"


@st.composite
def integer_problem(draw, max_n=12, max_d=10):
    """Integer-valued problems across the regimes that stress the solver."""
    regime = draw(st.sampled_from(["ties", "wide", "n>d", "congested", "k=d", "penalty0",
                                   "penalty_huge", "float32"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(1, max_n))
    d = draw(st.integers(1, max_d))
    k = draw(st.integers(1, min(d, 4)))
    low, high = -20, 21
    penalty = float(draw(st.integers(0, 12)))
    if regime == "ties":
        low, high = 0, 2
    elif regime == "n>d":
        d = draw(st.integers(1, max(1, n - 1)))
        k = min(k, d)
    elif regime == "congested":
        k = draw(st.integers(1, min(d, 4)))
        n = max(n, (2 * d) // k + 1)
    elif regime == "k=d":
        k = d
    elif regime == "penalty0":
        penalty = 0.0
    elif regime == "penalty_huge":
        penalty = 10_000.0
    scores = rng.integers(low, high, (n, d)).astype(np.float64)
    if regime == "float32":
        scores = scores.astype(np.float32)
    return scores, k, penalty


@given(integer_problem())
def test_optimum_equals_ortools(problem):
    scores, k, penalty = problem
    n, d = scores.shape
    codes = qk.solve_sparse_codes(scores, k, penalty)
    _check_codes(codes, n, d, k)
    got = qk.sparse_code_objective(scores, codes, penalty)
    assert got == ref.sparse_codes_ortools(scores.tolist(), k, _incr(n, penalty))


@pytest.mark.parametrize("seed", range(8))
def test_hundreds_of_random_instances_equal_ortools(seed):
    """A deterministic sweep (8 x 40 instances) beside the hypothesis search above."""
    rng = np.random.default_rng(seed)
    for _ in range(40):
        n, d = rng.integers(1, 40, 2)
        k = int(rng.integers(1, min(d, 4) + 1))
        scores = rng.integers(-50, 51, (n, d)).astype(np.float64)
        penalty = float(rng.choice([0, 1, 5, 20, 100]))
        codes = qk.solve_sparse_codes(scores, k, penalty)
        _check_codes(codes, n, d, k)
        assert qk.sparse_code_objective(scores, codes, penalty) == ref.sparse_codes_ortools(
            scores.tolist(), k, _incr(n, penalty)
        )


@pytest.mark.parametrize(("n", "d", "k"), [(64, 64, 4), (96, 32, 3), (64, 64, 1), (40, 200, 2),
                                           (150, 2, 1), (130, 3, 2)])
def test_dht_like_crowded_problems_equal_ortools(n, d, k):
    """Sizes the solver meets in training: class means of unit vectors x 1e4 against a penalty
    of 1e4 (the greedy start is then far from even loads), and a mild penalty of 300; and
    buckets of more than 64 classes (the search offers a bucket's classes 64 at a time)."""
    rng = np.random.default_rng(n * d + k)
    for penalty in (1e4, 300.0):
        for _ in range(3):
            out = rng.standard_normal((n, 2, d))
            out /= np.linalg.norm(out, axis=-1, keepdims=True)
            scores = np.trunc(out.mean(axis=1) * 1e4)
            codes = qk.solve_sparse_codes(scores, k, penalty)
            _check_codes(codes, n, d, k)
            assert qk.sparse_code_objective(scores, codes, penalty) == (
                ref.sparse_codes_ortools(scores.tolist(), k, _incr(n, penalty)))


@pytest.mark.parametrize("size", [1, 7, 8, 72, 1000])
def test_solver_scratch_starts_on_a_cache_line(size):
    """The labels, predecessors and potentials the solver reads eight lanes at a time start on
    a 64-byte boundary whatever the allocator returns (Numba aligns to 32 bytes)."""
    from qkernels.flow import _flat_cpu

    for make, dtype in ((_flat_cpu.lines, np.float64), (_flat_cpu.int_lines, np.int64)):
        for _ in range(16):  # half of the allocations start 32 bytes off a line
            array = make(size)
            assert array.shape == (size,) and array.dtype == dtype
            assert array.ctypes.data % 64 == 0


@given(integer_problem(), st.booleans())
def test_final_potentials_certify_the_optimum(problem, general_costs):
    """The potentials the solver ends with are dual feasible and complementary to its codes:
    every residual arc has a reduced cost >= 0, a certificate of optimality independent of any
    other solver (the level-2 solver starts from them)."""
    from qkernels.flow import _flat_cpu

    scores, k, penalty = problem
    n, d = scores.shape
    incr = np.asarray(_incr(n, penalty), dtype=np.float64)
    if general_costs:
        incr = np.cumsum(np.random.default_rng(n * d).integers(0, 4, n)) - 3.0
    codes = np.empty((n, k), dtype=np.int64)
    pb, pc = np.empty(d), np.empty(n)
    psink = _flat_cpu.solve_with_potentials(scores.astype(np.float64), k, incr, codes, pb, pc)
    _check_codes(codes, n, d, k)
    assigned = np.zeros((n, d), dtype=bool)
    np.put_along_axis(assigned, codes, True, axis=1)
    reduced = -scores + pc[:, None] - pb[None, :]  # class -> bucket
    assert (reduced[~assigned] >= 0).all() and (reduced[assigned] <= 0).all()
    load = assigned.sum(axis=0)
    more = np.where(load < incr.size, incr[np.minimum(load, incr.size - 1)], np.inf)
    less = np.where(load > 0, incr[np.maximum(load - 1, 0)], -np.inf)
    assert (more + pb - psink >= 0).all() and (psink - pb - less >= 0).all()


@given(integer_problem(max_n=4, max_d=4))
def test_optimum_equals_brute_force(problem):
    scores, k, penalty = problem
    n = scores.shape[0]
    if n > 4:
        scores = scores[:4]
        n = 4
    codes = qk.solve_sparse_codes(scores, k, penalty)
    assert qk.sparse_code_objective(scores, codes, penalty) == ref.sparse_codes_brute_force(
        scores.tolist(), k, _incr(n, penalty)
    )


@given(integer_problem(max_n=8, max_d=8))
def test_optimum_equals_networkx(problem):
    scores, k, penalty = problem
    n = scores.shape[0]
    codes = qk.solve_sparse_codes(scores, k, penalty)
    assert qk.sparse_code_objective(scores, codes, penalty) == ref.sparse_codes_networkx(
        scores.tolist(), k, _incr(n, penalty)
    )


@given(st.integers(0, 2**32 - 1), st.integers(1, 10), st.integers(1, 10),
       st.floats(0.0, 3.0), st.sampled_from([np.float32, np.float64]))
def test_real_valued_scores_reach_the_lp_optimum(seed, n, d, penalty, dtype):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, min(d, 4) + 1))
    scores = rng.standard_normal((n, d)).astype(dtype)
    codes = qk.solve_sparse_codes(scores, k, penalty)
    _check_codes(codes, n, d, k)
    got = qk.sparse_code_objective(scores, codes, penalty)
    expected = ref.sparse_codes_linprog(scores.astype(np.float64).tolist(), k, _incr(n, penalty))
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)


@given(st.integers(0, 2**32 - 1), st.integers(1, 10), st.integers(1, 8))
def test_general_convex_bucket_costs(seed, n, d):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, min(d, 3) + 1))
    scores = rng.integers(-10, 11, (n, d)).astype(np.float64)
    # a convex schedule that may start negative (a reward for the first classes in a bucket)
    bucket_costs = np.cumsum(rng.integers(0, 6, n + 2)) - 4
    codes = qk.solve_sparse_codes(scores, k, bucket_costs=bucket_costs)
    got = qk.sparse_code_objective(scores, codes, bucket_costs=bucket_costs)
    incr = _incr(n, bucket_costs=bucket_costs)
    assert got == ref.sparse_code_objective(scores.tolist(), codes.tolist(), incr)
    assert got == ref.sparse_codes_ortools(scores.tolist(), k, incr)


@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(1, 6), st.integers(1, 6))
def test_objective_matches_the_loop_reference(seed, b, n, d):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, d + 1))
    scores = rng.standard_normal((b, n, d))
    codes = np.sort(np.stack([np.stack([rng.permutation(d)[:k] for _ in range(n)])
                              for _ in range(b)]), axis=-1)
    penalty = float(rng.uniform(0, 2))
    values = qk.sparse_code_objective(scores, codes, penalty)
    assert values.shape == (b,)
    for i in range(b):
        expected = ref.sparse_code_objective(scores[i].tolist(), codes[i].tolist(),
                                             _incr(n, penalty))
        assert values[i] == pytest.approx(expected, abs=1e-9)
        assert qk.sparse_code_objective(scores[i], codes[i], penalty) == pytest.approx(expected)


@numba.njit
def _relax_into(scores, j, assigned, pb, label, pred, base, floor):
    label_out = np.full(label.shape[0], -1.0)
    pred_out = np.full(pred.shape[0], -1)
    _simd.relax_into(scores, j, assigned, pb, label, pred, label_out, pred_out, base, floor)
    return label_out, pred_out


@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.integers(1, 21),
       st.sampled_from(["ties", "float", "signed zeros"]))
def test_relaxation_equals_the_scalar_loop_to_the_bit(seed, n, d, values):
    """The solver's vector relaxation (eight buckets a step, the rest one by one) against the
    scalar loop: the same labels, bit for bit, and preds, with ties, the clamp at ``floor``
    acting, assigned arcs, unlabelled (inf) buckets and signed zeros; nothing past ``d``."""
    rng = np.random.default_rng(seed)
    if values == "ties":
        draw = lambda *shape: rng.integers(-2, 3, shape).astype(np.float64)  # noqa: E731
    elif values == "float":
        draw = lambda *shape: rng.standard_normal(shape) * 10  # noqa: E731
    else:
        draw = lambda *shape: rng.choice([-0.0, 0.0, 1.0, -1.0], shape)  # noqa: E731
    scores, pb = draw(n, d), draw(d)
    label = np.abs(draw(d + 3))
    label[rng.random(d + 3) < 0.3] = np.inf
    pred = rng.integers(-1, n, d + 3)
    assigned = rng.random((n, d)) < 0.3
    j = int(rng.integers(n))
    floor = float(np.abs(draw(1))[0])
    base = floor + float(draw(1)[0])
    if values == "signed zeros":  # -0.0 in the base and at the floor too
        floor, base = (float(x) for x in draw(2))
    got_label, got_pred = _relax_into(scores, j, assigned, pb, label, pred, base, floor)
    want_label, want_pred = ref.relax_class(scores.tolist(), j, assigned.tolist(), pb.tolist(),
                                            label[:d].tolist(), pred[:d].tolist(), base, floor)
    np.testing.assert_array_equal(got_label[:d].view(np.int64),
                                  np.array(want_label).view(np.int64))
    np.testing.assert_array_equal(got_pred[:d], want_pred)
    assert (got_label[d:] == -1.0).all() and (got_pred[d:] == -1).all()


@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.integers(1, 8),
       st.sampled_from(["ties", "float", "signed zeros"]))
def test_greedy_top_k_equals_the_sorted_reference(seed, d, k, values):
    """The greedy start's k vectorised maxima (integer keys of the doubles) against a sort:
    largest first, lower index first on ties, -0.0 tied with 0.0, huge and tiny magnitudes
    of both signs."""
    k = min(k, d)
    rng = np.random.default_rng(seed)
    if values == "ties":
        row = rng.integers(-2, 3, d).astype(np.float64)
    elif values == "float":
        row = rng.standard_normal(d) * 10.0 ** rng.integers(-300, 300, d)
    else:
        row = rng.choice([-0.0, 0.0, 1.0, -1.0, 5e-324, -5e-324], d)
    out = np.full(k, -1)
    keys = np.empty((d + 7) // 8 * 8, dtype=np.int64)
    last = _heap.top_k_small(row.view(np.int64), k, out, keys)
    want = ref.top_k(row.tolist(), k)
    np.testing.assert_array_equal(out, want)
    assert last == want[-1]
    # two rows at once (the second reversed), each its own answer
    pair = np.full((2, k), -1)
    lasts = _top_k_pair(row.view(np.int64), row[::-1].copy().view(np.int64), k, pair[0],
                        pair[1], np.empty((2, keys.shape[0]), dtype=np.int64))
    want_b = ref.top_k(row[::-1].tolist(), k)
    np.testing.assert_array_equal(pair, [want, want_b])
    assert lasts == (want[-1], want_b[-1])


@numba.njit
def _top_k_pair(bits_a, bits_b, k, out_a, out_b, keys):
    return _heap.top_k_small_pair(bits_a, bits_b, k, out_a, out_b, keys)


@numba.njit
def _top_k_rows(bits, k, out, keys, picks):
    _heap.top_k_rows(bits, k, out, keys, picks)


@numba.njit
def _least_k_lanes(keys, k, out):
    _simd.least_k_lanes(keys, k, out)


@given(st.integers(0, 2**32 - 1), st.integers(1, 20), st.integers(1, 40), st.integers(1, 8),
       st.sampled_from(["ties", "float", "signed zeros"]))
def test_top_k_rows_equal_the_sorted_reference(seed, n, d, k, values):
    """The greedy start's k best buckets of every class, eight rows at a time from k = 3 (the
    rows as lanes, each column inserted into their sorted lists): each row's answer is the
    sort's, largest first, lower index first on ties; a last group of fewer than eight rows,
    and columns that do not fill a step of eight."""
    k = min(k, d)
    rng = np.random.default_rng(seed)
    if values == "ties":
        rows = rng.integers(-2, 3, (n, d)).astype(np.float64)
    elif values == "float":
        rows = rng.standard_normal((n, d)) * 10.0 ** rng.integers(-300, 300, (n, d))
    else:
        rows = rng.choice([-0.0, 0.0, 1.0, -1.0, 5e-324, -5e-324], (n, d))
    out = np.full((n, k), -1)
    _top_k_rows(rows.view(np.int64), k, out, np.empty((8, (d + 7) // 8 * 8), dtype=np.int64),
                np.empty((8, _heap.SMALL_K), dtype=np.int64))
    np.testing.assert_array_equal(out, [ref.top_k(row, k) for row in rows.tolist()])


@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(1, 8))
def test_least_k_lanes_walk_each_row_in_order(seed, steps, k):
    """Each of the eight rows' k least int64 keys, least first and the lower column first
    among equal ones: the first k pairs of that row sorted by (key, column), as least_after
    walks them; the smallest keys and the one below the padding included."""
    rng = np.random.default_rng(seed)
    width = 8 * steps
    keys = rng.choice(np.array([-(2**63), -5, -1, 0, 3, 2**62, 2**63 - 2]), (8, width))
    keys[:, rng.random(width) < 0.2] = 2**63 - 1  # padding, never picked
    keys[:, :k] = np.minimum(keys[:, :k], 2**63 - 2)  # at least k keys below it
    out = np.full((8, 8), -1)
    _least_k_lanes(keys, k, out)
    for lane in range(8):
        want = [i for _, i in sorted((int(a), i) for i, a in enumerate(keys[lane]))][:k]
        assert out[lane, :k].tolist() == want


@numba.njit
def _nearest_node(label_bits, done, deficit, size):
    return _simd.nearest_node(label_bits, done, deficit, size)


@numba.njit
def _least_node(key_bits, size):
    return _simd.least_node(key_bits, size)


@numba.njit
def _least_after(key_bits, size, key, node):
    return _simd.least_after(key_bits, size, key, node)


@given(st.integers(0, 2**32 - 1), st.integers(1, 9), st.sampled_from(["ties", "float"]))
def test_nearest_node_equals_the_reference(seed, steps, values):
    """The solver's one-pass selection (eight keys a step) against min and index: the least
    key, the first node holding it (ties within and across lanes), the least deficit key and
    the first deficit node holding it; settled, unlabelled (inf) and no deficit nodes."""
    rng = np.random.default_rng(seed)
    size = 8 * steps
    if values == "ties":
        labels = rng.choice([0.0, 1.0, 2.0, np.inf], size)
    else:
        labels = np.abs(rng.standard_normal(size))
        labels[rng.random(size) < 0.3] = np.inf
    label_bits = labels.view(np.int64)
    done = rng.random(size) < 0.4
    deficit = rng.random(size) < rng.choice([0.0, 0.05, 0.3])
    got = _nearest_node(label_bits, ref.byte_mask(done), ref.byte_mask(deficit), size)
    want = ref.nearest_node(label_bits, done, deficit)
    assert got == want
    no = np.zeros(size, dtype=bool)
    assert _least_node(label_bits, size) == ref.nearest_node(label_bits, no, no)[:2]
    # least_node takes any int64 keys (the greedy start's are complements of score keys),
    # the largest included
    for choices in ([-(2**63), -1, 0, 2**62, 2**63 - 2, 2**63 - 1], [2**63 - 2, 2**63 - 1]):
        keys = rng.choice(np.array(choices), size)
        assert _least_node(keys, size) == (keys.min(), int(np.argmin(keys)))


@given(st.integers(0, 2**32 - 1), st.integers(1, 9))
def test_least_after_walks_the_keys_in_order(seed, steps):
    """Each call of least_after from the pair before it gives the next (key, node) pair of the
    keys sorted by key then node, ties and the largest keys included, to the end."""
    rng = np.random.default_rng(seed)
    size = 8 * steps
    keys = rng.choice(np.array([-(2**63), -5, -1, 0, 3, 2**62, 2**63 - 2]), size)
    key, node = -(2**63), -1
    for want in sorted((int(a), i) for i, a in enumerate(keys)):
        got = _least_after(keys, size, key, node)
        assert got == want == ref.least_after(keys, key, node)
        key, node = got
    # after the last pair: none (the node is not read then)
    assert _least_after(keys, size, key, node)[0] == ref.least_after(keys, key, node)[0]


def test_penalty_zero_gives_each_class_its_top_k():
    rng = np.random.default_rng(3)
    scores = rng.standard_normal((20, 30))
    codes = qk.solve_sparse_codes(scores, 3, penalty=0.0)
    np.testing.assert_array_equal(codes, np.sort(np.argsort(-scores, axis=1)[:, :3], axis=1))


def test_huge_penalty_spreads_classes_evenly():
    rng = np.random.default_rng(4)
    codes = qk.solve_sparse_codes(rng.standard_normal((16, 8)), 2, penalty=1e6)
    np.testing.assert_array_equal(np.bincount(codes.ravel(), minlength=8), np.full(8, 4))


def test_ties_break_toward_lower_bucket_indices():
    codes = qk.solve_sparse_codes(np.zeros((1, 5)), 2, penalty=0.0)
    np.testing.assert_array_equal(codes, [[0, 1]])


def test_batched_equals_looped_and_is_deterministic_across_threads():
    rng = np.random.default_rng(5)
    scores = rng.integers(-30, 31, (12, 40, 24)).astype(np.float64)
    batched = qk.solve_sparse_codes(scores, 3, 4.0)
    looped = np.stack([qk.solve_sparse_codes(s, 3, 4.0) for s in scores])
    np.testing.assert_array_equal(batched, looped)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = qk.solve_sparse_codes(scores, 3, 4.0)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(batched, single)
    np.testing.assert_array_equal(batched, qk.solve_sparse_codes(scores, 3, 4.0))


def test_torch_in_torch_out_and_grad_is_detached():
    scores = torch.randn(10, 12, requires_grad=True)
    codes = qk.solve_sparse_codes(scores, 2, 0.5)
    assert isinstance(codes, torch.Tensor)
    assert codes.dtype == torch.int64 and not codes.requires_grad
    np.testing.assert_array_equal(codes.numpy(),
                                  qk.solve_sparse_codes(scores.detach().numpy(), 2, 0.5))
    value = qk.sparse_code_objective(scores, codes, 0.5)
    assert isinstance(value, float)
    batched = qk.sparse_code_objective(
        scores[None].expand(3, -1, -1), codes[None].expand(3, -1, -1), 0.5
    )
    assert isinstance(batched, torch.Tensor) and batched.shape == (3,)


def test_non_contiguous_and_integer_and_bool_scores():
    rng = np.random.default_rng(6)
    base = rng.integers(-5, 6, (9, 7))
    expected = qk.solve_sparse_codes(np.ascontiguousarray(base.T).astype(float), 2, 1.0)
    np.testing.assert_array_equal(qk.solve_sparse_codes(base.T, 2, 1.0), expected)
    np.testing.assert_array_equal(
        qk.solve_sparse_codes(torch.from_numpy(base).t(), 2, 1.0).numpy(), expected)
    bools = rng.random((5, 6)) > 0.5
    assert qk.solve_sparse_codes(bools, 1, 1.0).shape == (5, 1)


def test_empty_problems_return_empty_codes():
    assert qk.solve_sparse_codes(np.zeros((0, 5)), 2).shape == (0, 2)
    assert qk.solve_sparse_codes(np.zeros((3, 0, 5)), 2).shape == (3, 0, 2)
    assert qk.solve_sparse_codes(np.zeros((0, 4, 5)), 2).shape == (0, 4, 2)
    assert qk.sparse_code_objective(np.zeros((0, 5)), np.zeros((0, 2), np.int64)) == 0.0


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: qk.solve_sparse_codes(np.array([[np.nan, 1.0]]), 1), ValueError,
         r"scores must be finite, found nan at index \(0, 0\)"),
        (lambda: qk.solve_sparse_codes(np.array([[np.inf, 1.0]]), 1), ValueError, "finite"),
        (lambda: qk.solve_sparse_codes(np.pad([[[-np.inf]]], ((1, 0), (0, 2), (3, 0))), 1),
         ValueError, r"scores must be finite, found -inf at index \(1, 0, 3\)"),
        (lambda: qk.solve_sparse_codes(np.zeros((2, 3)), 0), ValueError,
         r"k must be in 1\.\.3, got 0"),
        (lambda: qk.solve_sparse_codes(np.zeros((2, 3)), 4), ValueError, r"k must be in 1\.\.3"),
        (lambda: qk.solve_sparse_codes(np.zeros((2, 3)), 1.5), TypeError, "k must be an integer"),
        (lambda: qk.solve_sparse_codes(np.zeros((2, 3)), 1, -1.0), ValueError,
         "penalty must be a finite number >= 0"),
        (lambda: qk.solve_sparse_codes(np.zeros((2, 3)), 1, float("nan")), ValueError, "penalty"),
        (lambda: qk.solve_sparse_codes(np.zeros((2, 3)), 1, float("inf")), ValueError, "penalty"),
        (lambda: qk.solve_sparse_codes(np.zeros(3), 1), ValueError,
         r"scores must have shape \(n, d\) or batched \(B, n, d\), got shape \(3,\)"),
        (lambda: qk.solve_sparse_codes(np.zeros((1, 2, 3, 4)), 1), ValueError, "scores must have"),
        (lambda: qk.solve_sparse_codes(np.zeros((2, 0)), 1), ValueError, "d = 0 buckets"),
        (lambda: qk.solve_sparse_codes(np.zeros((2, 3), complex), 1), TypeError, "real numbers"),
        (lambda: qk.solve_sparse_codes([[1.0, 2.0]], 1), TypeError, "numpy array, a torch"),
        (lambda: qk.solve_sparse_codes(np.zeros((3, 3)), 1, bucket_costs=np.array([0, 2, 1])),
         ValueError, r"non-decreasing .* entry 2 \(1\.0\) is smaller than entry 1 \(2\.0\)"),
        (lambda: qk.solve_sparse_codes(np.zeros((3, 3)), 1, bucket_costs=np.array([0, 1])),
         ValueError, "at least 3"),
        (lambda: qk.solve_sparse_codes(np.zeros((3, 3)), 1, bucket_costs=[0, 1, 2]), TypeError,
         "bucket_costs must be a numpy array, a torch tensor"),
        (lambda: qk.solve_sparse_codes(np.zeros((3, 3)), 1, 2.0, bucket_costs=np.array([0, 1, 2])),
         ValueError, "either penalty or bucket_costs"),
        (lambda: qk.solve_sparse_codes(np.zeros((3, 3)), 1,
                                       bucket_costs=np.array([0, np.nan, 2])),
         ValueError, "bucket_costs must be finite"),
        (lambda: qk.sparse_code_objective(np.zeros((2, 3)), np.array([[0, 0], [1, 2]])),
         ValueError, "distinct"),
        (lambda: qk.sparse_code_objective(np.zeros((2, 3)), np.array([[0], [3]])), ValueError,
         r"indices in 0\.\.2"),
        (lambda: qk.sparse_code_objective(np.zeros((2, 3)), np.array([[0]])), ValueError,
         "codes has shape"),
        (lambda: qk.sparse_code_objective(np.zeros((2, 3)), np.zeros((2, 1))), TypeError,
         "integers"),
        (lambda: qk.sparse_code_objective(np.zeros((2, 3)), torch.zeros(2, 1, dtype=torch.long)),
         TypeError, "scores is a numpy array but codes is a torch array"),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("where", ["host", pytest.param("device", marks=pytest.mark.emulated)])
@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 0, 4), (0, 4)],
                         ids=["no problems", "no classes", "one problem, no classes"])
def test_empty_problems_give_empty_answers(where, shape, request):
    """A batch of no problems, or problems of no classes, through every flow entry point,
    on the host and on the GPU path (the cupy stand-in): codes of shape (..., 0 or n, k) and
    objectives of 0, in the caller's array type."""
    put, get = (lambda a: a), (lambda a: a)
    if where == "device":
        request.getfixturevalue("standin")
        from tests import cupy_standin

        put, get = cupy_standin.module.asarray, cupy_standin.module.asnumpy
    scores = np.zeros(shape)
    codes = get(qk.solve_sparse_codes(put(scores), 2))
    assert codes.shape == (*shape[:-1], 2) and codes.dtype == np.int64
    level1, level2 = qk.solve_hierarchical_codes(put(scores), put(scores), 2)
    assert get(level1).shape == shape[:-1] and get(level2).shape == (*shape[:-1], 2)
    batch = () if len(shape) == 2 else (shape[0],)
    objective = qk.sparse_code_objective(put(scores), put(codes))
    np.testing.assert_array_equal(get(objective), np.zeros(batch))
    first, second = qk.hierarchical_code_objective(put(scores), put(scores), level1, level2)
    np.testing.assert_array_equal(get(first), np.zeros(batch))
    np.testing.assert_array_equal(get(second), np.zeros(batch))
