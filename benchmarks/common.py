"""Data generators and peer implementations shared by compare.py and the asv suite."""

from __future__ import annotations

import numpy as np

# The DHT reference code scales scores by 1e4 and truncates them to integers before handing them
# to OR-tools; we benchmark on the same kind of input so that both solvers see the same problem
# and the optimum can be compared digit for digit.
SCORE_SCALE = 10_000


def dht_scores(n: int, d: int, *, items_per_class: int = 2, batch: int | None = None,
               seed: int = 0) -> np.ndarray:
    """Unary scores like a DHT training step: per class, the mean of L2-normalised hash-head
    outputs (standard normal at initialisation), times 1e4, truncated to integers (float64)."""
    rng = np.random.default_rng(seed)
    shape = (batch or 1, n, items_per_class, d)
    out = rng.standard_normal(shape)
    out /= np.linalg.norm(out, axis=-1, keepdims=True)
    scores = np.trunc(out.mean(axis=2) * SCORE_SCALE)
    return scores if batch else scores[0]


def ortools_sparse_codes(scores: np.ndarray, k: int, penalty: float):
    """OR-tools SimpleMinCostFlow on the DHT network, arcs given as numpy vectors (graph build
    included): source -> class (cap k), class -> bucket (cap 1, -score), and the convex sink
    cost as n parallel unit arcs per bucket, as the reference code builds it.

    Returns (optimal cost, codes (n, k) sorted)."""
    from ortools.graph.python import min_cost_flow

    n, d = scores.shape
    source, sink = n + d, n + d + 1
    classes = np.arange(n)
    buckets = n + np.arange(d)
    tails = np.concatenate([np.full(n, source), np.repeat(classes, d), np.repeat(buckets, n)])
    heads = np.concatenate([classes, np.tile(buckets, n), np.full(n * d, sink)])
    capacities = np.concatenate([np.full(n, k), np.ones(2 * n * d, dtype=np.int64)])
    costs = np.concatenate([
        np.zeros(n, dtype=np.int64),
        (-scores).ravel().astype(np.int64),
        np.tile((penalty * np.arange(n)).astype(np.int64), d),
    ])
    solver = min_cost_flow.SimpleMinCostFlow()
    arcs = solver.add_arcs_with_capacity_and_unit_cost(tails, heads, capacities, costs)
    supplies = np.zeros(n + d + 2, dtype=np.int64)
    supplies[source], supplies[sink] = n * k, -n * k
    solver.set_nodes_supplies(np.arange(n + d + 2), supplies)
    if solver.solve() != solver.OPTIMAL:
        raise RuntimeError("OR-tools found no optimum")
    used = solver.flows(arcs[n : n + n * d]).reshape(n, d) > 0
    codes = np.sort(np.nonzero(used)[1].reshape(n, k), axis=1)
    return float(solver.optimal_cost()), codes


def clustered_codes_data(n: int, num_buckets: int, *, dim: int = 64, num_classes: int = 1000,
                         favourites: int = 4, seed: int = 0, chunk: int = 100_000):
    """Items that look like a trained DHT model's output, generated chunk by chunk.

    ``num_classes`` Gaussian classes in ``dim`` dimensions (embeddings), and activations over
    ``num_buckets`` in which each class favours ``favourites`` buckets (a boost of 3 over unit
    noise). Yields ``(labels, activations, embeddings)`` chunks (float32) so that a million
    items never need their activations in memory at once.
    """
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((num_classes, dim)).astype(np.float32) * 2
    boost = np.zeros((num_classes, num_buckets), dtype=np.float32)
    for c in range(num_classes):
        boost[c, rng.choice(num_buckets, favourites, replace=False)] = 3.0
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        labels = rng.integers(0, num_classes, m)
        embeddings = centers[labels] + rng.standard_normal((m, dim), dtype=np.float32)
        activations = boost[labels] + rng.standard_normal((m, num_buckets), dtype=np.float32)
        yield labels, activations, embeddings


def ortools_level2(scores: np.ndarray, parents: np.ndarray, k: int, penalty_sibling: float,
                   penalty_global: float) -> float:
    """OR-tools on the level-2 network of cascaded codes (CVPR 2019), arcs as numpy vectors
    (graph build included): source -> class (cap k), class -> group (parent, t) (cap 1,
    -score), group -> child t and child t -> sink with their convex costs as parallel unit
    arcs. Returns the optimal cost."""
    from ortools.graph.python import min_cost_flow

    n, d = scores.shape
    slots = np.unique(parents, return_inverse=True)[1]
    groups = int(slots.max()) + 1
    source = 0
    cls = 1 + np.arange(n)
    grp = 1 + n
    child = grp + groups * d + np.arange(d)
    sink = grp + groups * d + d
    group_ids = grp + np.arange(groups * d)
    unit = np.arange(n, dtype=np.int64)
    tails = np.concatenate([np.zeros(n, dtype=np.int64), np.repeat(cls, d),
                            np.repeat(group_ids, n), np.repeat(child, n)])
    heads = np.concatenate([cls, (grp + slots[:, None] * d + np.arange(d)).ravel(),
                            np.repeat(np.tile(child, groups), n), np.full(d * n, sink)])
    caps = np.concatenate([np.full(n, k), np.ones(n * d + groups * d * n + d * n, np.int64)])
    costs = np.concatenate([np.zeros(n, dtype=np.int64), (-scores).ravel().astype(np.int64),
                            np.tile((penalty_sibling * unit).astype(np.int64), groups * d),
                            np.tile((penalty_global * unit).astype(np.int64), d)])
    solver = min_cost_flow.SimpleMinCostFlow()
    solver.add_arcs_with_capacity_and_unit_cost(tails, heads, caps, costs)
    supplies = np.zeros(sink + 1, dtype=np.int64)
    supplies[source], supplies[sink] = n * k, -n * k
    solver.set_nodes_supplies(np.arange(sink + 1), supplies)
    if solver.solve() != solver.OPTIMAL:
        raise RuntimeError("OR-tools found no optimum")
    return float(solver.optimal_cost())


def hierarchical_codes_data(n: int, d: int, *, dim: int = 64, num_classes: int = 1000,
                       children: int = 4, seed: int = 0, chunk: int = 100_000):
    """Like :func:`clustered_codes_data`, with two levels of activations: each class favours
    one parent bucket and ``children`` child buckets (boost 3 over unit noise). Yields
    ``(labels, level1, level2, embeddings)`` chunks (float32)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((num_classes, dim)).astype(np.float32) * 2
    boost1 = np.zeros((num_classes, d), dtype=np.float32)
    boost2 = np.zeros((num_classes, d), dtype=np.float32)
    for c in range(num_classes):
        boost1[c, rng.integers(0, d)] = 3.0
        boost2[c, rng.choice(d, children, replace=False)] = 3.0
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        labels = rng.integers(0, num_classes, m)
        embeddings = centers[labels] + rng.standard_normal((m, dim), dtype=np.float32)
        level1 = boost1[labels] + rng.standard_normal((m, d), dtype=np.float32)
        level2 = boost2[labels] + rng.standard_normal((m, d), dtype=np.float32)
        yield labels, level1, level2, embeddings


def gaussian_classes(n: int, dim: int, seed: int, num_classes: int = 1000) -> np.ndarray:
    """``n`` float32 points around ``num_classes`` Gaussian centres (scale 2, unit noise),
    generated 100,000 at a time."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((num_classes, dim)).astype(np.float32) * 2
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        out[start : start + m] = centers[rng.integers(0, num_classes, m)]
        out[start : start + m] += rng.standard_normal((m, dim), dtype=np.float32)
    return out
