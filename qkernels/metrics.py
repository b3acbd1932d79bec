"""Retrieval and clustering metrics of the hashing literature.

Every function takes numpy arrays or torch tensors (any device; the metrics run on the host) and
returns a Python float. Search results follow the FAISS convention: ``I`` is ``(Q, K)`` database
indices per query, best first, with ``-1`` for a missing result. A missing result is never
relevant. Labels are either one integer class per item, shape ``(N,)``, or a multi-label 0/1
matrix, shape ``(N, C)``; two items are relevant to each other when they share a label.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._arrays import to_numpy
from ._checks import as_index_array, check_finite, check_int, check_rank

__all__ = ["bit_balance", "mahp_at_k", "map_at_k", "nmi", "precision_at_k",
           "precision_recall_curve", "search_speedup"]


def _host(x: Any, name: str) -> np.ndarray:
    x = to_numpy(x, allow_device_copy=True, name=name)
    if x.dtype == object:
        raise TypeError(f"{name} must be a numeric array, got an object array")
    return x


def _results(I: Any, k: int, db_size: int) -> np.ndarray:
    I = _host(I, "I")
    check_rank(I, "I", (2,), "(num_queries, K)")
    k = check_int(k, "k", 1)
    if k > I.shape[1]:
        raise ValueError(f"k = {k} is larger than the {I.shape[1]} results per query in I")
    return as_index_array(I[:, :k], "I", db_size, allow_missing=True)


def _labels(labels: Any, name: str) -> np.ndarray:
    labels = _host(labels, name)
    check_rank(labels, name, (1, 2), "(N,) class ids or (N, C) 0/1 multi-label matrix")
    if labels.ndim == 1:
        return as_index_array(labels, name)
    if labels.dtype.kind == "b":
        return labels
    if labels.dtype.kind not in "iuf" or not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{name} as a (N, C) multi-label matrix must hold only 0 and 1")
    return labels.astype(bool)


def _relevance(I: Any, db_labels: Any, query_labels: Any, k: int) -> np.ndarray:
    """(Q, k) bool: result j of query q exists and shares a label with the query."""
    db = _labels(db_labels, "db_labels")
    queries = _labels(query_labels, "query_labels")
    if db.ndim != queries.ndim or (db.ndim == 2 and db.shape[1] != queries.shape[1]):
        raise ValueError(
            f"db_labels {db.shape} and query_labels {queries.shape} must both be (N,) class ids "
            "or both (N, C) multi-label matrices with the same C"
        )
    I = _results(I, k, db.shape[0])
    if I.shape[0] != queries.shape[0]:
        raise ValueError(f"I has {I.shape[0]} rows but query_labels has {queries.shape[0]}")
    present = I >= 0
    safe = np.where(present, I, 0)
    if db.ndim == 1:
        shared = db[safe] == queries[:, None]
    else:
        shared = (db[safe] & queries[:, None, :]).any(axis=2)
    return shared & present


def precision_at_k(I: Any, db_labels: Any, query_labels: Any, k: int) -> float:
    """Mean precision of the top ``k`` results.

    ``P@k = (1 / Q) sum_q (1 / k) sum_{j < k} rel(q, I[q, j])``, with ``rel`` 1 when the result
    exists and shares a label with the query. This is the Precision@K of the DHT paper.

    Parameters
    ----------
    I : array_like of int, shape (Q, K)
        Result ids per query (as a search returns them), -1 where missing.
    db_labels : array_like, shape (N,) or (N, C)
        Class ids of the database items, or a 0/1 multi-label matrix.
    query_labels : array_like, shape (Q,) or (Q, C)
        The queries' labels, in the same form.
    k : int
        Results counted per query, ``1..K``.

    Returns
    -------
    float
        In ``[0, 1]``; 0.0 for no queries.

    Raises
    ------
    ValueError
        If the shapes disagree, ``k`` is outside ``1..K``, an id is outside the database,
        or labels are neither class ids nor a 0/1 matrix.
    TypeError
        If an array does not hold integers where ids or class ids belong.

    Examples
    --------
    >>> import numpy as np, qkernels as qk
    >>> I = np.array([[0, 1], [2, -1]])
    >>> qk.metrics.precision_at_k(I, np.array([0, 1, 1]), np.array([0, 1]), k=2)
    0.5
    """
    rel = _relevance(I, db_labels, query_labels, k)
    # rel has k columns: dividing by its width, not by k, keeps a 0-d tensor k out of the sum
    return float(rel.sum(axis=1).mean() / rel.shape[1]) if rel.shape[0] else 0.0


def map_at_k(I: Any, db_labels: Any, query_labels: Any, k: int) -> float:
    """Mean average precision over the top ``k`` results (the deep-hashing convention).

    ``AP@k(q) = sum_{j <= k} rel_j P@j / sum_{j <= k} rel_j`` where ``P@j`` is the precision of
    the first ``j`` results, and ``AP@k(q) = 0`` when none of the first ``k`` is relevant.
    ``mAP@k`` is the mean over queries. This is the mAP@k of DQN, H2Q and DeepHash-pytorch.

    Parameters
    ----------
    I : array_like of int, shape (Q, K)
        Result ids per query (as a search returns them), -1 where missing.
    db_labels : array_like, shape (N,) or (N, C)
        Class ids of the database items, or a 0/1 multi-label matrix.
    query_labels : array_like, shape (Q,) or (Q, C)
        The queries' labels, in the same form.
    k : int
        Results counted per query, ``1..K``.

    Returns
    -------
    float
        In ``[0, 1]``; 0.0 for no queries.

    Raises
    ------
    ValueError
        If the shapes disagree, ``k`` is outside ``1..K``, an id is outside the database,
        or labels are neither class ids nor a 0/1 matrix.
    TypeError
        If an array does not hold integers where ids or class ids belong.

    Examples
    --------
    >>> import numpy as np, qkernels as qk
    >>> I = np.array([[1, 0]])                  # the relevant item second: AP = 1/2
    >>> qk.metrics.map_at_k(I, np.array([0, 1]), np.array([0]), k=2)
    0.5
    """
    rel = _relevance(I, db_labels, query_labels, k)
    if rel.shape[0] == 0:
        return 0.0
    hits = np.cumsum(rel, axis=1)
    precision = hits / np.arange(1, rel.shape[1] + 1)
    num_relevant = rel.sum(axis=1)
    ap = np.where(
        num_relevant > 0, (precision * rel).sum(axis=1) / np.maximum(num_relevant, 1), 0.0
    )
    return float(ap.mean())


def precision_recall_curve(I: Any, db_labels: Any, query_labels: Any,
                           cutoffs: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall after the first ``c`` results, for each ``c`` in ``cutoffs``
    (default ``1 .. K``), averaged over queries: the precision-recall curve of a ranking, as
    DeepHash-pytorch's ``CalcTopMapWithPR`` computes it.

    ``precision(c) = (1 / Q') sum_q hits_q(c) / c`` and ``recall(c) = (1 / Q') sum_q hits_q(c) /
    R_q``, with ``hits_q(c)`` the relevant results among the first ``c`` of ``I[q]`` and ``R_q``
    the relevant items of the whole database. ``Q'`` counts the queries with ``R_q > 0`` (a
    query with nothing to find has no recall; the reference also drops it). Ties are as ``I``
    orders them: rank the whole database (``K = N``) for recall to reach 1.

    Parameters
    ----------
    I : array_like of int, shape (Q, K)
        Result ids per query (as a search returns them), -1 where missing.
    db_labels : array_like, shape (N,) or (N, C)
        Class ids of the database items, or a 0/1 multi-label matrix.
    query_labels : array_like, shape (Q,) or (Q, C)
        The queries' labels, in the same form.
    cutoffs : array_like of int, shape (C,), optional
        Result counts in ``1..K`` (default: every one).

    Returns
    -------
    precision : ndarray of float64, shape (C,)
        Mean precision at each cutoff.
    recall : ndarray of float64, shape (C,)
        Mean recall at each cutoff.

    Raises
    ------
    ValueError
        If a cutoff is outside ``1..K``, the shapes disagree, or an id is outside the
        database.
    TypeError
        If ``I`` or ``cutoffs`` does not hold integers.
    """
    db = _labels(db_labels, "db_labels")
    queries = _labels(query_labels, "query_labels")
    I = _host(I, "I")
    check_rank(I, "I", (2,), "(num_queries, K)")
    if cutoffs is None:
        cutoffs = np.arange(1, I.shape[1] + 1)
    cutoffs = as_index_array(_host(cutoffs, "cutoffs"), "cutoffs")
    check_rank(cutoffs, "cutoffs", (1,), "(C,) result counts")
    if cutoffs.size and (cutoffs.min() < 1 or cutoffs.max() > I.shape[1]):
        raise ValueError(f"cutoffs must lie in [1, K = {I.shape[1]}], got {cutoffs.min()}.."
                         f"{cutoffs.max()}")
    rel = _relevance(I, db, queries, I.shape[1])
    if db.ndim == 1:  # R_q: the database items of the query's class
        per_class = dict(zip(*np.unique(db, return_counts=True), strict=True))
        total = np.array([per_class.get(q, 0) for q in queries], dtype=np.int64)
    else:
        total = (queries.astype(np.float32) @ db.T.astype(np.float32) > 0).sum(axis=1)
    keep = total > 0
    if not keep.any() or cutoffs.size == 0:
        return np.zeros(cutoffs.size), np.zeros(cutoffs.size)
    hits = np.cumsum(rel[keep], axis=1)[:, cutoffs - 1]
    precision = (hits / cutoffs[None, :]).mean(axis=0)
    recall = (hits / total[keep][:, None]).mean(axis=0)
    return precision, recall


def mahp_at_k(
    I: Any, db_labels: Any, query_labels: Any, class_similarity: Any, k: int
) -> float:
    """Mean average hierarchical precision (Deng, Berg & Fei-Fei, 2011).

    With ``s(a, b)`` = ``class_similarity[a, b]`` (e.g. ``1 - height(lca(a, b)) / height(root)``),
    the hierarchical precision of the first ``i`` results of query ``q`` is::

        HP@i(q) = sum_{r <= i} s(y_q, y_{I[q, r]}) / max_{|S| = i} sum_{j in S} s(y_q, y_j)

    the denominator being the best sum that any ``i`` database items reach (1 when it is 0).
    ``AHP@k(q)`` is the area under ``HP@1..k`` by the trapezoid rule divided by its width
    ``k - 1`` (``HP@1`` when ``k = 1``); ``mAHP@k`` is the mean over queries. A missing
    result (-1) has similarity 0.

    Parameters
    ----------
    I : array_like of int, shape (Q, K)
        Result ids per query, -1 where missing.
    db_labels : array_like of int, shape (N,)
        Class ids of the database items.
    query_labels : array_like of int, shape (Q,)
        Class ids of the queries.
    class_similarity : array_like, shape (C, C)
        Similarities between classes, finite and ``>= 0``.
    k : int
        Results counted per query, ``1..K``.

    Returns
    -------
    float
        In ``[0, 1]``; 0.0 for no queries.

    Raises
    ------
    ValueError
        If ``class_similarity`` is not square, negative or not finite; a label is outside
        its classes; or as :func:`precision_at_k`.
    TypeError
        If ids or labels are not integers.
    """
    db = _host(db_labels, "db_labels")
    queries = _host(query_labels, "query_labels")
    check_rank(db, "db_labels", (1,), "(N,) class ids")
    check_rank(queries, "query_labels", (1,), "(Q,) class ids")
    sim = _host(class_similarity, "class_similarity").astype(np.float64)
    check_rank(sim, "class_similarity", (2,), "(C, C)")
    num_classes = sim.shape[0]
    if sim.shape[1] != num_classes:
        raise ValueError(f"class_similarity must be square (C, C), got shape {sim.shape}")
    if not np.isfinite(sim).all() or (sim < 0).any():
        raise ValueError("class_similarity must hold finite values >= 0")
    db = as_index_array(db, "db_labels", num_classes)
    queries = as_index_array(queries, "query_labels", num_classes)
    I = _results(I, k, db.shape[0])
    if I.shape[0] != queries.shape[0]:
        raise ValueError(f"I has {I.shape[0]} rows but query_labels has {queries.shape[0]}")
    if I.shape[0] == 0:
        return 0.0

    present = I >= 0
    gained = np.where(present, sim[queries[:, None], db[np.where(present, I, 0)]], 0.0)
    got = np.cumsum(gained, axis=1)

    # Best achievable top-i sums, per query class: the database's similarities sorted.
    counts = np.bincount(db, minlength=num_classes)
    best = np.zeros((num_classes, k))
    for c in np.unique(queries):
        order = np.argsort(-sim[c], kind="stable")
        values = np.repeat(sim[c][order], counts[order])[:k]
        best[c, : values.size] = np.cumsum(values)
        best[c, values.size :] = best[c, values.size - 1] if values.size else 0.0
    ideal = best[queries]
    hp = np.where(ideal > 0, got / np.where(ideal > 0, ideal, 1.0), 1.0)
    if k == 1:
        ahp = hp[:, 0]
    else:
        ahp = ((hp[:, :-1] + hp[:, 1:]) / 2).sum(axis=1) / (k - 1)
    return float(ahp.mean())


def nmi(assignments: Any, labels: Any) -> float:
    """Normalised mutual information between buckets and classes.

    ``assignments`` is ``(N,)`` (one bucket per item) or ``(N, k)`` (an item in several buckets,
    ``-1`` for an unused slot). As in the DHT paper, every (item, active bucket) pair counts
    once: with ``n_cy`` the number of pairs in bucket ``c`` whose item has class ``y``,
    ``NMI = I(C; Y) / ((H(C) + H(Y)) / 2)`` on the joint distribution ``n_cy / sum n_cy``
    (1 when both entropies are 0).

    Parameters
    ----------
    assignments : array_like of int, shape (N,) or (N, k)
        Buckets per item, -1 for an unused slot.
    labels : array_like of int, shape (N,)
        Class ids.

    Returns
    -------
    float
        In ``[0, 1]``.

    Raises
    ------
    ValueError
        If the rows disagree or no bucket is assigned.
    TypeError
        If an array does not hold integers.

    Examples
    --------
    >>> import numpy as np, qkernels as qk
    >>> qk.metrics.nmi(np.array([0, 0, 1, 1]), np.array([5, 5, 7, 7]))
    1.0
    """
    buckets = _host(assignments, "assignments")
    check_rank(buckets, "assignments", (1, 2), "(N,) or (N, k)")
    classes = as_index_array(_host(labels, "labels"), "labels")
    check_rank(classes, "labels", (1,), "(N,)")
    buckets = as_index_array(buckets, "assignments", allow_missing=True)
    if buckets.shape[0] != classes.shape[0]:
        raise ValueError(
            f"assignments has {buckets.shape[0]} rows but labels has {classes.shape[0]}"
        )
    if buckets.ndim == 1:
        buckets = buckets[:, None]
    pair_classes = np.broadcast_to(classes[:, None], buckets.shape)
    active = buckets >= 0
    b, y = buckets[active], pair_classes[active]
    if b.size == 0:
        raise ValueError("assignments holds no bucket (all -1 or empty)")
    _, b = np.unique(b, return_inverse=True)
    _, y = np.unique(y, return_inverse=True)
    joint = np.zeros((b.max() + 1, y.max() + 1))
    np.add.at(joint, (b, y), 1.0)
    joint /= joint.sum()
    pc, py = joint.sum(axis=1), joint.sum(axis=0)
    h_c = -np.sum(pc * np.log(pc))
    h_y = -np.sum(py * np.log(py))
    if h_c == 0 and h_y == 0:
        return 1.0
    nz = joint > 0
    mutual = np.sum(joint[nz] * np.log(joint[nz] / np.outer(pc, py)[nz]))
    return float(max(mutual, 0.0) / ((h_c + h_y) / 2))


def search_speedup(candidate_counts: Any, db_size: int) -> float:
    """Search speed-up factor of a table: ``SUF = 1 / mean_q(|candidates_q| / N)``.

    ``db_size`` is ``N``, the number of items an exhaustive scan would look at (``N - 1`` when
    the queries come from the database and exclude themselves). Infinite when no query had a
    candidate.

    Parameters
    ----------
    candidate_counts : array_like of int, shape (Q,)
        Candidates per query (a table's ``candidate_counts`` after a search).
    db_size : int
        ``N``, ``>= 1``.

    Returns
    -------
    float
        The SUF.

    Raises
    ------
    ValueError
        If ``candidate_counts`` is empty or negative, or ``db_size`` below 1.
    TypeError
        If an argument does not hold integers.

    Examples
    --------
    >>> import numpy as np, qkernels as qk
    >>> qk.metrics.search_speedup(np.array([10, 30]), 1000)
    50.0
    """
    counts = _host(candidate_counts, "candidate_counts")
    check_rank(counts, "candidate_counts", (1,), "(num_queries,)")
    if counts.size == 0:
        raise ValueError("candidate_counts is empty: run a search first")
    counts = as_index_array(counts, "candidate_counts")
    db_size = check_int(db_size, "db_size", 1)
    mean = counts.mean()
    return float("inf") if mean == 0 else float(db_size / mean)


def bit_balance(codes: Any) -> dict[str, float]:
    """How evenly binary codes use their bits, the quantities a KL-to-uniform term drives.

    ``codes`` is ``(N, bits)``, unpacked: continuous outputs, +-1 or 0/1 codes, or booleans;
    bit ``b`` of item ``i`` is set when ``codes[i, b] > 0`` (sign() of the outputs, the same
    bits as ``pack_bits``). Returns a dict of floats:

    - ``imbalance``: ``mean_b |2 p_b - 1|`` with ``p_b`` the fraction of items whose bit ``b``
      is set; 0 when every bit splits the items in half, 1 when every bit is constant;
    - ``correlation``: the mean absolute Pearson correlation between two different bits
      (a constant bit counts as uncorrelated); 0 for independent bits;
    - ``entropy``: the mean per-bit entropy in bits (1 when balanced).

    Parameters
    ----------
    codes : array_like, shape (N, bits)
        Unpacked codes or continuous outputs.

    Returns
    -------
    dict of str to float
        ``{"imbalance", "correlation", "entropy"}``.

    Raises
    ------
    ValueError
        If ``codes`` is empty or holds NaN or Inf.
    TypeError
        If ``codes`` is neither numeric nor boolean.

    Examples
    --------
    >>> import numpy as np, qkernels as qk
    >>> qk.metrics.bit_balance(np.array([[1, -1], [-1, 1]]))
    {'imbalance': 0.0, 'correlation': 1.0, 'entropy': 1.0}
    """
    x = _host(codes, "codes")
    check_rank(x, "codes", (2,), "(N, bits)")
    if x.dtype.kind not in "biuf":
        raise TypeError(f"codes must be numeric or boolean, got dtype {x.dtype}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"codes has shape {x.shape}: need at least one item and one bit")
    check_finite(x, "codes")
    bits = (x > 0).astype(np.float64)
    p = bits.mean(axis=0)
    imbalance = float(np.abs(2 * p - 1).mean())
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    entropy = float(np.nan_to_num(terms, nan=0.0).mean())
    correlation = 0.0
    if bits.shape[1] > 1:
        centred = bits - p
        sd = np.sqrt((centred**2).mean(axis=0))
        cov = centred.T @ centred / bits.shape[0]
        live = sd > 0
        corr = np.zeros_like(cov)
        corr[np.ix_(live, live)] = cov[np.ix_(live, live)] / np.outer(sd[live], sd[live])
        off = ~np.eye(bits.shape[1], dtype=bool)
        correlation = float(np.abs(corr[off]).mean())
    return {"imbalance": imbalance, "correlation": correlation, "entropy": entropy}
