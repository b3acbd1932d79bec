"""Shared input checks of the losses: torch tensors only, labels on the embeddings' device."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .._arrays import to_numpy

__all__ = ["as_tensor", "check_embeddings", "check_labels", "check_like", "check_mask",
           "same_label_matrix", "unit_rows"]


def _first_nonfinite(x: torch.Tensor, name: str) -> None:
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        where = tuple(int(i) for i in (~finite).nonzero()[0])
        raise ValueError(f"{name} must be finite, found {x[where].item()} at index {where}")


def check_embeddings(x, name: str, ndim: int = 2) -> torch.Tensor:
    """A floating-point tensor of ``ndim`` dimensions, finite, with at least one column."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if ndim >= 2 and x.shape[-1] == 0:
        raise ValueError(f"{name} has shape {tuple(x.shape)}: 0 columns; at least 1 is needed")
    _first_nonfinite(x.detach(), name)
    # strides must not change an answer: torch's kernels (matmul above all) may take another
    # path, with another rounding, for a strided tensor (seen on an AMD EPYC: NPairsLoss one
    # ulp off for strided positives); a contiguous tensor is returned as it is
    return x.contiguous()


def check_like(x: torch.Tensor, x_name: str, other: torch.Tensor, other_name: str) -> None:
    """Two tensors that meet in one computation: the same shape, dtype and device."""
    if x.shape != other.shape:
        raise ValueError(f"{x_name} {tuple(x.shape)} and {other_name} {tuple(other.shape)} must "
                         "have the same shape")
    if x.dtype != other.dtype or x.device != other.device:
        raise TypeError(f"{x_name} is {x.dtype} on {x.device} but {other_name} is {other.dtype} "
                        f"on {other.device}; pass them with one dtype, on one device")


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows to unit L2 norm (zero rows stay zero), safe from overflow: each row is divided by
    its largest magnitude first, which changes neither the result nor its gradient, so that
    |x| = 1e160 (whose squares overflow float64) gives the same direction as |x| = 1."""
    scale = x.detach().abs().amax(dim=-1, keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return nn.functional.normalize(x / scale, dim=-1)


def check_labels(labels, batch: int, device: torch.device, name: str = "labels") -> torch.Tensor:
    """Class ids ``(N,)`` (integers >= 0) or a multi-label 0/1 matrix ``(N, C)``, moved to
    ``device``."""
    labels = as_tensor(labels, name)
    if labels.dim() not in (1, 2):
        raise ValueError(f"{name} must be (N,) class ids or an (N, C) 0/1 matrix, got shape "
                         f"{tuple(labels.shape)}")
    if labels.shape[0] != batch:
        raise ValueError(f"{name} has {labels.shape[0]} entries but the batch has {batch}")
    if labels.dim() == 1 and (labels.is_floating_point() or labels.dtype == torch.bool
                              or labels.is_complex()):
        raise TypeError(f"{name} as class ids must be integers, got {labels.dtype}")
    if labels.numel():
        if labels.is_floating_point():
            _first_nonfinite(labels, name)
        low = labels.min().item()
        if low < 0:
            raise ValueError(f"{name} must be >= 0 (class ids, or 0/1 entries), found {low}")
    return labels.to(device).contiguous()


def as_tensor(x, name: str, dtype: torch.dtype | None = None,
              device: torch.device | None = None) -> torch.Tensor:
    """A torch tensor or numpy array of real numbers as a tensor (numpy shares memory); lists,
    strings, complex and object arrays are refused, as at every entry point of qkernels."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
        x = torch.from_numpy(to_numpy(x, name=name))
    elif not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor or a numpy array, got "
                        f"{type(x).__module__}.{type(x).__qualname__}")
    if x.is_complex():
        raise TypeError(f"{name} must hold real numbers, got {x.dtype}")
    return x.to(dtype=dtype or x.dtype, device=device or x.device)


def same_label_matrix(labels: torch.Tensor) -> torch.Tensor:
    """(N, N) bool: items i and j share a label (for multi-label: any)."""
    if labels.dim() == 1:
        return labels[:, None] == labels[None, :]
    positive = labels > 0
    return (positive.float() @ positive.float().T) > 0


def check_mask(mask, like: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(like.shape):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}; it must match the embeddings' "
                         f"{tuple(like.shape)}")
    if mask.is_complex():
        raise TypeError(f"{name} must be real 0/1 weights, got {mask.dtype}")
    mask = mask.detach().to(device=like.device, dtype=like.dtype)
    _first_nonfinite(mask, name)
    if mask.numel() and (mask.min() < 0 or mask.max() > 1):
        raise ValueError(f"{name} must hold weights in [0, 1] (1: the bucket is in the code), "
                         f"found values in [{mask.min().item()}, {mask.max().item()}]")
    return mask
