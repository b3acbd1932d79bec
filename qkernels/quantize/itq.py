"""ITQ: iterative quantization (Gong & Lazebnik, 2011), the baseline of H2Q."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _gpu
from .._arrays import origin_of, to_cupy, to_numpy, torch_stream
from .._bits import pack_bits, pack_signs
from .._checks import as_float_array, check_columns, check_int, check_rank

__all__ = ["ITQ"]


class ITQ:
    """Iterative quantization (Gong & Lazebnik, CVPR 2011), the binary-code baseline of H2Q.

    Centre the data, project it on its top ``nbits`` principal directions ``V``, then learn
    a rotation ``R`` minimising ``|B - V R|^2`` with ``B = sign(V R)`` by alternating the two
    (orthogonal Procrustes: ``R = W S^T`` from the SVD ``B^T V = S Sigma W^T``). ``encode``
    packs ``sign(V R)``.

    Parameters
    ----------
    nbits : int, optional
        Code length, at most the input dimension (None: the input dimension).
    iterations : int, default 50
        Alternations (50 in the ITQ paper).
    seed : int, default 0
        Seed of the random orthogonal initialisation.

    Attributes
    ----------
    mean : ndarray of float64, shape (dim,)
        The training data's mean (None before :meth:`fit`).
    projection : ndarray of float64, shape (dim, nbits)
        The principal directions times the rotation (None before :meth:`fit`).

    Raises
    ------
    ValueError
        If ``nbits`` is below 1 or ``iterations`` negative.
    TypeError
        If a parameter is not an integer.

    See Also
    --------
    HouseholderQuantizer : the learned rotation of H2Q.
    pack_bits : the code layout.

    Examples
    --------
    >>> import numpy as np, qkernels as qk
    >>> x = np.random.default_rng(0).standard_normal((500, 16))
    >>> itq = qk.ITQ(8).fit(x)
    >>> itq.encode(x[:3]).shape   # 8 bits: one byte per item
    (3, 1)
    """

    def __init__(self, nbits: int | None = None, iterations: int = 50, seed: int = 0):
        self.nbits = None if nbits is None else check_int(nbits, "nbits", 1)
        self.iterations = check_int(iterations, "iterations", 0)
        self.seed = check_int(seed, "seed")
        self.mean: np.ndarray | None = None
        self.projection: np.ndarray | None = None  # (dim, nbits): PCA, then the rotation

    def __repr__(self) -> str:
        return f"ITQ(nbits={self.nbits}, iterations={self.iterations})"

    def _data(self, x: Any, name: str, device: bool = False) -> Any:
        """``x`` checked, in float64: a numpy array, or a cupy array on its GPU with
        ``device``."""
        a = to_cupy(x) if device else to_numpy(x, allow_device_copy=True, name=name)
        check_rank(a, name, (2,), "(N, dim)")
        check_columns(a, name, "dimensions")
        return as_float_array(a, name, dtype=np.float64)

    def fit(self, x: Any) -> ITQ:
        """Learn the projection from ``x``.

        Parameters
        ----------
        x : array_like, shape (N, dim)
            At least two points, and at least ``nbits``; numpy array or torch tensor.

        Returns
        -------
        ITQ
            ``self``, fitted.

        Raises
        ------
        ValueError
            If ``nbits`` exceeds ``dim``, there are fewer than two points or fewer than
            ``nbits``, or ``x`` has NaN, Inf or an empty axis.
        TypeError
            If ``x`` does not hold real numbers.
        """
        data = self._data(x, "x")
        n, dim = data.shape
        nbits = dim if self.nbits is None else self.nbits
        if nbits > dim:
            raise ValueError(f"nbits = {nbits} exceeds the input dimension {dim}")
        if n < 2:
            raise ValueError("ITQ needs at least 2 points to fit")
        if n < nbits:  # PCA to nbits directions: fewer points span fewer
            raise ValueError(f"ITQ needs at least nbits = {nbits} points to fit (PCA to "
                             f"{nbits} directions), got {n}")
        self.nbits = nbits
        self.mean = data.mean(axis=0)
        centred = data - self.mean
        # the directions and signs are scale-free: fit on data scaled to magnitude 1, so that
        # inputs of 1e-300 or 1e300 (whose squares under- or overflow) give the same rotation
        largest = np.abs(centred).max()
        if largest > 0:
            centred = centred / largest
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        pca = vt[:nbits].T  # (dim, nbits)
        v = centred @ pca
        rng = np.random.default_rng(self.seed)
        rotation, _ = np.linalg.qr(rng.standard_normal((nbits, nbits)))
        for _ in range(self.iterations):
            b = np.where(v @ rotation >= 0, 1.0, -1.0)
            s, _, wt = np.linalg.svd(b.T @ v)
            rotation = (s @ wt).T
        self.projection = pca @ rotation
        return self

    def _projected(self, x: Any, device: bool = False) -> Any:
        """``(x - mean) @ projection`` in float64; with ``device`` on the GPU of ``x``, the
        mean and the projection copied to each device once per fit."""
        if self.projection is None:
            raise RuntimeError("this ITQ is not fitted: call fit(x) first")
        data = self._data(x, "x", device)
        if data.shape[1] != self.mean.shape[0]:
            raise ValueError(f"x has dimension {data.shape[1]}; ITQ was fitted on "
                             f"{self.mean.shape[0]}")
        if not device:
            return (data - self.mean) @ self.projection
        import cupy

        mean, projection = _gpu.mirrored(self, (self.mean, self.projection), lambda: (
            cupy.asarray(self.mean), cupy.asarray(self.projection)))
        return (data - mean) @ projection

    def transform(self, x: Any) -> Any:
        """The projection ``(x - mean) @ projection``.

        Parameters
        ----------
        x : array_like, shape (N, dim)
            Vectors of the fitted dimension. GPU input (a torch CUDA tensor or a cupy array) is
            computed on its device.

        Returns
        -------
        array of float32, shape (N, nbits)
            In the caller's array type.

        Raises
        ------
        RuntimeError
            If the ITQ is not fitted.
        ValueError
            If ``x`` has another dimension, NaN or Inf, or its projection overflows float32.
        TypeError
            If ``x`` does not hold real numbers.
        """
        origin = origin_of(x, names=("x",))
        if origin.is_cuda and _gpu.available():
            with torch_stream(origin):
                return origin.wrap(as_float_array(self._projected(x, device=True),
                                                  "the projection of x", dtype=np.float32))
        return origin.wrap(as_float_array(self._projected(x), "the projection of x",
                                          dtype=np.float32))

    def encode(self, x: Any) -> Any:
        """Packed binary codes of the signs of :meth:`transform`.

        The signs are taken in float64: a projection too small for float32 keeps its sign.

        Parameters
        ----------
        x : array_like, shape (N, dim)
            Vectors of the fitted dimension. GPU input (a torch CUDA tensor or a cupy array) is
            computed on its device.

        Returns
        -------
        array of uint8, shape (N, ceil(nbits / 8))
            Bit ``j`` is set where projection ``j`` is positive (see :func:`pack_bits`); in
            the caller's array type.

        Raises
        ------
        RuntimeError
            If the ITQ is not fitted.
        ValueError
            If ``x`` has another dimension, NaN or Inf.
        TypeError
            If ``x`` does not hold real numbers.
        """
        origin = origin_of(x, names=("x",))
        if origin.is_cuda and _gpu.available():
            with torch_stream(origin):
                return origin.wrap(pack_signs(self._projected(x, device=True)))
        return origin.wrap(pack_bits(self._projected(x)))
