"""Quantization losses of Householder quantization (H2Q; Schwengber et al., 2023)."""

from __future__ import annotations

import torch
from torch import nn

from ..quantize._h2q_loss import KINDS, quantization_loss
from ._common import check_embeddings

__all__ = ["HouseholderQuantizationLoss"]


class HouseholderQuantizationLoss(nn.Module):
    """How far rotated embeddings ``z`` are from binary vectors, averaged over the batch.

    ``kind`` (H2Q, section 3; ``s`` is the logistic function, means over batch and coordinates
    unless stated)::

        "l2"         mean (z - sgn z)^2           (the paper's headline loss)
        "l1"         mean |z - sgn z|
        "bit_var"    mean s(z) (1 - s(z))
        "min_entry"  mean_i log sum_j exp(-z_ij^2)   (mean over rows i)

    With ``|z| = sqrt(m)`` (H2Q rescales), ``"l2"`` equals ``2 - 2 |z|_1 / m``. ``sgn`` has
    zero gradient, so gradients flow through ``z`` only.

    Parameters
    ----------
    kind : {"l2", "l1", "bit_var", "min_entry"}, default "l2"
        The loss.

    Raises
    ------
    ValueError
        If ``kind`` is not one of the four.

    Examples
    --------
    >>> import torch
    >>> from qkernels.losses import HouseholderQuantizationLoss
    >>> HouseholderQuantizationLoss()(torch.tensor([[1.0, -1.0], [0.5, -0.5]]))
    tensor(0.1250)
    """

    def __init__(self, kind: str = "l2"):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The loss of a batch of rotated embeddings.

        Parameters
        ----------
        z : torch.Tensor, shape (N, m)
            Floating point.

        Returns
        -------
        torch.Tensor
            A scalar (zero for an empty batch).

        Raises
        ------
        ValueError
            If ``z`` is not 2-d or holds NaN or Inf.
        TypeError
            If ``z`` is not a floating tensor.
        """
        return quantization_loss(check_embeddings(z, "z"), self.kind)
