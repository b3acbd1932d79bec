"""The PyTorch losses: loop references, gradcheck, behaviour, and bad input."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import qkernels as qk
from qkernels.losses import (
    BinaryKLLoss,
    CodebookRefresher,
    DQNLoss,
    NPairsLoss,
    RelativeDistanceLoss,
    SemiHardTripletLoss,
    assign_batch_codes,
    assign_hierarchical_codes,
)
from tests import reference as ref

f64 = torch.float64


def batch(seed, n=12, d=6, classes=3, multilabel=False):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((n, d)))
    if multilabel:
        labels = (rng.random((n, classes)) < 0.4).astype(np.int64)
        labels[:, 0] |= labels.sum(1) == 0
    else:
        labels = np.arange(n) % classes  # every class present at least twice
        rng.shuffle(labels)
    masks = torch.from_numpy((rng.random((n, d)) < 0.5).astype(np.float64))
    return x, torch.from_numpy(labels), masks


# ------------------------------------------------------------------ references


@given(st.integers(0, 2**32 - 1), st.sampled_from(["l1", "sqeuclidean"]), st.booleans(),
       st.floats(0.0, 2.0))
def test_triplet_equals_reference(seed, distance, masked, margin):
    x, labels, masks = batch(seed)
    loss = SemiHardTripletLoss(margin, distance)(x, labels, masks if masked else None)
    expected = ref.semi_hard_triplet(x.tolist(), labels.tolist(), margin,
                                     masks.tolist() if masked else None, distance)
    assert float(loss) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@given(st.integers(0, 2**32 - 1), st.booleans(), st.sampled_from([None, 0.5, 4.0]))
def test_npairs_equals_reference(seed, masked, scale):
    a, labels, ma = batch(seed, n=8)
    p, _, mp = batch(seed + 1, n=8)
    args = (ma, mp) if masked else (None, None)
    loss = NPairsLoss(0.01, scale)(a, p, labels, *args)
    expected = ref.npairs(a.tolist(), p.tolist(), labels.tolist(), 0.01,
                          *(m.tolist() if m is not None else None for m in args), scale)
    assert float(loss) == pytest.approx(expected, rel=1e-9)


@given(st.integers(0, 2**32 - 1), st.booleans(), st.floats(0.01, 100.0))
def test_scaled_npairs_ignores_the_outputs_length(seed, masked, factor):
    # normalised to length s first, the loss sees only directions: a network cannot lower
    # it by growing its outputs, which is what the unnormalised loss rewards
    a, labels, ma = batch(seed, n=8)
    p, _, mp = batch(seed + 1, n=8)
    masks = (ma, mp) if masked else (None, None)
    loss = NPairsLoss(scale=3.0)
    assert float(loss(factor * a, factor * p, labels, *masks)) == pytest.approx(
        float(loss(a, p, labels, *masks)), rel=1e-9)
    assert "scale=3.0" in repr(loss) and "reg=0.003" in repr(NPairsLoss())


@given(st.integers(0, 2**32 - 1), st.booleans())
def test_dqn_equals_reference(seed, multilabel):
    z, labels, _ = batch(seed, d=8, multilabel=multilabel)
    assert float(DQNLoss()(z, labels)) == pytest.approx(
        ref.dqn(z.tolist(), labels.tolist()), rel=1e-9)
    rng = np.random.default_rng(seed)
    pq = qk.ProductQuantizer(8, 2, 2, iterations=3).train(rng.standard_normal((50, 8)))
    loss = DQNLoss(pq_weight=0.5)(z, labels, pq)
    recon = pq.decode(pq.encode(z.numpy().astype(np.float32)))
    assert float(loss) == pytest.approx(
        ref.dqn(z.tolist(), labels.tolist(), recon.tolist(), 0.5), rel=1e-6)


@given(st.integers(0, 2**32 - 1), st.floats(1e-3, 1e3))
def test_dqn_normalized_quantizes_unit_vectors_and_is_scale_free(seed, scale):
    """normalize=True: the PQ term is that of z / |z| (the reference on unit rows), so scaling
    the outputs changes neither term: the network cannot lower it by shrinking."""
    z, labels, _ = batch(seed, d=8)
    rng = np.random.default_rng(seed)
    train = rng.standard_normal((50, 8))
    pq = qk.ProductQuantizer(8, 2, 2, iterations=3).train(
        (train / np.linalg.norm(train, axis=1, keepdims=True)).astype(np.float32))
    loss = DQNLoss(pq_weight=0.5, normalize=True)
    unit = z / z.norm(dim=1, keepdim=True)
    recon = pq.decode(pq.encode(unit.numpy().astype(np.float32)))
    assert float(loss(z, labels, pq)) == pytest.approx(
        ref.dqn(unit.tolist(), labels.tolist(), recon.tolist(), 0.5), rel=1e-6)
    assert float(loss(z * scale, labels, pq)) == pytest.approx(float(loss(z, labels, pq)),
                                                                 rel=1e-5)


@given(st.integers(0, 2**32 - 1), st.floats(0.5, 3.0))
def test_relative_distance_equals_reference(seed, p):
    h, labels, _ = batch(seed, classes=4)
    rng = np.random.default_rng(seed)
    table = rng.random((4, 4))
    table = (table + table.T) / 2
    np.fill_diagonal(table, 0)
    loss = RelativeDistanceLoss(p)(h, labels, class_distance=table)
    target = table[labels.numpy()[:, None], labels.numpy()[None, :]]
    assert float(loss) == pytest.approx(ref.relative_distance(h.tolist(), target, p), rel=1e-9)
    pairwise = RelativeDistanceLoss(p)(h, target_distances=torch.from_numpy(target))
    assert float(pairwise) == pytest.approx(float(loss), rel=1e-12)


@given(st.integers(0, 2**32 - 1), st.integers(2, 12), st.integers(1, 6))
def test_binary_kl_equals_reference(seed, n, m):
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((n, m)))
    loss = BinaryKLLoss(32)(x, generator=torch.Generator().manual_seed(seed))
    y = torch.randint(0, 2, (32, m), generator=torch.Generator().manual_seed(seed)) * 2 - 1
    assert float(loss) == pytest.approx(ref.binary_kl(x.tolist(), y.tolist()), rel=1e-9)


# ------------------------------------------------------------------ gradients


def test_gradcheck_every_loss():
    x, labels, masks = batch(0)
    p, _, mp = batch(1)
    leaf = lambda t: t.clone().requires_grad_(True)  # noqa: E731
    checks = [
        (lambda a: SemiHardTripletLoss(0.5)(a, labels), (leaf(x),)),
        (lambda a: SemiHardTripletLoss(0.5, "sqeuclidean")(a, labels, masks), (leaf(x),)),
        (lambda a, b: NPairsLoss(0.01)(a, b, labels), (leaf(x), leaf(p))),
        (lambda a, b: NPairsLoss(0.01)(a, b, labels, masks, mp), (leaf(x), leaf(p))),
        (lambda a: DQNLoss()(a, labels), (leaf(x),)),
        (lambda a: RelativeDistanceLoss(2.0)(a, labels, class_distance=np.ones((3, 3)) -
                                              np.eye(3)), (leaf(x),)),
        (lambda a: BinaryKLLoss(16)(a, generator=torch.Generator().manual_seed(0)),
         (leaf(x),)),
    ]
    for fn, inputs in checks:
        assert torch.autograd.gradcheck(fn, inputs)


# ------------------------------------------------------------------ behaviour


def test_masked_losses_equal_unmasked_with_all_ones_masks():
    x, labels, _ = batch(2)
    ones = torch.ones_like(x)
    assert float(SemiHardTripletLoss()(x, labels, ones)) == pytest.approx(
        float(SemiHardTripletLoss()(x, labels)))
    p, _, _ = batch(3)
    assert float(NPairsLoss()(x, p, labels, ones, ones)) == pytest.approx(
        float(NPairsLoss()(x, p, labels)))


def test_relative_distance_is_zero_for_proportional_distances():
    # unit vectors at angles whose cosine distances are known: target = 3 x hash distance
    angles = torch.tensor([0.0, 0.4, 1.1, 2.0, 2.9], dtype=f64)
    h = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    hash_distance = 1 - torch.cos(angles[:, None] - angles[None, :])
    loss = RelativeDistanceLoss()(h, target_distances=3.0 * hash_distance)
    assert float(loss) == pytest.approx(0.0, abs=1e-12)


def test_binary_kl_is_lower_near_corners():
    rng = np.random.default_rng(4)
    corners = torch.from_numpy(rng.choice([-1.0, 1.0], (64, 8)) + 0.05 * rng.standard_normal(
        (64, 8)))
    kl = BinaryKLLoss(512)
    near = kl(corners, generator=torch.Generator().manual_seed(1))
    shrunk = kl(0.2 * corners, generator=torch.Generator().manual_seed(1))
    assert float(near) < float(shrunk)


def test_assign_batch_codes_gives_classes_one_code_and_matches_a_direct_solve():
    rng = np.random.default_rng(5)
    activations = torch.from_numpy(rng.standard_normal((20, 16)))
    labels = torch.from_numpy(np.array([3, 7, 3, 9, 7, 7, 9, 3, 11, 11] * 2))
    codes, mask = assign_batch_codes(activations, labels, 2, penalty=0.5)
    assert codes.shape == (20, 2) and codes.dtype == torch.int64
    assert mask.shape == (20, 16) and mask.dtype == activations.dtype
    assert (mask.sum(1) == 2).all()
    for c in labels.unique():
        rows = codes[labels == c]
        assert (rows == rows[0]).all()
    normalised = torch.nn.functional.normalize(activations, dim=1)
    means = torch.stack([normalised[labels == c].mean(0) for c in labels.unique()])
    direct = qk.solve_sparse_codes(means, 2, 0.5)
    for i, c in enumerate(labels.unique()):
        assert codes[labels == c][0].tolist() == direct[i].tolist()
    assert not codes.requires_grad and not mask.requires_grad


def test_codebook_refresher_refits_every_n_steps():
    pq = qk.ProductQuantizer(8, 2, 2, iterations=2)
    refresher = CodebookRefresher(pq, every=3, max_points=40)
    refits = [refresher.update(torch.randn(10, 8)) for _ in range(7)]
    assert refits == [False, False, True, False, False, True, False]
    assert pq.is_trained and refresher._count <= 50
    # a batch of another dimension is refused before it is kept (it once was kept, and every
    # later re-fit failed in numpy's concatenate)
    with pytest.raises(ValueError, match="z has dimension 7; the quantizer's is 8"):
        refresher.update(torch.randn(10, 7))
    assert [refresher.update(torch.randn(10, 8)) for _ in range(2)] == [False, True]


def test_empty_batch_returns_a_connected_zero():
    empty = torch.zeros(0, 4, requires_grad=True)
    for loss in (SemiHardTripletLoss()(empty, torch.zeros(0, dtype=torch.long)),
                 DQNLoss()(empty, torch.zeros(0, dtype=torch.long))):
        assert float(loss.detach()) == 0.0 and loss.requires_grad


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: SemiHardTripletLoss()(torch.randn(4, 3), torch.tensor([0, 1, 0])), ValueError,
         "labels has 3 entries but the batch has 4"),
        (lambda: SemiHardTripletLoss()(torch.randn(4, 3), torch.zeros(4, dtype=torch.long)),
         ValueError, "at least two classes"),
        (lambda: SemiHardTripletLoss()(torch.randn(3, 3), torch.tensor([0, 1, 2])), ValueError,
         "two items of one class"),
        (lambda: NPairsLoss()(torch.randn(3, 2), torch.randn(3, 2), torch.zeros(3, dtype=int)),
         ValueError, "at least two classes"),
        (lambda: NPairsLoss()(torch.randn(3, 2), torch.randn(3, 4), torch.arange(3)),
         ValueError, "same shape"),
        (lambda: RelativeDistanceLoss()(torch.randn(4, 3), torch.zeros(4, dtype=torch.long),
                                        class_distance=np.zeros((1, 1))), ValueError,
         "two classes"),
        (lambda: RelativeDistanceLoss()(torch.randn(4, 3)), ValueError, "either"),
        (lambda: assign_batch_codes(torch.full((2, 3), float("nan")), torch.tensor([0, 1]), 1),
         ValueError, "finite"),
        (lambda: assign_batch_codes(torch.randn(2, 3), torch.tensor([0.5, 1.0]), 1), TypeError,
         "integers"),
        (lambda: assign_batch_codes(torch.randn(2, 3), torch.tensor([0, 1]), 4), ValueError,
         r"k must be in 1\.\.3"),
        (lambda: SemiHardTripletLoss()(np.zeros((2, 2)), [0, 1]), TypeError, "torch tensor"),
        (lambda: BinaryKLLoss()(torch.randn(1, 3)), ValueError, "at least two"),
        (lambda: DQNLoss()(torch.randn(2, 3), torch.tensor([[0.5], [1.0]]).long().T), ValueError,
         "labels has 1 entries"),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_activations_are_averaged_in_float32(dtype):
    """Activations in half precision (as autocast makes them) get the codes of the same
    values in float32, and masks in their own dtype (bfloat16 was refused: numpy has none)."""
    torch.manual_seed(0)
    labels = torch.arange(64) % 16
    a = torch.randn(64, 32).to(dtype)
    codes, mask = assign_batch_codes(a, labels, 2)
    want_codes, want_mask = assign_batch_codes(a.float(), labels, 2)
    assert torch.equal(codes, want_codes) and mask.dtype == dtype
    assert torch.equal(mask.float(), want_mask)
    b = torch.randn(64, 16).to(dtype)
    got = assign_hierarchical_codes(a, b, labels, 2)
    want = assign_hierarchical_codes(a.float(), b.float(), labels, 2)
    assert torch.equal(got.level1, want.level1) and torch.equal(got.level2, want.level2)
    assert got.mask1.dtype == got.mask2.dtype == dtype
