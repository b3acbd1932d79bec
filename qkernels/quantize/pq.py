"""ProductQuantizer: k-means codebooks per subspace (Jégou et al.; the quantizer of DQN)."""

from __future__ import annotations

import io
import itertools
import os
from typing import Any, ClassVar

import numpy as np

from .._arrays import origin_of, to_numpy
from .._checks import (
    as_distance_array,
    as_index_array,
    check_int,
    check_rank,
)
from .._io import load_npz, save_npz, source_name
from . import _pq_cpu

__all__ = ["ProductQuantizer"]

_VERSIONS = itertools.count(1)  # codebooks_version: next() is atomic under the GIL


class ProductQuantizer:
    """Product quantization: each vector split into ``num_subspaces`` sub-vectors, each
    quantized with its own codebook of ``2**nbits`` codewords (Jégou, Douze & Schmid, TPAMI
    2011; the quantizer of DQN, Cao et al., AAAI 2016).

    Parameters
    ----------
    dim : int
        Vector length, a multiple of ``num_subspaces``.
    num_subspaces : int, default 8
        ``M``, the number of sub-vectors (and bytes per code for ``nbits <= 8``).
    nbits : int, default 8
        Bits per sub-vector, ``1..16``: codes are uint8 up to 8 bits, uint16 above.
    iterations : int, default 25
        Lloyd iterations of k-means in each subspace (after k-means++ seeding).
    max_points_per_centroid : int or None, default 256
        Train on at most this many points per codeword, sampled with ``seed`` (as FAISS does);
        None trains on every point given.
    seed : int, default 0
        Seed of the sampling and of k-means++: the same data and seed give the same codebooks.

    Raises
    ------
    ValueError
        If ``dim`` is not a multiple of ``num_subspaces`` or a parameter is out of range.
    TypeError
        If a parameter is not an integer.

    See Also
    --------
    PQIndex : the search over these codes.
    qkernels.losses.DQNLoss : training for these codes.

    Examples
    --------
    >>> import numpy as np, qkernels as qk
    >>> x = np.random.default_rng(0).standard_normal((2000, 32)).astype(np.float32)
    >>> pq = qk.ProductQuantizer(32, num_subspaces=4, nbits=8).train(x)
    >>> codes = pq.encode(x)             # uint8, one byte per sub-vector
    >>> codes.shape, codes.dtype
    ((2000, 4), dtype('uint8'))
    >>> pq.decode(codes).shape           # the reconstruction
    (2000, 32)
    >>> pq.codebooks.shape               # (M, 2**nbits, dim / M): for a quantization loss
    (4, 256, 8)
    """

    _VERSION = 1

    def __init__(self, dim: int, num_subspaces: int = 8, nbits: int = 8, *,
                 iterations: int = 25, max_points_per_centroid: int | None = 256,
                 seed: int = 0):
        self.dim = check_int(dim, "dim", 1)
        self.num_subspaces = check_int(num_subspaces, "num_subspaces", 1, self.dim)
        if self.dim % self.num_subspaces:
            raise ValueError(
                f"dim = {self.dim} is not divisible by num_subspaces = {self.num_subspaces}; "
                "each subspace needs the same number of dimensions"
            )
        self.nbits = check_int(nbits, "nbits", 1, 16)
        self.iterations = check_int(iterations, "iterations", 0)
        if max_points_per_centroid is not None:
            max_points_per_centroid = check_int(max_points_per_centroid,
                                                "max_points_per_centroid", 1)
        self.max_points_per_centroid = max_points_per_centroid
        self.seed = check_int(seed, "seed")
        self._codebooks: np.ndarray | None = None
        self._codebooks_version = 0  # see codebooks_version

    @property
    def dsub(self) -> int:
        """The length of a sub-vector, ``dim // num_subspaces``."""
        return self.dim // self.num_subspaces

    @property
    def num_centroids(self) -> int:
        """Codewords per codebook, ``2**nbits``."""
        return 1 << self.nbits

    @property
    def code_dtype(self) -> np.dtype:
        """The dtype of the codes: uint8 up to 8 bits, uint16 above."""
        return np.dtype(np.uint8 if self.nbits <= 8 else np.uint16)

    @property
    def is_trained(self) -> bool:
        """Whether the codebooks are set (by :meth:`train` or :meth:`set_codebooks`)."""
        return self._codebooks is not None

    @property
    def codebooks_version(self) -> int:
        """A number that changes whenever the codebooks are replaced (``train``,
        ``set_codebooks``), unique across all quantizers of the process: what is derived from
        them (an index's tables, its GPU copy) keys on it. Writing into ``codebooks`` in place
        is not seen; call ``set_codebooks``."""
        return self._codebooks_version

    @property
    def codebooks(self) -> np.ndarray:
        """The codewords: float32, shape ``(num_subspaces, 2**nbits, dsub)``.

        Raises
        ------
        RuntimeError
            If the quantizer is not trained.
        """
        self._require_trained()
        return self._codebooks

    def __repr__(self) -> str:
        return (f"ProductQuantizer(dim={self.dim}, num_subspaces={self.num_subspaces}, "
                f"nbits={self.nbits}, trained={self.is_trained})")

    def _require_trained(self) -> None:
        if self._codebooks is None:
            raise RuntimeError("this ProductQuantizer is not trained: call train(x) first")

    def check_vectors(self, x: Any, name: str = "x") -> np.ndarray:
        """``x`` as the array this quantizer works on, or a clear error.

        Parameters
        ----------
        x : array_like, shape (N, dim)
            Vectors; numpy array or torch tensor (CPU or CUDA).
        name : str, default "x"
            The argument's name in error messages.

        Returns
        -------
        ndarray of float32, shape (N, dim)
            C-contiguous (a copy only where needed).

        Raises
        ------
        ValueError
            If ``x`` has another rank or dimension, NaN or Inf, or values whose squared
            distances overflow float32.
        TypeError
            If ``x`` does not hold real numbers.
        """
        a = to_numpy(x, allow_device_copy=True, name=name)
        check_rank(a, name, (2,), f"(N, dim = {self.dim})")
        if a.shape[1] != self.dim:
            raise ValueError(f"{name} has dimension {a.shape[1]}; this quantizer has {self.dim}")
        return np.ascontiguousarray(as_distance_array(a, name))

    def train(self, x: Any) -> ProductQuantizer:
        """Learn the codebooks by k-means in each subspace (k-means++ seeding).

        Parameters
        ----------
        x : array_like, shape (N, dim)
            At least ``2**nbits`` training vectors.

        Returns
        -------
        ProductQuantizer
            ``self``, trained.

        Raises
        ------
        ValueError
            If there are fewer than ``2**nbits`` vectors, or ``x`` is refused as by
            :meth:`check_vectors`.
        TypeError
            If ``x`` does not hold real numbers.
        """
        points = self.check_vectors(x, "x")
        k = self.num_centroids
        if points.shape[0] < k:
            raise ValueError(
                f"training needs at least 2**nbits = {k} points, got {points.shape[0]}"
            )
        rng = np.random.default_rng(self.seed)
        if (self.max_points_per_centroid is not None
                and points.shape[0] > self.max_points_per_centroid * k):
            keep = np.sort(rng.choice(points.shape[0], self.max_points_per_centroid * k,
                                      replace=False))
            points = np.ascontiguousarray(points[keep])
        uniforms = rng.random((self.num_subspaces, k))
        codebooks = np.empty((self.num_subspaces, k, self.dsub), dtype=np.float32)
        _pq_cpu.train(points, self.num_subspaces, k, self.iterations, uniforms, codebooks)
        self._codebooks = codebooks
        self._codebooks_version = next(_VERSIONS)
        return self

    def set_codebooks(self, codebooks: Any) -> ProductQuantizer:
        """Use given codebooks (FAISS's, say) instead of training.

        Parameters
        ----------
        codebooks : array_like, shape (num_subspaces, 2**nbits, dsub)
            Codewords; copied.

        Returns
        -------
        ProductQuantizer
            ``self``, trained.

        Raises
        ------
        ValueError
            If the shape differs, the codewords hold NaN or Inf, or their squared distances
            would overflow float32 (the bound :meth:`train` holds data to).
        TypeError
            If the codewords do not hold real numbers.
        """
        c = to_numpy(codebooks, allow_device_copy=True)
        shape = (self.num_subspaces, self.num_centroids, self.dsub)
        if c.shape != shape:
            raise ValueError(f"codebooks must have shape {shape}, got {tuple(c.shape)}")
        # always a copy: the caller's array may be changed in place afterwards
        # the reconstructions are dim-d vectors, held to the bound train() holds data to
        c = np.array(as_distance_array(c, "codebooks", self.dim), order="C")
        self._codebooks = c
        self._codebooks_version = next(_VERSIONS)
        return self

    def encode(self, x: Any) -> Any:
        """The nearest codeword of each sub-vector.

        Parameters
        ----------
        x : array_like, shape (N, dim)
            Vectors.

        Returns
        -------
        array of uint8 or uint16, shape (N, num_subspaces)
            :attr:`code_dtype`; in the caller's array type.

        Raises
        ------
        RuntimeError
            If the quantizer is not trained.
        ValueError
            If ``x`` is refused as by :meth:`check_vectors`.
        TypeError
            If ``x`` does not hold real numbers.
        """
        self._require_trained()
        origin = origin_of(x, names=("x",))
        points = self.check_vectors(x, "x")
        codes = np.empty((points.shape[0], self.num_subspaces), dtype=self.code_dtype)
        if points.shape[0]:
            _pq_cpu.encode(points, self._codebooks, codes)
        return origin.wrap(codes)

    def check_codes(self, codes: Any, name: str = "codes") -> np.ndarray:
        """``codes`` as the array this quantizer makes, or a clear error.

        Parameters
        ----------
        codes : array_like of int, shape (N, num_subspaces)
            Codes; integers of another dtype are range-checked and converted.
        name : str, default "codes"
            The argument's name in error messages.

        Returns
        -------
        ndarray, shape (N, num_subspaces)
            C-contiguous, of :attr:`code_dtype`.

        Raises
        ------
        ValueError
            If the shape differs or a code is outside ``0..2**nbits - 1``.
        TypeError
            If ``codes`` does not hold integers.
        """
        c = to_numpy(codes, allow_device_copy=True)
        check_rank(c, name, (2,), f"(N, num_subspaces = {self.num_subspaces})")
        if c.shape[1] != self.num_subspaces:
            raise ValueError(
                f"{name} has {c.shape[1]} columns; this quantizer has {self.num_subspaces} "
                "subspaces"
            )
        if c.dtype != self.code_dtype:
            if c.dtype.kind not in "iu":
                raise TypeError(f"{name} must hold integers, got dtype {c.dtype}")
            as_index_array(c, name, self.num_centroids)
            c = c.astype(self.code_dtype)
        elif self.nbits not in (8, 16):
            as_index_array(c, name, self.num_centroids)
        return np.ascontiguousarray(c)

    def decode(self, codes: Any) -> Any:
        """The reconstruction: each sub-vector replaced by its codeword.

        Parameters
        ----------
        codes : array_like of int, shape (N, num_subspaces)
            Codes made by this quantizer.

        Returns
        -------
        array of float32, shape (N, dim)
            In the caller's array type.

        Raises
        ------
        RuntimeError
            If the quantizer is not trained.
        ValueError
            If the codes are refused as by :meth:`check_codes`.
        TypeError
            If ``codes`` does not hold integers.
        """
        self._require_trained()
        origin = origin_of(codes, names=("codes",))
        c = self.check_codes(codes)
        out = np.empty((c.shape[0], self.dim), dtype=np.float32)
        if c.shape[0]:
            _pq_cpu.decode(c, self._codebooks, out)
        return origin.wrap(out)

    # ------------------------------------------------------------------ files

    def _state(self) -> dict[str, np.ndarray]:
        self._require_trained()
        return {"dim": np.array(self.dim), "num_subspaces": np.array(self.num_subspaces),
                "nbits": np.array(self.nbits), "codebooks": self._codebooks}

    @classmethod
    def _from_state(cls, arrays: dict[str, np.ndarray], path: str | os.PathLike):
        try:
            pq = cls(int(arrays["dim"]), int(arrays["num_subspaces"]), int(arrays["nbits"]))
            pq.set_codebooks(arrays["codebooks"])
        except (ValueError, TypeError) as error:
            raise ValueError(f"{source_name(path)!r} is a corrupted {cls.__name__} file "
                             f"({error})") from None
        return pq

    _FIELDS: ClassVar[dict[str, tuple[str, int]]] = {
        "dim": ("iu", 0), "num_subspaces": ("iu", 0), "nbits": ("iu", 0), "codebooks": ("f", 3),
    }

    def save(self, path: str | os.PathLike | io.IOBase) -> None:
        """Write the trained quantizer to ``path``.

        Parameters
        ----------
        path : str, os.PathLike or file object
            A ``.npz`` file (no pickle inside); a file at a path is written whole or not at
            all.

        Raises
        ------
        RuntimeError
            If the quantizer is not trained.
        OSError
            If the file cannot be written.
        """
        save_npz(path, "ProductQuantizer", self._VERSION, **self._state())

    @classmethod
    def load(cls, path: str | os.PathLike | io.IOBase) -> ProductQuantizer:
        """Read a quantizer written by :meth:`save`.

        Parameters
        ----------
        path : str, os.PathLike or file object
            The file, or a file object opened for reading bytes; it is checked member by
            member and never unpickled.

        Returns
        -------
        ProductQuantizer
            The trained quantizer.

        Raises
        ------
        ValueError
            If the file is truncated, damaged, of another kind or version.
        OSError
            If the file cannot be read.
        TypeError
            If ``path`` is neither a path nor a file object that reads bytes.
        """
        return cls._from_state(load_npz(path, "ProductQuantizer", cls._VERSION, cls._FIELDS),
                               path)
