"""Deep Hash Table losses (Jeong & Song, ICML 2018): the batch code assignment, and the
triplet and n-pairs losses, plain or with distances restricted to the buckets of the codes."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .._checks import check_real
from ..flow import solve_hierarchical_codes, solve_sparse_codes
from ._common import (
    check_embeddings,
    check_labels,
    check_like,
    check_mask,
    same_label_matrix,
    unit_rows,
)

__all__ = [
    "BatchCodes",
    "HierarchicalBatchCodes",
    "NPairsLoss",
    "SemiHardTripletLoss",
    "assign_batch_codes",
    "assign_hierarchical_codes",
]


class BatchCodes(NamedTuple):
    """The codes of one batch, as :func:`assign_batch_codes` returns them (a named tuple).

    Parameters
    ----------
    codes : torch.Tensor of int64, shape (N, k)
        Each item's buckets, sorted ascending.
    mask : torch.Tensor, shape (N, d)
        0/1 in the activations' dtype: the buckets of each item's code.
    """

    codes: torch.Tensor
    mask: torch.Tensor


def assign_batch_codes(activations: torch.Tensor, labels, k: int, penalty: float = 1.0,
                       normalize: bool = True, *, group=None) -> BatchCodes:
    """The DHT code assignment of one training batch.

    For each class ``i`` present in the batch the unary score is the mean of its items'
    activations, ``u_i = mean_{labels == i} a`` (each row L2-normalised first when
    ``normalize``, as for the triplet variant; for n-pairs pass anchors and positives with
    ``normalize=False``, which gives ``(a + p) / 2``). The classes' exact k-sparse codes
    minimise ``-sum_i u_i . z_i + penalty * sum_r C(c_r, 2)``
    (:func:`qkernels.solve_sparse_codes`); every item gets its class's code.

    Under ``torch.distributed`` (initialised, more than one process in ``group``) the batch is
    the global one: the ranks agree on the classes present anywhere, add up their class sums,
    rank 0 solves once and broadcasts the codes, so that every rank trains on the same codes.
    Every rank must call it at the same step.

    Parameters
    ----------
    activations : torch.Tensor, shape (N, d)
        The batch's hash-head outputs (float16, bfloat16, float32 or float64; any device;
        half precision is averaged in float32).
    labels : torch.Tensor or array_like of int, shape (N,)
        Class ids.
    k : int
        Buckets per class, ``1..d``.
    penalty : float, default 1.0
        The cost of each pair of classes sharing a bucket, ``>= 0``.
    normalize : bool, default True
        L2-normalise each row before averaging.
    group : torch.distributed.ProcessGroup, optional
        The group whose ranks share the batch (default: the whole world when initialised).

    Returns
    -------
    BatchCodes
        ``(codes, mask)``: int64 ``(N, k)`` and a 0/1 ``(N, d)`` mask in the activations'
        dtype, both on the activations' device. No gradient flows through them.

    Raises
    ------
    ValueError
        If the shapes disagree, the activations hold NaN or Inf, ``k`` is outside ``1..d``, or
        ``penalty`` is negative.
    TypeError
        If ``activations`` is not a floating tensor or ``labels`` not integers.

    Notes
    -----
    The solve runs where the class means are: on a GPU with cupy, one CUDA block per
    problem, which returns the CPU solver's codes; elsewhere on the CPU (a host copy when
    cupy is missing).

    Examples
    --------
    >>> import torch
    >>> from qkernels.losses import assign_batch_codes
    >>> activations = torch.randn(12, 16, generator=torch.Generator().manual_seed(0))
    >>> labels = torch.arange(12) % 4
    >>> codes, mask = assign_batch_codes(activations, labels, k=2)
    >>> codes.shape, mask.shape, bool((codes[0] == codes[4]).all())   # one code per class
    (torch.Size([12, 2]), torch.Size([12, 16]), True)
    """
    a = check_embeddings(activations, "activations").detach()
    inverse, means = _class_means(a, labels, normalize, group, "assign_batch_codes")
    class_codes = _solve_once(lambda: solve_sparse_codes(means, k, penalty),
                              (means.shape[0], k), a.device, group)
    codes = class_codes[inverse]
    mask = torch.zeros_like(a).scatter_(1, codes, 1.0)
    return BatchCodes(codes, mask)


class HierarchicalBatchCodes(NamedTuple):
    """The cascaded codes of one batch, as :func:`assign_hierarchical_codes` returns them
    (a named tuple).

    Parameters
    ----------
    level1 : torch.Tensor of int64, shape (N,)
        Each item's parent bucket.
    level2 : torch.Tensor of int64, shape (N, k2)
        Its child buckets, sorted.
    mask1 : torch.Tensor, shape (N, d1)
        0/1 one-hot of the parent.
    mask2 : torch.Tensor, shape (N, d2)
        0/1 of the children.
    """

    level1: torch.Tensor
    level2: torch.Tensor
    mask1: torch.Tensor
    mask2: torch.Tensor


def assign_hierarchical_codes(level1_activations: torch.Tensor,
                              level2_activations: torch.Tensor, labels, k2: int,
                              penalty_sibling: float = 100.0, penalty_global: float = 1.0,
                              normalize: bool = True, *, group=None) -> HierarchicalBatchCodes:
    """The cascaded code assignment of one batch (Jeong, Kim & Song, CVPR 2019).

    As :func:`assign_batch_codes`: per class the mean (normalised) activations of each level,
    then the exact two-level codes of :func:`qkernels.solve_hierarchical_codes`; every item
    gets its class's. Distributed runs solve the global batch once.

    Parameters
    ----------
    level1_activations : torch.Tensor, shape (N, d1)
        The batch's level-1 outputs.
    level2_activations : torch.Tensor, shape (N, d2)
        The batch's level-2 outputs.
    labels : torch.Tensor or array_like of int, shape (N,)
        Class ids.
    k2 : int
        Children per class, ``1..d2``.
    penalty_sibling : float, default 100.0
        As in :func:`qkernels.solve_hierarchical_codes`.
    penalty_global : float, default 1.0
        As in :func:`qkernels.solve_hierarchical_codes`.
    normalize : bool, default True
        L2-normalise each row of each level before averaging.
    group : torch.distributed.ProcessGroup, optional
        The group whose ranks share the batch.

    Returns
    -------
    HierarchicalBatchCodes
        ``(level1, level2, mask1, mask2)`` on the activations' device.

    Raises
    ------
    ValueError
        If the shapes disagree, the activations hold NaN or Inf, ``k2`` is out of range or a
        penalty negative.
    TypeError
        If an activation is not a floating tensor or ``labels`` not integers.
    """
    a1 = check_embeddings(level1_activations, "level1_activations").detach()
    a2 = check_embeddings(level2_activations, "level2_activations").detach()
    if a1.shape[0] != a2.shape[0]:
        raise ValueError(f"level1_activations has {a1.shape[0]} rows but level2_activations "
                         f"has {a2.shape[0]}")
    w1, w2 = _summable(a1), _summable(a2)
    if normalize:
        w1, w2 = unit_rows(w1), unit_rows(w2)
    d1 = a1.shape[1]
    inverse, means = _class_means(torch.cat([w1, w2], 1), labels, False, group,
                                  "assign_hierarchical_codes")

    def solve():
        level1, level2 = solve_hierarchical_codes(means[:, :d1].cpu(), means[:, d1:].cpu(), k2,
                                                  penalty_sibling, penalty_global)
        return torch.cat([level1[:, None], level2], 1)

    class_codes = _solve_once(solve, (means.shape[0], 1 + k2), a1.device, group)[inverse]
    level1, level2 = class_codes[:, 0], class_codes[:, 1:]
    mask1 = torch.zeros_like(a1).scatter_(1, level1[:, None], 1.0)
    mask2 = torch.zeros_like(a2).scatter_(1, level2, 1.0)
    return HierarchicalBatchCodes(level1, level2, mask1, mask2)


def _summable(a: torch.Tensor) -> torch.Tensor:
    """``a`` in float32 where it is half precision (float16 or bfloat16, as autocast makes a
    hash head's outputs): class sums in half precision lose most of their digits, and the
    solver takes no bfloat16 (numpy has none)."""
    return a.float() if a.dtype in (torch.float16, torch.bfloat16) else a


def _class_means(a: torch.Tensor, labels, normalize: bool, group, caller: str):
    """Each item's class index and the (normalised) activations averaged per class, over the
    global batch when distributed (classes agreed on, sums and counts all-reduced); half
    precision is averaged in float32 (``_summable``)."""
    a = _summable(a)
    labels = check_labels(labels, a.shape[0], a.device)
    if labels.dim() != 1:
        raise ValueError(f"{caller} needs (N,) class ids, not a multi-label matrix")
    distributed = _world_size(group) > 1
    if a.shape[0] == 0 and not distributed:
        raise ValueError("the activations are empty: a batch needs at least one item")
    if normalize:
        a = unit_rows(a)
    classes = torch.unique(labels)
    if distributed:
        classes = _global_classes(classes, group)
    inverse = torch.searchsorted(classes, labels)
    sums = torch.zeros(classes.shape[0], a.shape[1], dtype=a.dtype, device=a.device)
    sums.index_add_(0, inverse, a)
    counts = torch.bincount(inverse, minlength=classes.shape[0]).to(a.dtype)
    if distributed:
        torch.distributed.all_reduce(sums, group=group)
        torch.distributed.all_reduce(counts, group=group)
    return inverse, sums / counts[:, None]


def _solve_once(solve, shape: tuple[int, int], device, group) -> torch.Tensor:
    """``solve()`` (int64 codes of ``shape``) on this process, or on rank 0 and broadcast."""
    if _world_size(group) == 1:
        return solve().to(device)
    dist = torch.distributed
    codes = torch.empty(shape, dtype=torch.int64, device=device)
    if dist.get_rank(group) == 0:
        codes = solve().to(device)
    dist.broadcast(codes, src=dist.get_global_rank(group, 0) if group is not None else 0,
                   group=group)
    return codes


def _world_size(group) -> int:
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _global_classes(local: torch.Tensor, group) -> torch.Tensor:
    """The sorted union of every rank's classes (padded all_gather of variable-size sets)."""
    dist = torch.distributed
    size = torch.tensor([local.shape[0]], device=local.device)
    dist.all_reduce(size, op=dist.ReduceOp.MAX, group=group)
    pad = torch.iinfo(local.dtype).min  # no class id: the padding of shorter sets
    padded = torch.full((int(size),), pad, dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    gathered = [torch.empty_like(padded) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, padded, group=group)
    union = torch.unique(torch.cat(gathered))
    return union[union != pad]


def _masked_pairwise(f: torch.Tensor, g: torch.Tensor, mask_f, mask_g, kind: str):
    """(N, M) distances sum_r w_ijr phi(f_ir - g_jr), w = mask_f[i] OR mask_g[j] (1 unmasked)."""
    diff = f[:, None, :] - g[None, :, :]
    term = diff.abs() if kind == "l1" else diff.pow(2)
    if mask_f is None:
        return term.sum(-1)
    either = mask_f[:, None, :] + mask_g[None, :, :] - mask_f[:, None, :] * mask_g[None, :, :]
    return (either * term).sum(-1)


class SemiHardTripletLoss(nn.Module):
    """Semi-hard triplet loss (Schroff et al., 2015), with DHT's masked distance.

    On L2-normalised embeddings ``f`` (when ``normalize``), with ``distance`` ``"l1"``::

        D_ij = sum_r w_ijr |f_ir - f_jr|,   w_ijr = [h_ir or h_jr]  (1 without codes)

    (``"sqeuclidean"`` uses ``(f_ir - f_jr)^2``), as in the DHT paper: a pair is compared only in
    the buckets active in either code. For each anchor-positive pair ``(i, p)`` (same label,
    ``i != p``) the negative is the nearest one farther than the positive, ``min {D_in : D_in >
    D_ip}``, or, if there is none, the farthest negative; the loss is the mean over pairs of
    ``max(D_ip - D_in + margin, 0)``. Default margin 1.0 (the DHT triplet setting).

    Parameters
    ----------
    margin : float, default 1.0
        ``>= 0``.
    distance : {"l1", "sqeuclidean"}, default "l1"
        The per-coordinate term.
    normalize : bool, default True
        L2-normalise the embeddings first.

    Raises
    ------
    ValueError
        If ``margin`` is negative or not finite, or ``distance`` unknown.
    TypeError
        If ``margin`` is not a real number.

    Examples
    --------
    >>> import torch
    >>> from qkernels.losses import SemiHardTripletLoss, assign_batch_codes
    >>> embeddings = torch.randn(12, 16, generator=torch.Generator().manual_seed(0))
    >>> labels = torch.arange(12) % 3
    >>> codes, mask = assign_batch_codes(embeddings, labels, k=2)
    >>> loss = SemiHardTripletLoss(margin=1.0)(embeddings, labels, mask)
    >>> loss.shape
    torch.Size([])
    """

    def __init__(self, margin: float = 1.0, distance: str = "l1", normalize: bool = True):
        super().__init__()
        if distance not in ("l1", "sqeuclidean"):
            raise ValueError(f"distance must be 'l1' or 'sqeuclidean', got {distance!r}")
        self.margin = check_real(margin, "margin", low=0.0)
        self.distance = distance
        self.normalize = normalize

    def extra_repr(self) -> str:
        return f"margin={self.margin}, distance={self.distance!r}, normalize={self.normalize}"

    def forward(self, embeddings: torch.Tensor, labels, masks: torch.Tensor | None = None):
        """The loss of one batch.

        Parameters
        ----------
        embeddings : torch.Tensor, shape (N, d)
            Floating point, any device.
        labels : torch.Tensor or array_like of int, shape (N,)
            Class ids.
        masks : torch.Tensor, shape (N, d), optional
            0/1 code masks (``assign_batch_codes(...).mask``).

        Returns
        -------
        torch.Tensor
            A scalar (zero, connected to the graph, for an empty batch).

        Raises
        ------
        ValueError
            If the batch has one class only or no two items of one class, the shapes
            disagree, or the embeddings hold NaN or Inf.
        TypeError
            If ``embeddings`` is not a floating tensor or ``labels`` not integers.
        """
        f = check_embeddings(embeddings, "embeddings")
        labels = check_labels(labels, f.shape[0], f.device)
        if masks is not None:
            masks = check_mask(masks, f, "masks")
        if f.shape[0] == 0:
            return f.sum() * 0.0
        if self.normalize:
            f = unit_rows(f)
        dist = _masked_pairwise(f, f, masks, masks, self.distance)
        same = same_label_matrix(labels)
        eye = torch.eye(f.shape[0], dtype=torch.bool, device=f.device)
        positive = same & ~eye
        negative = ~same
        if not negative.any():
            raise ValueError("SemiHardTripletLoss needs a batch with at least two classes")
        if not positive.any():
            raise ValueError("SemiHardTripletLoss needs a batch with two items of one class")
        anchor, pos = positive.nonzero(as_tuple=True)
        d_ap = dist[anchor, pos]  # (P,)
        d_an = dist[anchor]  # (P, N)
        neg = negative[anchor]
        inf = torch.finfo(dist.dtype).max
        farther = neg & (d_an > d_ap[:, None])
        semi_hard = torch.where(farther, d_an, torch.full_like(d_an, inf)).min(1).values
        hardest_easy = torch.where(neg, d_an, torch.full_like(d_an, -inf)).max(1).values
        d_neg = torch.where(farther.any(1), semi_hard, hardest_easy)
        return torch.clamp(d_ap - d_neg + self.margin, min=0).mean()


class NPairsLoss(nn.Module):
    """Multi-class N-pair loss (Sohn, 2016), with DHT's masked similarity.

    For anchors ``a`` and positives ``p`` (row ``i`` of each from the same class)::

        S_ij = sum_r w_ijr a_ir p_jr,   w_ijr = [h^a_ir or h^p_jr]  (1 without codes)
        loss = mean_i CE(softmax(S_i), t_i) + (reg / 4) (mean_i |a_i|^2 + mean_i |p_i|^2)

    where the target ``t_ij`` spreads evenly over the columns that share row i's label. The
    default ``reg = 0.003`` is the DHT n-pairs setting. ``forward(anchors, positives, labels,
    anchor_masks=None, positive_masks=None)``; with masks both are needed.

    The softmax rewards larger outputs whatever their direction, and the weak L2 term does not
    stop them growing (the head's squared norm grows from 6 to over 100 in training). With
    ``scale = s`` every output is first normalised to length ``s`` (``a_i <- s a_i / |a_i|``,
    the fixed-temperature cosine softmax of NormFace, Wang et al., 2017), which holds it in
    scale; the L2 term is then a constant and is left out.

    Parameters
    ----------
    reg : float, default 0.003
        Weight of the L2 term, ``>= 0``.
    scale : float, optional
        Normalise the outputs to this length first (``> 0``); None keeps them.

    Raises
    ------
    ValueError
        If ``reg`` is negative or ``scale`` not positive, or either is not finite.
    TypeError
        If either is not a real number.
    """

    def __init__(self, reg: float = 0.003, scale: float | None = None):
        super().__init__()
        self.reg = check_real(reg, "reg", low=0.0)
        self.scale = None if scale is None else check_real(scale, "scale", low=0.0, strict=True)

    def extra_repr(self) -> str:
        return f"reg={self.reg}" if self.scale is None else f"scale={self.scale}"

    def forward(self, anchors: torch.Tensor, positives: torch.Tensor, labels,
                anchor_masks: torch.Tensor | None = None,
                positive_masks: torch.Tensor | None = None):
        """The loss of one batch of (anchor, positive) pairs.

        Parameters
        ----------
        anchors : torch.Tensor, shape (N, d)
            Floating point.
        positives : torch.Tensor, shape (N, d)
            Of the same dtype and device; row ``i`` of the same class as anchor ``i``.
        labels : torch.Tensor or array_like of int, shape (N,)
            Class ids.
        anchor_masks : torch.Tensor, shape (N, d), optional
            0/1 code masks of the anchors.
        positive_masks : torch.Tensor, shape (N, d), optional
            0/1 code masks of the positives (both masks or neither).

        Returns
        -------
        torch.Tensor
            A scalar.

        Raises
        ------
        ValueError
            If the batch has one class only, one mask is given without the other, the shapes
            disagree, or an input holds NaN or Inf.
        TypeError
            If the inputs differ in dtype or device or are not floating tensors.
        """
        a = check_embeddings(anchors, "anchors")
        p = check_embeddings(positives, "positives")
        check_like(a, "anchors", p, "positives")
        labels = check_labels(labels, a.shape[0], a.device)
        if (anchor_masks is None) != (positive_masks is None):
            raise ValueError("give both anchor_masks and positive_masks, or neither")
        if a.shape[0] == 0:
            return a.sum() * 0.0
        if self.scale is not None:
            a = self.scale * nn.functional.normalize(a, dim=1)
            p = self.scale * nn.functional.normalize(p, dim=1)
        if anchor_masks is None:
            sim = a @ p.T
        else:
            ma = check_mask(anchor_masks, a, "anchor_masks")
            mp = check_mask(positive_masks, p, "positive_masks")
            sim = (ma * a) @ p.T + a @ (mp * p).T - (ma * a) @ (mp * p).T
        same = same_label_matrix(labels).to(a.dtype)
        if bool((same.sum(1) == same.shape[1]).all()) and a.shape[0] > 1:
            raise ValueError("NPairsLoss needs a batch with at least two classes")
        target = same / same.sum(1, keepdim=True)
        cross_entropy = -(target * torch.log_softmax(sim, dim=1)).sum(1).mean()
        if self.scale is not None:
            return cross_entropy
        l2 = a.pow(2).sum(1).mean() + p.pow(2).sum(1).mean()
        return cross_entropy + self.reg * 0.25 * l2
