"""The quantization losses of H2Q (Schwengber et al., 2023, section 3) as plain functions of a
rotated batch. HouseholderQuantizer fits with them; qkernels.losses.HouseholderQuantizationLoss
is their nn.Module (``losses`` may import ``quantize``, never the reverse)."""

from __future__ import annotations

import torch

__all__ = ["KINDS", "quantization_loss", "quantization_loss_gradient"]

KINDS = ("l2", "l1", "bit_var", "min_entry")


def quantization_loss(z: torch.Tensor, kind: str) -> torch.Tensor:
    """How far the rows of ``z`` ``(N, m)`` are from binary vectors, averaged over the batch
    (see HouseholderQuantizationLoss for the formulas). ``z`` is not checked here."""
    if z.shape[0] == 0:
        return z.sum() * 0.0  # keeps the graph connected
    if kind == "l2":
        return (z - torch.sign(z)).pow(2).mean()
    if kind == "l1":
        return (z - torch.sign(z)).abs().mean()
    if kind == "bit_var":
        s = torch.sigmoid(z)
        return (s * (1 - s)).mean()
    if kind == "min_entry":
        return torch.logsumexp(-z.pow(2), dim=1).mean()
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def quantization_loss_gradient(z: torch.Tensor, kind: str) -> torch.Tensor:
    """``d quantization_loss(z, kind) / d z``, by hand (what autograd computes: ``sign`` has a
    zero derivative, ``|x|`` the derivative ``sign(x)``), for a fit without autograd."""
    if z.shape[0] == 0:
        return torch.zeros_like(z)
    if kind == "l2":
        return (z - torch.sign(z)) * (2.0 / z.numel())
    if kind == "l1":
        return torch.sign(z - torch.sign(z)) / z.numel()
    if kind == "bit_var":
        s = torch.sigmoid(z)
        return (s * (1 - s) * (1 - 2 * s)) / z.numel()
    if kind == "min_entry":
        return torch.softmax(-z.pow(2), dim=1) * (-2.0 / z.shape[0]) * z
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
