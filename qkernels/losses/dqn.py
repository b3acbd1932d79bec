"""Deep Quantization Network loss (Cao, Long, Wang, Zhu & Wen, AAAI 2016)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .._checks import check_int, check_real
from ..quantize.pq import ProductQuantizer
from ._common import check_embeddings, check_labels, same_label_matrix, unit_rows

__all__ = ["CodebookRefresher", "DQNLoss"]


class DQNLoss(nn.Module):
    """Pairwise cosine loss plus product-quantization loss::

        L = mean_{i,j} (s_ij - cos(z_i, z_j))^2  +  pq_weight * mean_i |z_i - C h_i|^2

    ``s_ij = +1`` when items i and j share a label (multi-label ``(N, C)`` 0/1 labels: any
    shared label), else ``-1``; ``C h_i`` is ``z_i``'s reconstruction by the current
    product quantizer (codebooks and codes fixed, so the gradient of the second term is
    ``2 pq_weight (z - C h) / N``). The paper writes sums; means keep the scale independent of
    the batch size. ``pq_weight`` is about 1e-4 in the paper (times its batch size squared for
    the sums), 0 during a warm-up.

    ``normalize=True`` quantizes the unit vectors ``z_i / |z_i|`` that the cosine term sees
    (train the quantizer on unit vectors too, and search with them): the second term is then
    scale-free. On raw ``z`` the network can lower it by shrinking its outputs, which leaves the
    cosine term unchanged and the codes no better (measured: weighted up enough to matter, the
    outputs shrank and mAP fell from 0.66 to 0.47).

    Parameters
    ----------
    pq_weight : float, default 1e-4
        Weight of the quantization term, ``>= 0``.
    normalize : bool, default False
        Quantize the unit vectors rather than the raw outputs.

    Raises
    ------
    ValueError
        If ``pq_weight`` is negative or not finite.
    TypeError
        If ``pq_weight`` is not a real number or ``normalize`` not a bool.

    Examples
    --------
    >>> import torch, qkernels as qk
    >>> from qkernels.losses import DQNLoss
    >>> z = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    >>> labels = torch.arange(64) % 4
    >>> pq = qk.ProductQuantizer(16, 4, 4).train(z.numpy())
    >>> loss = DQNLoss(pq_weight=0.1)(z, labels, pq)
    >>> loss.shape
    torch.Size([])
    """

    def __init__(self, pq_weight: float = 1e-4, normalize: bool = False):
        super().__init__()
        self.pq_weight = check_real(pq_weight, "pq_weight", low=0.0)
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be True or False, got {normalize!r}")
        self.normalize = normalize

    def extra_repr(self) -> str:
        return f"pq_weight={self.pq_weight}, normalize={self.normalize}"

    def forward(self, z: torch.Tensor, labels, quantizer: ProductQuantizer | None = None):
        """The loss of one batch.

        Parameters
        ----------
        z : torch.Tensor, shape (N, dim)
            The batch's outputs, floating point.
        labels : torch.Tensor or array_like, shape (N,) or (N, C)
            Class ids, or a 0/1 multi-label matrix.
        quantizer : ProductQuantizer, optional
            The current quantizer; with none (or an untrained one) only the cosine term is
            used.

        Returns
        -------
        torch.Tensor
            A scalar (zero, connected to the graph, for an empty batch).

        Raises
        ------
        ValueError
            If the shapes disagree or ``z`` holds NaN or Inf.
        TypeError
            If ``z`` is not a floating tensor, ``labels`` not integers or 0/1, or
            ``quantizer`` not a ProductQuantizer.
        """
        z = check_embeddings(z, "z")
        labels = check_labels(labels, z.shape[0], z.device)
        if quantizer is not None and not isinstance(quantizer, ProductQuantizer):
            raise TypeError(f"quantizer must be a ProductQuantizer or None, got "
                            f"{type(quantizer).__name__}")
        if z.shape[0] == 0:
            return z.sum() * 0.0
        unit = unit_rows(z)
        cosine = unit @ unit.T
        s = same_label_matrix(labels).to(z.dtype) * 2 - 1
        loss = (s - cosine).pow(2).mean()
        if quantizer is not None and quantizer.is_trained and self.pq_weight:
            quantized = unit if self.normalize else z
            reconstruction = quantizer.decode(quantizer.encode(quantized.detach().cpu()))
            target = reconstruction.to(device=z.device, dtype=z.dtype)
            loss = loss + self.pq_weight * (quantized - target).pow(2).sum(1).mean()
        return loss


class CodebookRefresher:
    """Re-fit a ProductQuantizer's codebooks every ``every`` steps, as DQN alternates SGD on the
    network with k-means on the codebooks.

    ``update(z)`` is called once per training step with the batch's embeddings; it keeps the
    last ``max_points`` of them (detached, on the CPU) and, every ``every`` calls, trains the
    quantizer on them.

    Parameters
    ----------
    quantizer : ProductQuantizer
        The quantizer to re-fit (in place).
    every : int, default 100
        Steps between re-fits.
    max_points : int, default 100000
        Embeddings kept for the re-fit, at least ``2**nbits``.

    Raises
    ------
    ValueError
        If ``every`` is below 1 or ``max_points`` below ``2**nbits``.
    TypeError
        If ``quantizer`` is not a ProductQuantizer or a count not an integer.
    """

    def __init__(self, quantizer: ProductQuantizer, every: int = 100,
                 max_points: int = 100_000):
        if not isinstance(quantizer, ProductQuantizer):
            raise TypeError(f"quantizer must be a ProductQuantizer, got {type(quantizer).__name__}")
        self.quantizer = quantizer
        self.every = check_int(every, "every", 1)
        self.max_points = check_int(max_points, "max_points", quantizer.num_centroids)
        self.steps = 0
        self._buffer: list[np.ndarray] = []
        self._count = 0

    def update(self, z: torch.Tensor) -> bool:
        """Record one step's embeddings; re-fit the codebooks every ``every`` steps.

        Parameters
        ----------
        z : torch.Tensor, shape (N, dim)
            The step's embeddings.

        Returns
        -------
        bool
            Whether the codebooks were re-fitted at this step.

        Raises
        ------
        ValueError
            If ``z`` has another dimension, NaN or Inf.
        TypeError
            If ``z`` is not a floating tensor.
        """
        z = check_embeddings(z, "z")
        if z.shape[1] != self.quantizer.dim:  # (before it joins the kept embeddings)
            raise ValueError(f"z has dimension {z.shape[1]}; the quantizer's is "
                             f"{self.quantizer.dim}")
        batch = z.detach().to("cpu", torch.float32).numpy()
        self._buffer.append(batch)
        self._count += batch.shape[0]
        while self._count - self._buffer[0].shape[0] >= self.max_points:
            self._count -= self._buffer.pop(0).shape[0]
        self.steps += 1
        if self.steps % self.every or self._count < self.quantizer.num_centroids:
            return False
        self.quantizer.train(np.concatenate(self._buffer)[-self.max_points:])
        return True
