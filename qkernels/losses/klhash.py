"""Semantic-similarity hashing losses of Arponen & Bishop (2020): relative distances and an
empirical KL divergence to a uniform binary target."""

from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_int, check_real
from ._common import as_tensor, check_embeddings, check_labels, unit_rows

__all__ = ["BinaryKLLoss", "RelativeDistanceLoss"]


class RelativeDistanceLoss(nn.Module):
    """Match hash-space distances to target distances, each divided by its batch mean::

        d^h_ij = 1 - cos(h_i, h_j)
        L = mean_{i<j} | d^h_ij / mean(d^h) - d^t_ij / mean(d^t) |^p

    Targets come from a ``(C, C)`` class distance matrix indexed by the labels
    (``class_distance[y_i, y_j]``, e.g. a label-tree or WordNet distance) or directly as
    ``(N, N)`` pairwise ``target_distances`` (Arponen & Bishop, "Learning to hash with
    semantic similarity metrics and empirical KL divergence", 2020, section 3). Zero when the
    hash distances are proportional to the targets.

    Parameters
    ----------
    p : float, default 1.0
        The exponent, ``> 0``.
    eps : float, default 1e-12
        Floor of the mean hash distance, ``> 0``.

    Raises
    ------
    ValueError
        If ``p`` or ``eps`` is not positive and finite.
    TypeError
        If either is not a real number.

    Examples
    --------
    >>> import torch
    >>> from qkernels.losses import RelativeDistanceLoss
    >>> h = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    >>> tree = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 2.0], [2.0, 2.0, 0.0]])
    >>> loss = RelativeDistanceLoss()(h, torch.arange(8) % 3, tree)
    >>> loss.shape
    torch.Size([])
    """

    def __init__(self, p: float = 1.0, eps: float = 1e-12):
        super().__init__()
        self.p = check_real(p, "p", low=0.0, strict=True)
        self.eps = check_real(eps, "eps", low=0.0, strict=True)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, h: torch.Tensor, labels=None, class_distance=None,
                target_distances=None):
        """The loss of one batch.

        Parameters
        ----------
        h : torch.Tensor, shape (N, m)
            The batch's hash outputs, ``N >= 2``.
        labels : torch.Tensor or array_like of int, shape (N,), optional
            Class ids, with ``class_distance``.
        class_distance : torch.Tensor or array_like, shape (C, C), optional
            Distances between classes.
        target_distances : torch.Tensor or array_like, shape (N, N), optional
            Distances between the items, instead of ``labels`` and ``class_distance``.

        Returns
        -------
        torch.Tensor
            A scalar.

        Raises
        ------
        ValueError
            If neither or both kinds of targets are given, a label exceeds the classes, a
            target is negative or not finite, all targets are 0, there are fewer than two
            items, or ``h`` holds NaN or Inf.
        TypeError
            If ``h`` is not a floating tensor or ``labels`` not integers.
        """
        h = check_embeddings(h, "h")
        n = h.shape[0]
        if (class_distance is None) == (target_distances is None):
            raise ValueError("give either class_distance (with labels) or target_distances")
        if target_distances is None:
            if labels is None:
                raise ValueError("class_distance needs labels")
            labels = check_labels(labels, n, h.device)
            if labels.dim() != 1:
                raise ValueError("class_distance needs (N,) class ids")
            table = as_tensor(class_distance, "class_distance", h.dtype, h.device)
            if table.dim() != 2 or table.shape[0] != table.shape[1]:
                raise ValueError(f"class_distance must be (C, C), got {tuple(table.shape)}")
            if n and int(labels.max()) >= table.shape[0]:
                raise ValueError(f"a label ({int(labels.max())}) exceeds the "
                                 f"{table.shape[0]} classes of class_distance")
            target = table[labels[:, None], labels[None, :]]
        else:
            target = as_tensor(target_distances, "target_distances", h.dtype, h.device)
            if tuple(target.shape) != (n, n):
                raise ValueError(f"target_distances must be ({n}, {n}), got "
                                 f"{tuple(target.shape)}")
        if not torch.isfinite(target).all() or (target < 0).any():
            raise ValueError("target distances must be finite and >= 0")
        if n < 2:
            raise ValueError("RelativeDistanceLoss needs at least two items")
        i, j = torch.triu_indices(n, n, offset=1, device=h.device)
        unit = unit_rows(h)
        d_hash = 1 - (unit[i] * unit[j]).sum(1)
        d_target = target[i, j]
        mean_target = d_target.mean()
        if mean_target <= 0:
            raise ValueError("every target distance in the batch is 0: a batch needs two "
                             "classes (or items) at a positive distance")
        relative = d_hash / d_hash.mean().clamp_min(self.eps) - d_target / mean_target
        return relative.abs().pow(self.p).mean()


class BinaryKLLoss(nn.Module):
    """Empirical KL divergence between the batch outputs and a uniform distribution on the
    corners ``{-1, +1}^m``, by the 1-nearest-neighbour estimator (Wang, Kulkarni & Verdú)::

        KL ~ (m / n) sum_i log(nu_i / rho_i) + log(M / (n - 1))
        rho_i = min_{j != i} |x_i - x_j|,   nu_i = min_j |x_i - y_j|

    with ``y_1..y_M`` (``M = num_target_samples``) drawn uniformly from the corners at every
    call. The ``nu`` term pulls outputs towards corners; the ``rho`` term spreads them apart
    (even bit usage). Distances are clamped at ``eps`` before the log (Arponen & Bishop, 2020,
    section 3).

    Parameters
    ----------
    num_target_samples : int, default 256
        ``M``, the corners drawn at every call, ``>= 1``.
    eps : float, default 1e-8
        Floor of the distances before the log, ``> 0``.

    Raises
    ------
    ValueError
        If ``num_target_samples`` is below 1 or ``eps`` not positive and finite.
    TypeError
        If a parameter is not a number of the right kind.

    Examples
    --------
    >>> import torch
    >>> from qkernels.losses import BinaryKLLoss
    >>> x = torch.tanh(torch.randn(32, 8, generator=torch.Generator().manual_seed(0)))
    >>> loss = BinaryKLLoss()(x, torch.Generator().manual_seed(1))
    >>> loss.shape
    torch.Size([])
    """

    def __init__(self, num_target_samples: int = 256, eps: float = 1e-8):
        super().__init__()
        self.num_target_samples = check_int(num_target_samples, "num_target_samples", 1)
        self.eps = check_real(eps, "eps", low=0.0, strict=True)

    def extra_repr(self) -> str:
        return f"num_target_samples={self.num_target_samples}"

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """The estimated KL divergence of one batch.

        Parameters
        ----------
        x : torch.Tensor, shape (n, m)
            The batch's outputs, ``n >= 2``.
        generator : torch.Generator, optional
            Makes the draw of the target corners reproducible.

        Returns
        -------
        torch.Tensor
            A scalar.

        Raises
        ------
        ValueError
            If there are fewer than two outputs or ``x`` holds NaN or Inf.
        TypeError
            If ``x`` is not a floating tensor.
        """
        x = check_embeddings(x, "x")
        n, m = x.shape
        if n < 2:
            raise ValueError("BinaryKLLoss needs at least two outputs in the batch")
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # torch.cdist has no half-precision kernel on every device
        y = torch.randint(0, 2, (self.num_target_samples, m), generator=generator,
                          device="cpu").to(device=x.device, dtype=x.dtype) * 2 - 1
        within = torch.cdist(x, x)
        within = within + torch.diag(torch.full((n,), math.inf, dtype=x.dtype,
                                                device=x.device))
        rho = within.min(1).values.clamp_min(self.eps)
        nu = torch.cdist(x, y).min(1).values.clamp_min(self.eps)
        return (m / n) * torch.log(nu / rho).sum() + math.log(self.num_target_samples / (n - 1))
