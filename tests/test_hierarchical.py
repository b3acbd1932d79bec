"""Cascaded codes (CVPR 2019): the hierarchical solver and the compound hash table."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import qkernels as qk
from tests import reference as ref


@st.composite
def hierarchical_problem(draw, max_n=14, max_d=6):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(1, max_n))
    d1 = draw(st.integers(1, max_d))
    d2 = draw(st.integers(1, max_d))
    k = draw(st.integers(1, min(d2, 4)))
    spread = draw(st.sampled_from([2, 20]))  # ties everywhere, or few
    s1 = rng.integers(-spread, spread + 1, (n, d1)).astype(np.float64)
    s2 = rng.integers(-spread, spread + 1, (n, d2)).astype(np.float64)
    sibling = float(draw(st.sampled_from([0, 1, 7, 100])))
    glob = float(draw(st.sampled_from([0, 1, 3, 1000])))
    return s1, s2, k, sibling, glob


@given(hierarchical_problem())
def test_level2_optimum_equals_ortools(problem):
    s1, s2, k, sibling, glob = problem
    level1, level2 = qk.solve_hierarchical_codes(s1, s2, k, sibling, glob)
    assert level1.shape == (len(s1),) and level2.shape == (len(s1), k)
    if k > 1:
        assert (np.diff(level2, axis=1) > 0).all()
    np.testing.assert_array_equal(level1, qk.solve_sparse_codes(s1, 1, glob)[:, 0])
    first, second = qk.hierarchical_code_objective(s1, s2, level1, level2, sibling, glob)
    assert second == ref.level2_ortools(s2.tolist(), level1.tolist(), k, sibling, glob)
    assert second == ref.level2_objective(s2.tolist(), level1.tolist(), level2.tolist(),
                                          sibling, glob)
    assert first == qk.sparse_code_objective(s1, level1[:, None], glob)


@pytest.mark.parametrize("seed", range(6))
def test_hundreds_of_instances_equal_ortools(seed):
    rng = np.random.default_rng(seed)
    for _ in range(50):
        n = int(rng.integers(2, 30))
        d1, d2 = (int(v) for v in rng.integers(1, 12, 2))
        k = int(rng.integers(1, min(d2, 4) + 1))
        s1 = rng.integers(-50, 51, (n, d1)).astype(np.float64)
        s2 = rng.integers(-50, 51, (n, d2)).astype(np.float64)
        sibling, glob = float(rng.choice([1, 10, 100])), float(rng.choice([0, 1, 5]))
        level1, level2 = qk.solve_hierarchical_codes(s1, s2, k, sibling, glob)
        second = qk.hierarchical_code_objective(s1, s2, level1, level2, sibling, glob)[1]
        assert second == ref.level2_ortools(s2.tolist(), level1.tolist(), k, sibling, glob)


@given(hierarchical_problem(max_n=4, max_d=3))
def test_level2_optimum_equals_brute_force(problem):
    s1, s2, k, sibling, glob = problem
    s1, s2 = s1[:4], s2[:4]
    level1, level2 = qk.solve_hierarchical_codes(s1, s2, k, sibling, glob)
    second = qk.hierarchical_code_objective(s1, s2, level1, level2, sibling, glob)[1]
    assert second == ref.level2_brute_force(s2.tolist(), level1.tolist(), k, sibling, glob)


def test_siblings_are_kept_apart_and_batches_equal_loops():
    rng = np.random.default_rng(1)
    s1 = rng.standard_normal((6, 16, 4))  # 16 classes, 4 parents: 4 siblings each
    s2 = rng.standard_normal((6, 16, 8))
    level1, level2 = qk.solve_hierarchical_codes(s1, s2, 2, penalty_sibling=100.0)
    for b in range(6):
        one1, one2 = qk.solve_hierarchical_codes(s1[b], s2[b], 2, penalty_sibling=100.0)
        np.testing.assert_array_equal(level1[b], one1)
        np.testing.assert_array_equal(level2[b], one2)
        compound = level1[b][:, None] * 8 + level2[b]
        # 4 siblings x 2 children fit in 8 children: no two siblings share one
        assert len(np.unique(compound)) == compound.size
    values = qk.hierarchical_code_objective(s1, s2, level1, level2)
    assert values[0].shape == (6,) and values[1].shape == (6,)


def test_torch_in_torch_out_and_errors():
    level1, level2 = qk.solve_hierarchical_codes(torch.randn(5, 3), torch.randn(5, 4), 2)
    assert isinstance(level1, torch.Tensor) and isinstance(level2, torch.Tensor)
    # batched torch input: both objectives come back as torch, equal to the numpy ones
    s1, s2 = torch.randn(3, 6, 3), torch.randn(3, 6, 4)
    b1, b2 = qk.solve_hierarchical_codes(s1, s2, 2)
    values = qk.hierarchical_code_objective(s1, s2, b1, b2)
    want = qk.hierarchical_code_objective(s1.numpy(), s2.numpy(), b1.numpy(), b2.numpy())
    for got, expected in zip(values, want, strict=True):
        assert isinstance(got, torch.Tensor) and got.shape == (3,)
        np.testing.assert_allclose(got.numpy(), expected)
    with pytest.raises(ValueError, match="same batch and class dimensions"):
        qk.solve_hierarchical_codes(np.zeros((3, 2)), np.zeros((4, 2)), 1)
    with pytest.raises(ValueError, match=r"k2 must be in 1\.\.2"):
        qk.solve_hierarchical_codes(np.zeros((3, 2)), np.zeros((3, 2)), 3)
    with pytest.raises(ValueError, match="penalty_sibling must be a finite number >= 0"):
        qk.solve_hierarchical_codes(np.zeros((3, 2)), np.zeros((3, 2)), 1, -1.0)
    with pytest.raises(ValueError, match="scores2 must be finite"):
        qk.solve_hierarchical_codes(np.zeros((3, 2)), np.full((3, 2), np.nan), 1)


@given(st.integers(0, 2**32 - 1), st.integers(0, 150), st.integers(1, 6), st.integers(1, 3),
       st.integers(1, 40))
def test_hierarchical_table_equals_the_reference(seed, n, d, k, topk):
    rng = np.random.default_rng(seed)
    k = min(k, d)
    labels = rng.integers(0, 5, n)
    favour1 = rng.standard_normal((5, d)) * 2
    favour2 = rng.standard_normal((5, d)) * 2
    a1 = np.round(favour1[labels] + rng.standard_normal((n, d)))  # rounding makes ties
    a2 = np.round(favour2[labels] + rng.standard_normal((n, d)))
    emb = rng.standard_normal((n, 5)).astype(np.float32)
    q1 = np.round(rng.standard_normal((7, d)) * 2)
    q2 = np.round(rng.standard_normal((7, d)) * 2)
    q_emb = rng.standard_normal((7, 5)).astype(np.float32)
    table = qk.HierarchicalHashTable(d, k).add(a1, a2, emb)
    D, I = table.search(q1, q2, q_emb, topk)
    parents = [ref.ranked_buckets(row)[0] for row in a1]
    children = [ref.ranked_buckets(row)[:k] for row in a2]
    rD, rI, counts = ref.hierarchical_table_search(parents, children, emb, q1, q2, q_emb, k,
                                                   topk)
    np.testing.assert_array_equal(I, rI)
    np.testing.assert_array_equal(D, np.array(rD, dtype=np.float32))
    np.testing.assert_array_equal(table.candidate_counts, counts)


def test_probe_order_walks_the_best_parent_first():
    order = ref.hierarchical_probe_order([0.1, 0.9, 0.5], [0.3, 0.1, 0.7])
    assert order[:3] == [1 * 3 + 2, 1 * 3 + 0, 1 * 3 + 1]  # parent 1, children by rank
    assert order[3:6] == [2 * 3 + 2, 2 * 3 + 0, 2 * 3 + 1]  # then parent 2


def test_hierarchical_table_codes_save_load(tmp_path):
    rng = np.random.default_rng(2)
    emb = rng.standard_normal((40, 4)).astype(np.float32)
    parents = rng.integers(0, 3, 40)
    children = np.stack([rng.permutation(3)[:2] for _ in range(40)])
    table = qk.HierarchicalHashTable(3, 2).add_codes(parents, children, emb)
    q1, q2 = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    before = table.search(q1, q2, emb[:5], 6)
    table.save(tmp_path / "h.npz")
    loaded = qk.HierarchicalHashTable.load(tmp_path / "h.npz")
    for a, b in zip(before, loaded.search(q1, q2, emb[:5], 6), strict=True):
        np.testing.assert_array_equal(a, b)
    qk.SparseHashTable(9, 2).save(tmp_path / "flat.npz")
    with pytest.raises(ValueError, match="not a qkernels HierarchicalHashTable file"):
        qk.HierarchicalHashTable.load(tmp_path / "flat.npz")
    with pytest.raises(ValueError, match=r"level2 must be \(40, 2\)"):
        table.add_codes(parents, children[:, :1], emb)
    # a repeated child is named as given (it was named "codes", in compound buckets)
    with pytest.raises(ValueError, match=r"level2 must hold distinct buckets in each row; "
                                         r"row 1 is \[2, 2\]"):
        table.add_codes(np.array([1, 2]), np.array([[0, 1], [2, 2]]), emb[:2])


def test_torch_tensors_add_and_search_as_numpy_arrays_do():
    """add() makes the codes on the host from torch activations; the embeddings and ids are
    the caller's tensors (a mix the inner table once refused)."""
    rng = np.random.default_rng(3)
    a1, a2 = rng.standard_normal((60, 4)), rng.standard_normal((60, 4))
    emb = rng.standard_normal((60, 5)).astype(np.float32)
    ids = np.arange(60) * 3
    by_numpy = qk.HierarchicalHashTable(4, 2).add(a1, a2, emb, ids)
    by_torch = qk.HierarchicalHashTable(4, 2).add(torch.from_numpy(a1), torch.from_numpy(a2),
                                                  torch.from_numpy(emb), torch.from_numpy(ids))
    D, I = by_torch.search(torch.from_numpy(a1[:7]), torch.from_numpy(a2[:7]),
                           torch.from_numpy(emb[:7]), 5)
    want = by_numpy.search(a1[:7], a2[:7], emb[:7], 5)
    assert isinstance(D, torch.Tensor) and isinstance(I, torch.Tensor)
    np.testing.assert_array_equal(I.numpy(), want[1])
    np.testing.assert_array_equal(D.numpy(), want[0])
    with pytest.raises(TypeError, match="one library"):
        qk.HierarchicalHashTable(4, 2).add_codes(np.zeros(3, dtype=np.int64),
                                                 np.tile([0, 1], (3, 1)), torch.zeros(3, 5))


def test_assign_hierarchical_codes_gives_classes_one_code_and_matches_a_direct_solve():
    from qkernels.losses import assign_hierarchical_codes

    rng = np.random.default_rng(3)
    a1 = torch.from_numpy(rng.standard_normal((24, 4)))
    a2 = torch.from_numpy(rng.standard_normal((24, 6)))
    labels = torch.from_numpy(np.arange(24) % 8)
    codes = assign_hierarchical_codes(a1, a2, labels, 2, 100.0, 0.5)
    assert codes.level1.shape == (24,) and codes.level2.shape == (24, 2)
    assert (codes.mask1.sum(1) == 1).all() and (codes.mask2.sum(1) == 2).all()
    unit = torch.nn.functional.normalize
    m1 = torch.stack([unit(a1, dim=1)[labels == c].mean(0) for c in range(8)])
    m2 = torch.stack([unit(a2, dim=1)[labels == c].mean(0) for c in range(8)])
    level1, level2 = qk.solve_hierarchical_codes(m1, m2, 2, 100.0, 0.5)
    np.testing.assert_array_equal(codes.level1.numpy(), level1.numpy()[labels.numpy()])
    np.testing.assert_array_equal(codes.level2.numpy(), level2.numpy()[labels.numpy()])


def test_the_protocol_on_compound_tables_equals_the_reference():
    """Ids, a removal, a merge, a round trip through bytes and an include filter on a
    cascaded table: the loop reference over the items that remain and pass."""
    rng = np.random.default_rng(8)
    n, d = 120, 4
    parents, children = rng.integers(0, d, n), np.stack([rng.permutation(d)[:2]
                                                         for _ in range(n)])
    emb = rng.integers(0, 3, (n, 3)).astype(np.float32)
    ids = rng.permutation(1000)[:n]
    table = qk.HierarchicalHashTable(d, 2).add_codes(parents[:80], children[:80], emb[:80],
                                                     ids[:80])
    other = qk.HierarchicalHashTable(d, 2).add_codes(parents[80:], children[80:], emb[80:],
                                                     ids[80:])
    table.merge_from(other)
    gone = ids[::7]
    assert table.remove_ids(gone) == gone.shape[0]
    table = qk.HierarchicalHashTable.from_bytes(table.to_bytes())
    allowed = ids[::2]
    q1, q2 = rng.standard_normal((6, d)), rng.standard_normal((6, d))
    q_emb = rng.integers(0, 3, (6, 3)).astype(np.float32)
    D, I = table.search(q1, q2, q_emb, 5, include=allowed)
    keep = np.isin(ids, allowed) & ~np.isin(ids, gone)
    want_d, want_i, counts = ref.hierarchical_table_search(
        parents[keep], children[keep], emb[keep], q1, q2, q_emb, 2, 5)
    kept_ids = ids[keep]
    np.testing.assert_array_equal(I, [[kept_ids[r] if r >= 0 else -1 for r in row]
                                      for row in want_i])
    np.testing.assert_array_equal(D, np.array(want_d, dtype=np.float32))
    np.testing.assert_array_equal(table.candidate_counts, counts)
    assert table.ids.tolist() == [i for i in ids if i not in set(gone.tolist())]
