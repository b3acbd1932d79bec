"""Shared input checks of the losses: torch tensors only, labels on the embeddings' device."""

from __future__ import annotations

import torch

__all__ = ["check_embeddings", "check_labels", "check_mask", "same_label_matrix"]


def check_embeddings(x, name: str, ndim: int = 2) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite (found NaN or Inf)")
    return x


def check_labels(labels, batch: int, device: torch.device, name: str = "labels") -> torch.Tensor:
    """Class ids ``(N,)`` or a multi-label 0/1 matrix ``(N, C)``, moved to ``device``."""
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels)
    if labels.dim() not in (1, 2):
        raise ValueError(f"{name} must be (N,) class ids or an (N, C) 0/1 matrix, got shape "
                         f"{tuple(labels.shape)}")
    if labels.shape[0] != batch:
        raise ValueError(f"{name} has {labels.shape[0]} entries but the batch has {batch}")
    if labels.dim() == 1 and (labels.is_floating_point() or labels.dtype == torch.bool):
        raise TypeError(f"{name} as class ids must be integers, got {labels.dtype}")
    return labels.to(device)


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
    return mask.to(device=like.device, dtype=like.dtype)
