"""HouseholderQuantizer (H2Q), its losses, and the ITQ baseline."""

import numpy as np
import pytest
import torch

import qkernels as qk
from qkernels.losses import HouseholderQuantizationLoss
from qkernels.quantize._h2q_loss import quantization_loss
from qkernels.quantize.householder import rescale
from tests import reference as ref


def rotated_codes(seed, n=3000, m=16, classes=12, noise=0.35):
    """Embeddings that are a random rotation of +-1 class codes plus noise."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((m, m)))
    centres = rng.choice([-1.0, 1.0], size=(classes, m))
    labels = rng.integers(0, classes, n)
    x = (centres[labels] + noise * rng.standard_normal((n, m))) @ rotation.T
    return x, labels


def hamming_map(codes, labels, features, k=100):
    """mAP@k of Hamming ranking with the H2Q tie-break (queries: the first 300 items)."""
    queries = np.arange(300)
    _, I = qk.hamming_topk(codes[queries], codes, k + 1, tiebreak=(features[queries], features))
    I = np.array([[i for i in row if i != q][:k] for q, row in zip(queries, I, strict=True)])
    return qk.metrics.map_at_k(I, labels, labels[queries], k)


def test_rotation_is_orthogonal_and_the_loss_decreases():
    x, _ = rotated_codes(0)
    h = qk.HouseholderQuantizer(16).fit(x, epochs=25, seed=0)
    U = h.rotation
    np.testing.assert_allclose(U @ U.T, np.eye(16), atol=1e-5)
    before, after = h.history[0]["validation"], h.history[-1]["validation"]
    assert after < 0.5 * before
    assert after < 0.16  # the noise floor of this data is about 0.13
    assert h.history[-1]["train"] < h.history[1]["train"]


def test_learns_the_rotation_back():
    x, labels = rotated_codes(1)
    z = qk.HouseholderQuantizer(16).fit(x, epochs=40, seed=1).transform(x)
    # sign agreement: each class ends up on one code (near perfect)
    signs = z > 0
    agreement = np.mean([(signs[labels == c] == (signs[labels == c].mean(0) > 0.5)).mean()
                         for c in range(12)])
    assert agreement > 0.97


def test_map_beats_plain_sign_and_matches_itq():
    # 64 classes and more noise, so that codes matter despite the Euclidean tie-break
    # (margins seen over seeds 0-2: +0.15..0.22 over sign(), +0.007..0.06 over ITQ)
    x, labels = rotated_codes(0, n=4000, classes=64, noise=0.5)
    normalised = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    h = qk.HouseholderQuantizer(16).fit(x, epochs=40, seed=0)
    ours = hamming_map(h.encode(x), labels, normalised)
    plain = hamming_map(qk.pack_bits(x), labels, normalised)
    itq = hamming_map(qk.ITQ(16, seed=0).fit(x).encode(x), labels, normalised)
    assert ours > plain + 0.1
    assert ours >= itq - 0.005


@pytest.mark.parametrize("kind", ["l2", "l1", "bit_var", "min_entry"])
def test_every_loss_trains_and_keeps_u_orthogonal(kind):
    x, _ = rotated_codes(2, n=600)
    h = qk.HouseholderQuantizer(16, loss=kind).fit(x, epochs=5)
    np.testing.assert_allclose(h.rotation @ h.rotation.T, np.eye(16), atol=1e-5)
    assert h.history[-1]["validation"] <= h.history[0]["validation"]


def test_losses_by_hand_and_gradcheck():
    z = torch.tensor([[0.5, -2.0], [1.0, 0.0]], dtype=torch.float64)
    assert float(HouseholderQuantizationLoss("l2")(z)) == pytest.approx((0.25 + 1 + 0 + 0) / 4)
    assert float(HouseholderQuantizationLoss("l1")(z)) == pytest.approx((0.5 + 1 + 0 + 0) / 4)
    s = torch.sigmoid(z)
    assert float(HouseholderQuantizationLoss("bit_var")(z)) == pytest.approx(
        float((s * (1 - s)).mean()))
    expected = (np.log(np.exp(-0.25) + np.exp(-4.0)) + np.log(np.exp(-1.0) + 1.0)) / 2
    assert float(HouseholderQuantizationLoss("min_entry")(z)) == pytest.approx(expected)
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True) + 0.1
    for kind in ("l2", "l1", "bit_var", "min_entry"):
        assert torch.autograd.gradcheck(HouseholderQuantizationLoss(kind), (w,))
    empty = HouseholderQuantizationLoss()(torch.zeros(0, 3, requires_grad=True))
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_state_save_load_and_torch_io(tmp_path):
    x, _ = rotated_codes(3, n=400)
    h = qk.HouseholderQuantizer(16).fit(x, epochs=3)
    h.save(tmp_path / "h.npz")
    loaded = qk.HouseholderQuantizer.load(tmp_path / "h.npz")
    np.testing.assert_array_equal(loaded.encode(x), h.encode(x))
    again = qk.HouseholderQuantizer(16).load_state_dict(h.state_dict())
    np.testing.assert_array_equal(again.rotation, h.rotation)
    z = h.transform(torch.from_numpy(x))
    assert isinstance(z, torch.Tensor) and z.dtype == torch.float32
    np.testing.assert_allclose(np.linalg.norm(z.numpy(), axis=1), 4.0, rtol=1e-5)


def test_identity_start_codes_like_plain_sign_flipped():
    x, _ = rotated_codes(4, n=50)
    h = qk.HouseholderQuantizer(16)
    np.testing.assert_array_equal(qk.unpack_bits(h.encode(x), 16),
                                  (x < 0).astype(np.uint8))


def test_itq_projection_and_errors():
    x, _ = rotated_codes(5, n=500)
    itq = qk.ITQ(8).fit(x)
    assert itq.encode(x).shape == (500, 1)
    p = itq.projection
    np.testing.assert_allclose(p.T @ p, np.eye(8), atol=1e-8)
    with pytest.raises(ValueError, match="exceeds the input dimension"):
        qk.ITQ(32).fit(x)
    # fewer points than bits span fewer PCA directions (numpy's matmul failed on it)
    with pytest.raises(ValueError, match=r"at least nbits = 8 points to fit .*got 5"):
        qk.ITQ(8).fit(x[:5])
    assert qk.ITQ(8).fit(x[:8]).encode(x).shape == (500, 1)
    with pytest.raises(RuntimeError, match="not fitted"):
        qk.ITQ(4).transform(x)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: qk.HouseholderQuantizer(8, loss="l3"), ValueError, "loss must be one of"),
        (lambda: qk.HouseholderQuantizer(8).fit(np.zeros((10, 7))), ValueError,
         "embeddings has dimension 7"),
        (lambda: qk.HouseholderQuantizer(8).fit(np.full((10, 8), np.nan)), ValueError,
         "finite"),
        (lambda: qk.HouseholderQuantizer(8).fit(np.ones((1, 8))), ValueError, "at least 2"),
        (lambda: qk.HouseholderQuantizer(8).fit(np.ones((9, 8)), validation_fraction=1.0),
         ValueError, "below 1"),
        (lambda: HouseholderQuantizationLoss("x"), ValueError, "kind must be one of"),
        (lambda: HouseholderQuantizationLoss()(torch.zeros(3)), ValueError, "2 dimensions"),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


# ------------------------------------------------------------------ the fit's arithmetic


@pytest.mark.parametrize("m", [1, 2, 7, 33])
def test_the_compact_wy_rotation_is_the_product_of_the_reflections(m):
    from qkernels.quantize.householder import HouseholderQuantizer as H

    weights = torch.from_numpy(np.random.default_rng(m).standard_normal((m, m)))
    np.testing.assert_allclose(H._rotation_of(weights).numpy(),
                               ref.householder_rotation(weights.numpy()), atol=1e-12)


@pytest.mark.parametrize("kind", ["l2", "l1", "bit_var", "min_entry"])
@pytest.mark.parametrize("m", [1, 5, 24])
def test_the_written_out_gradient_is_autograds(kind, m):
    """Against autograd through torch.linalg.householder_product (the fit's former step)."""
    from qkernels.quantize.householder import _loss_and_gradient

    rng = np.random.default_rng(m)
    weights = torch.from_numpy(rng.standard_normal((m, m)) * 0.5)
    batch = torch.from_numpy(rng.standard_normal((37, m)) * 2)
    w = weights.clone().requires_grad_(True)
    lower = torch.tril(w, diagonal=-1)
    rotation = torch.linalg.householder_product(lower + torch.eye(m, dtype=w.dtype),
                                                2.0 / (1.0 + lower.pow(2).sum(dim=0)))
    expected = quantization_loss(batch @ rotation.T, kind)
    expected.backward()
    loss, gradient = _loss_and_gradient(weights, batch, kind)
    assert loss == pytest.approx(float(expected.detach()), rel=1e-12)
    np.testing.assert_allclose(gradient.numpy(), w.grad.numpy(), rtol=1e-9,
                               atol=1e-12 * float(w.grad.abs().max() + 1))


@pytest.mark.parametrize("kind", ["l2", "min_entry"])
def test_fit_follows_the_autograd_fit_step_for_step(kind):
    """The same split, batches and SGD steps as the obvious implementation
    (tests/reference.py): the same validation losses and the same kept weights."""
    x, _ = rotated_codes(3, n=700)
    h = qk.HouseholderQuantizer(16, loss=kind).fit(x, epochs=4, seed=5, batch_size=50)
    scaled = rescale(torch.from_numpy(x))
    weights, history = ref.householder_fit_autograd(scaled, torch.eye(16, dtype=torch.float64),
                                                    4, 0.1, 50, 5, 0.1, kind)
    np.testing.assert_allclose([e["validation"] for e in h.history], history, rtol=1e-10)
    np.testing.assert_allclose(h.weights.numpy(), weights.numpy(), atol=1e-10)
