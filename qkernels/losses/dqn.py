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

    ``forward(z, labels, quantizer=None)``: with no quantizer (or an untrained one) only the
    cosine term is used.
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
    quantizer on them. Returns True when it re-fitted.
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
        z = check_embeddings(z, "z")
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
