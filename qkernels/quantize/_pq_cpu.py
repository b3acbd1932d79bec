"""Numba kernels of product quantization: k-means per subspace, encoding and decoding (the
look-up-table scans that search the codes are in qkernels/index/_pq_cpu.py).

Distances between sub-vectors use ``qkernels._simd`` (float32, eight fixed lanes); a PQ
distance is the sum of the ``M`` table entries in the order ``m = 0, 1, ..., M - 1``. Ties go to
the lower codeword (encoding) or the lower item (search). tests/reference.py repeats all of it
with plain loops.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .._parallel import parallel_kernel
from .._simd import sq_l2_f32


@nb.njit(cache=True, nogil=True)
def _nearest(row, centroids):
    """Index and squared distance of the centroid nearest to ``row`` (lowest index on ties)."""
    best = 0
    best_dist = sq_l2_f32(row, centroids[0])
    for c in range(1, centroids.shape[0]):
        dist = sq_l2_f32(row, centroids[c])
        if dist < best_dist:
            best_dist = dist
            best = c
    return best, best_dist


@nb.njit(cache=True, nogil=True)
def _kmeanspp(points, num_centroids, uniforms, out):
    """k-means++ seeding: the first centre at ``uniforms[0] * n``, then each next one drawn with
    probability proportional to the squared distance to the nearest chosen centre."""
    n = points.shape[0]
    first = min(n - 1, int(uniforms[0] * n))
    out[0] = points[first]
    nearest = np.empty(n, dtype=np.float64)
    for i in range(n):
        nearest[i] = sq_l2_f32(points[i], out[0])
    for c in range(1, num_centroids):
        total = 0.0
        for i in range(n):
            total += nearest[i]
        pick = -1
        if total > 0.0:
            target = uniforms[c] * total
            running = 0.0
            for i in range(n):
                running += nearest[i]
                if running > target and nearest[i] > 0.0:
                    pick = i
                    break
            if pick < 0:  # rounding left the target at the very end
                for i in range(n - 1, -1, -1):
                    if nearest[i] > 0.0:
                        pick = i
                        break
        if pick < 0:  # every point sits on a centre already: repeat one (k-means fixes it)
            pick = min(n - 1, int(uniforms[c] * n))
        out[c] = points[pick]
        for i in range(n):
            dist = sq_l2_f32(points[i], out[c])
            if dist < nearest[i]:
                nearest[i] = dist


@nb.njit(cache=True, nogil=True)
def _lloyd(points, centroids, iterations):
    """Lloyd iterations in place. After the means, each empty cluster (in order) takes the point
    farthest from its centre (lowest index on ties), which then counts as at distance 0. Stops
    early when no assignment changes. Returns the iterations run."""
    n, dsub = points.shape
    k = centroids.shape[0]
    assign = np.full(n, -1, dtype=np.int64)
    dist = np.empty(n, dtype=np.float32)
    sums = np.empty((k, dsub), dtype=np.float64)
    counts = np.empty(k, dtype=np.int64)
    for it in range(iterations):
        changed = 0
        for i in range(n):
            c, d = _nearest(points[i], centroids)
            dist[i] = d
            if c != assign[i]:
                changed += 1
                assign[i] = c
        if changed == 0 and it > 0:
            return it
        sums[:] = 0.0
        counts[:] = 0
        for i in range(n):
            counts[assign[i]] += 1
            for j in range(dsub):
                sums[assign[i], j] += points[i, j]
        for c in range(k):
            if counts[c] > 0:
                for j in range(dsub):
                    centroids[c, j] = np.float32(sums[c, j] / counts[c])
        for c in range(k):  # then each empty cluster takes the point farthest from its centre
            if counts[c] > 0:
                continue
            far = 0
            for i in range(1, n):
                if dist[i] > dist[far]:
                    far = i
            centroids[c] = points[far]
            counts[c] = 1
            assign[far] = c
            dist[far] = 0.0
    return iterations


@parallel_kernel
def train(x, num_subspaces, num_centroids, iterations, uniforms, centroids):
    """k-means++ then Lloyd in every subspace, in parallel over subspaces.

    ``x`` (N, dim) float32, ``uniforms`` (M, K) draws in [0, 1) for the seeding, ``centroids``
    (M, K, dsub) is written.
    """
    dsub = x.shape[1] // num_subspaces
    for m in nb.prange(num_subspaces):
        points = np.ascontiguousarray(x[:, m * dsub:(m + 1) * dsub])
        _kmeanspp(points, num_centroids, uniforms[m], centroids[m])
        _lloyd(points, centroids[m], iterations)


@parallel_kernel
def encode(x, centroids, codes):
    """``codes[i, m]``: the codeword of subspace ``m`` nearest to ``x[i]``'s m-th sub-vector."""
    num_subspaces, _, dsub = centroids.shape
    for i in nb.prange(x.shape[0]):
        for m in range(num_subspaces):
            c, _ = _nearest(x[i, m * dsub:(m + 1) * dsub], centroids[m])
            codes[i, m] = c


@parallel_kernel
def decode(codes, centroids, out):
    num_subspaces, _, dsub = centroids.shape
    for i in nb.prange(codes.shape[0]):
        for m in range(num_subspaces):
            out[i, m * dsub:(m + 1) * dsub] = centroids[m, codes[i, m]]
