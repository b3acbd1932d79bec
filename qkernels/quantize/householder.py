"""HouseholderQuantizer: learn an orthogonal U so that sign(U x) loses little (H2Q, 2023)."""

from __future__ import annotations

import copy
import io
import os
from typing import Any

import numpy as np
import torch

from .. import _gpu
from .._arrays import origin_of, to_cupy, to_numpy, torch_stream
from .._bits import pack_bits, pack_signs
from .._checks import as_float_array, check_int, check_nonnegative, check_rank
from .._io import load_npz, save_npz, source_name
from ._h2q_loss import KINDS, quantization_loss, quantization_loss_gradient

__all__ = ["HouseholderQuantizer"]


def rescale(x: torch.Tensor) -> torch.Tensor:
    """Each row to norm sqrt(m), as H2Q does before rotating (zero rows stay zero). Each row is
    divided by its largest magnitude first, so that rows of 1e155 (whose squares overflow) or
    1e-300 (whose squares underflow) keep their direction."""
    largest = x.abs().amax(dim=1, keepdim=True)
    x = x / torch.where(largest > 0, largest, torch.ones_like(largest))
    norms = x.norm(dim=1, keepdim=True)
    return x * (x.shape[1] ** 0.5) / torch.where(norms > 0, norms, torch.ones_like(norms))


def _compact_wy(weights: torch.Tensor, masks: _Masks | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(V, S)``: the reflectors (unit lower triangular) of a parameter matrix and the upper
    triangular ``S = striu(V^T V) + diag(V^T V) / 2``, with ``H_1 ... H_m = I - V S^-1 V^T``
    for ``H_i = I - 2 v_i v_i^T / |v_i|^2``."""
    masks = _Masks(weights) if masks is None else masks
    vectors = torch.addcmul(masks.eye, weights, masks.lower)
    return vectors, (vectors.T @ vectors) * masks.upper


class _Masks:
    """The constant matrices of one size: the identity, the strict lower triangle, and the
    strict upper triangle with a half on the diagonal (``S`` of the Gram matrix)."""

    def __init__(self, weights: torch.Tensor):
        m = weights.shape[0]
        options = {"dtype": weights.dtype, "device": weights.device}
        self.eye = torch.eye(m, **options)
        self.lower = torch.ones(m, m, **options).tril_(diagonal=-1)
        self.upper = self.lower.T + self.eye / 2


def _loss_and_gradient(weights: torch.Tensor, batch: torch.Tensor, kind: str,
                       masks: _Masks | None = None) -> tuple[float, torch.Tensor]:
    """The quantization loss of ``batch @ U^T`` and its gradient with respect to the strictly
    lower part of ``weights`` (what autograd through the reflections gives; the rest of
    ``weights`` does not enter ``U``). With ``U = I - V X``, ``X = S^-1 V^T``:
    ``dU = G_z^T B``; ``dV = -dU X^T + Y^T + V (dA + dA^T)`` where ``Y = S^-T (-V^T dU)``,
    ``dS = -Y X^T`` and ``dA`` is ``dS`` on the strict upper triangle, half of it on the
    diagonal, zero below."""
    masks = _Masks(weights) if masks is None else masks
    vectors, s = _compact_wy(weights, masks)
    x = torch.linalg.solve_triangular(s, vectors.T, upper=True)
    z = batch @ (masks.eye - vectors @ x).T
    if kind == "l2":  # the common case, loss and gradient from one residual
        residual = z - torch.sign(z)
        loss = float(torch.linalg.vecdot(residual.view(-1), residual.view(-1))) / z.numel()
        d_z = residual.mul_(2.0 / z.numel())
    else:
        loss = float(quantization_loss(z, kind))
        d_z = quantization_loss_gradient(z, kind)
    d_rotation = d_z.T @ batch
    y = torch.linalg.solve_triangular(s.T, vectors.T @ d_rotation, upper=False).neg_()
    d_gram = (y @ x.T).mul_(masks.upper).neg_()
    d_vectors = torch.addmm(y.T, d_rotation, x.T, alpha=-1.0)
    d_vectors.addmm_(vectors, d_gram + d_gram.T)
    return loss, d_vectors.mul_(masks.lower)


class HouseholderQuantizer:
    """An orthogonal ``U = H_1 ... H_m`` learned so that each coordinate of ``U x`` is close to
    its sign.

    H2Q (Schwengber, Resende, Orenstein & Oliveira, "Deep hashing via Householder
    quantization", 2023): ``b = sign(U x)`` is then the binary code, and since ``U`` is
    orthogonal the embedding's distances are unchanged by it.

    ``U`` is the product of ``m`` Householder reflections given by a parameter matrix ``V``
    (m x m) in LAPACK's form: reflector ``i`` is ``I - tau_i v_i v_i^T`` with ``v_i`` the i-th
    column of ``V`` below the diagonal and a 1 on it, and ``tau_i = 2 / |v_i|^2``, so every
    factor is an exact reflection and any orthogonal matrix can be reached. ``V`` starts at
    the identity (``U = -I``, which codes like the identity: it flips every bit). Embeddings
    are rescaled to norm ``sqrt(m)`` first. Training is plain SGD on ``V`` (the paper's
    defaults: batch 128, learning rate 0.1), keeping the ``U`` of the best validation loss.
    The product is formed in the compact WY ("UT transform") form ``U = I - V S^-1 V^T``,
    ``S = striu(V^T V) + diag(V^T V) / 2`` (Joffrain, Low, Quintana-Orti, van de Geijn & Van
    Zee, ACM TOMS 2006), and each step's gradient through it is written out: a few ``m x m``
    products and two triangular solves instead of autograd through ``m`` reflections.

    Parameters
    ----------
    dim : int
        ``m``, the embedding length (and the number of bits), ``1..8192``.
    loss : {"l2", "l1", "bit_var", "min_entry"}, default "l2"
        See :class:`qkernels.losses.HouseholderQuantizationLoss`.

    Attributes
    ----------
    weights : torch.Tensor of float64, shape (dim, dim)
        The parameter matrix ``V``.
    history : list of dict
        Each epoch's ``{"epoch", "train", "validation"}`` losses of the last :meth:`fit`.

    Raises
    ------
    ValueError
        If ``dim`` is outside ``1..8192`` or ``loss`` is not one of the four.
    TypeError
        If ``dim`` is not an integer.

    See Also
    --------
    ITQ : the rotation it is compared with.
    qkernels.losses.HouseholderQuantizationLoss : the loss it minimises.

    Examples
    --------
    >>> import numpy as np, qkernels as qk
    >>> x = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    >>> h2q = qk.HouseholderQuantizer(16).fit(x, epochs=2)
    >>> h2q.encode(x[:4]).shape   # 16 bits: two bytes per item
    (4, 2)
    """

    _VERSION = 1

    def __init__(self, dim: int, loss: str = "l2"):
        # U is a dense float64 (dim x dim) matrix (512 MiB at the cap), for codes of dim bits
        self.dim = check_int(dim, "dim", 1, 8192)
        if loss not in KINDS:
            raise ValueError(f"loss must be one of {KINDS}, got {loss!r}")
        self.loss = loss
        self.weights = torch.eye(self.dim, dtype=torch.float64)
        self.history: list[dict[str, float]] = []

    def __repr__(self) -> str:
        return f"HouseholderQuantizer(dim={self.dim}, loss={self.loss!r})"

    @staticmethod
    def _rotation_of(weights: torch.Tensor, masks: _Masks | None = None) -> torch.Tensor:
        """``U = H_1 ... H_m`` in the compact WY form, ``I - V S^-1 V^T`` (differentiable)."""
        masks = _Masks(weights) if masks is None else masks
        vectors, s = _compact_wy(weights, masks)
        return masks.eye - vectors @ torch.linalg.solve_triangular(s, vectors.T, upper=True)

    @property
    def rotation(self) -> np.ndarray:
        """``U``, the learned orthogonal matrix: float32, shape ``(dim, dim)``."""
        with torch.no_grad():
            return self._rotation_of(self.weights).to(torch.float32).numpy()

    def _checked(self, x: Any, name: str, device: bool = False) -> Any:
        """``x`` checked, in float64: a numpy array, or a cupy array on its GPU with
        ``device``."""
        a = to_cupy(x) if device else to_numpy(x, allow_device_copy=True, name=name)
        check_rank(a, name, (2,), f"(N, dim = {self.dim})")
        if a.shape[1] != self.dim:
            raise ValueError(f"{name} has dimension {a.shape[1]}; this quantizer has {self.dim}")
        return as_float_array(a, name, dtype=np.float64)

    def _embeddings(self, x: Any, name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self._checked(x, name)))

    def fit(self, embeddings: Any, *, epochs: int = 150, lr: float = 0.1,
            batch_size: int = 128, seed: int = 0, validation_fraction: float = 0.1,
            progress: bool = False) -> HouseholderQuantizer:
        """Learn ``U`` by SGD on the quantization loss, keeping the best validation epoch.

        Parameters
        ----------
        embeddings : array_like, shape (N, dim)
            At least two embeddings; numpy array or torch tensor (CPU or CUDA, read on the
            host).
        epochs : int, default 150
            Passes over the training part.
        lr : float, default 0.1
            SGD learning rate (the paper's).
        batch_size : int, default 128
            Embeddings per step (the paper's).
        seed : int, default 0
            Seed of the split and the batch order.
        validation_fraction : float, default 0.1
            The share held out (at least one embedding) to pick the best epoch, in ``[0, 1)``.
        progress : bool, default False
            Show a tqdm bar.

        Returns
        -------
        HouseholderQuantizer
            ``self``, with ``history`` listing each epoch's train and validation losses
            (epoch 0: before training, validation only).

        Raises
        ------
        ValueError
            If ``embeddings`` has another dimension, fewer than two rows, NaN or Inf; if a
            count is below 1, ``lr`` negative or ``validation_fraction`` outside ``[0, 1)``.
        TypeError
            If ``embeddings`` does not hold real numbers or a count is not an integer.
        """
        x = rescale(self._embeddings(embeddings, "embeddings"))
        epochs = check_int(epochs, "epochs", 1)
        batch_size = check_int(batch_size, "batch_size", 1)
        lr = check_nonnegative(lr, "lr")
        validation_fraction = check_nonnegative(validation_fraction, "validation_fraction")
        if validation_fraction >= 1:
            raise ValueError("validation_fraction must be below 1")
        if x.shape[0] < 2:
            raise ValueError("fit needs at least 2 embeddings (one is held out for validation)")
        generator = torch.Generator().manual_seed(check_int(seed, "seed"))
        order = torch.randperm(x.shape[0], generator=generator)
        num_val = min(x.shape[0] - 1, max(1, round(validation_fraction * x.shape[0])))
        val, train = x[order[:num_val]], x[order[num_val:]]
        kind = self.loss
        weights = self.weights.detach().clone()
        masks = _Masks(weights)

        def validation_loss() -> float:
            return float(quantization_loss(val @ self._rotation_of(weights, masks).T, kind))

        best = (validation_loss(), weights.detach().clone())
        self.history = [{"epoch": 0, "train": float("nan"), "validation": best[0]}]
        bar = range(epochs)
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(bar, desc="householder", unit="epoch", disable=None)  # not in a pipe
        for epoch in bar:
            shuffled = train[torch.randperm(train.shape[0], generator=generator)]
            total, count = 0.0, 0
            for start in range(0, train.shape[0], batch_size):
                batch = shuffled[start : start + batch_size]
                loss, gradient = _loss_and_gradient(weights, batch, kind, masks)
                weights.sub_(gradient, alpha=lr)  # plain SGD, as torch.optim.SGD steps
                total += loss * batch.shape[0]
                count += batch.shape[0]
            current = validation_loss()
            self.history.append({"epoch": epoch + 1, "train": total / count,
                                 "validation": current})
            if current < best[0]:
                best = (current, weights.detach().clone())
            if progress:
                bar.set_postfix(train=f"{total / count:.4f}", val=f"{current:.4f}")
        self.weights = best[1]
        return self

    def transform(self, x: Any) -> Any:
        """``U x`` of the embeddings rescaled to norm ``sqrt(dim)``.

        Parameters
        ----------
        x : array_like, shape (N, dim)
            Embeddings. GPU input (a torch CUDA tensor or a cupy array) is
            computed on its device.

        Returns
        -------
        array of float32, shape (N, dim)
            In the caller's array type.

        Raises
        ------
        ValueError
            If ``x`` has another dimension, NaN or Inf.
        TypeError
            If ``x`` does not hold real numbers.
        """
        origin = origin_of(x, names=("x",))
        if origin.is_cuda and _gpu.available():
            with torch_stream(origin):
                return origin.wrap(self._rotated_on_device(x).astype(np.float32))
        with torch.no_grad():
            z = rescale(self._embeddings(x, "x")) @ self._rotation_of(self.weights).T
        return origin.wrap(z.to(torch.float32).numpy())

    def encode(self, x: Any) -> Any:
        """Packed binary codes of ``sign(U x)``.

        Parameters
        ----------
        x : array_like, shape (N, dim)
            Embeddings. GPU input (a torch CUDA tensor or a cupy array) is
            computed on its device.

        Returns
        -------
        array of uint8, shape (N, ceil(dim / 8))
            See :func:`pack_bits`; in the caller's array type.

        Raises
        ------
        ValueError
            If ``x`` has another dimension, NaN or Inf.
        TypeError
            If ``x`` does not hold real numbers.
        """
        origin = origin_of(x, names=("x",))
        if origin.is_cuda and _gpu.available():
            with torch_stream(origin):
                return origin.wrap(pack_signs(self._rotated_on_device(x).astype(np.float32)))
        return pack_bits(self.transform(x))

    def _rotated_on_device(self, x: Any):
        """``U x`` of GPU input on its device, in float64 (as on the CPU: the rows rescaled as
        :func:`rescale` does); ``U`` is copied to each device once per change of the
        weights."""
        import cupy

        xp = cupy
        a = self._checked(x, "x", device=True)
        weights = self.weights

        def build():
            with torch.no_grad():
                return cupy.asarray(self._rotation_of(weights).T.contiguous().numpy())

        rotation_t = _gpu.mirrored(self, (weights,), build)
        largest = xp.abs(a).max(axis=1, keepdims=True) if a.size else a[:, :1]
        a = a / xp.where(largest > 0, largest, 1.0)
        norms = xp.sqrt((a * a).sum(axis=1, keepdims=True))
        a = a * (a.shape[1] ** 0.5) / xp.where(norms > 0, norms, 1.0)
        return a @ rotation_t

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """The learned state, like ``torch.nn.Module.state_dict``.

        Returns
        -------
        dict
            ``{"dim", "loss", "weights", "history"}``, copies.
        """
        return {"dim": self.dim, "loss": self.loss, "weights": self.weights.clone(),
                "history": copy.deepcopy(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> HouseholderQuantizer:
        """Take the state of :meth:`state_dict`.

        Parameters
        ----------
        state : dict
            ``{"dim", "loss", "weights"}`` and optionally ``"history"``.

        Returns
        -------
        HouseholderQuantizer
            ``self``.

        Raises
        ------
        ValueError
            If the state is for another ``dim`` or its weights are not finite.
        """
        weights = torch.as_tensor(state["weights"], dtype=torch.float64)
        if int(state["dim"]) != self.dim or tuple(weights.shape) != (self.dim, self.dim):
            raise ValueError(f"the state is for dim = {state['dim']}, this quantizer has "
                             f"{self.dim}")
        if not torch.isfinite(weights).all():
            raise ValueError("the state's weights are not finite")
        self.loss = str(state["loss"])
        self.weights = weights.clone()
        self.history = list(state.get("history", []))
        return self

    def save(self, path: str | os.PathLike | io.IOBase) -> None:
        """Write the quantizer to ``path``.

        Parameters
        ----------
        path : str, os.PathLike or file object
            A ``.npz`` file (no pickle inside); a file at a path is written whole or not at
            all.

        Raises
        ------
        OSError
            If the file cannot be written.
        """
        save_npz(path, "HouseholderQuantizer", self._VERSION, dim=np.array(self.dim),
                 loss=np.array(self.loss), weights=self.weights.numpy())

    @classmethod
    def load(cls, path: str | os.PathLike | io.IOBase) -> HouseholderQuantizer:
        """Read a quantizer written by :meth:`save`.

        Parameters
        ----------
        path : str, os.PathLike or file object
            The file, or a file object opened for reading bytes; it is checked member by
            member and never unpickled.

        Returns
        -------
        HouseholderQuantizer
            The quantizer.

        Raises
        ------
        ValueError
            If the file is truncated, damaged, of another kind or version.
        OSError
            If the file cannot be read.
        TypeError
            If ``path`` is neither a path nor a file object that reads bytes.
        """
        arrays = load_npz(path, "HouseholderQuantizer", cls._VERSION,
                          {"dim": ("iu", 0), "loss": ("U", 0), "weights": ("f", 2)})
        try:
            quantizer = cls(int(arrays["dim"]), str(arrays["loss"]))
            quantizer.load_state_dict({"dim": int(arrays["dim"]), "loss": str(arrays["loss"]),
                                       "weights": torch.from_numpy(arrays["weights"])})
        except (ValueError, TypeError) as error:
            raise ValueError(f"{source_name(path)!r} is a corrupted HouseholderQuantizer file "
                             f"({error})") from None
        return quantizer
