"""GPU twin of ``_flat_cpu.solve_batch``: one CUDA block per problem (qkernels/cuda/flow.cu).

The kernel runs the CPU solver's algorithm step for step (the greedy start, then shortest
paths from excess to deficit buckets with the dense Dijkstra), so it returns the CPU's codes."""

from __future__ import annotations

from .. import _gpu


def solve_batch(scores, k: int, incr, codes) -> None:
    """``scores`` (B, n, d) float64, ``incr`` (L,) float64 with L >= 1, ``codes`` (B, n, k)
    int64: cupy arrays on one device (numpy under the tests' emulation). Fills ``codes`` like
    the CPU solver (rows sorted)."""
    xp = _gpu.array_module(scores)  # numpy under the tests' emulation
    batch, n, d = scores.shape
    if batch == 0 or n == 0:
        return
    threads = 1 << (min(_gpu.block_size(), max(32, d + 1)).bit_length() - 1)  # a power of two
    doubles = xp.empty(batch * (5 * d + 3 * n + 2), dtype=xp.float64)
    longs = xp.empty(batch * (4 * d + d * n + n + 2), dtype=xp.int64)
    flags = xp.empty(batch * n * d, dtype=xp.uint8)
    _gpu.launch("flow", "solve_batch", batch, threads,
                (scores, xp.int32(n), xp.int32(d), xp.int32(k), incr, xp.int32(incr.shape[0]),
                 doubles, longs, flags, codes), shared_mem=24 * threads)
    if int(codes.min()) < 0:  # one scalar back: a silently wrong answer would be worse
        raise RuntimeError("GPU flow solver: no augmenting path (please report this)")
