"""GPU twin of ``_flat_cpu.solve_batch``: one CUDA block per problem (qkernels/cuda/flow.cu).

Same network and the same optimum; the kernel serves every unit from its class (the CPU
solver's earlier form) rather than repairing the greedy start."""

from __future__ import annotations

from .. import _gpu


def solve_batch(scores, k: int, incr, codes) -> None:
    """``scores`` (B, n, d) float64, ``incr`` (n,) float64, ``codes`` (B, n, k) int64: cupy
    arrays on one device. Fills ``codes`` like the CPU solver (rows sorted)."""
    xp = _gpu.array_module(scores)  # numpy under the tests' emulation
    batch, n, d = scores.shape
    if batch == 0 or n == 0:
        return
    threads = 1 << (min(_gpu.block_size(), max(32, d)).bit_length() - 1)  # a power of two
    doubles = xp.empty(batch * (2 * n + 2 * d), dtype=xp.float64)
    ints = xp.empty(batch * (d + d * n + n + 2 * (d + n)), dtype=xp.int32)
    flags = xp.empty(batch * n * d, dtype=xp.uint8)
    _gpu.launch("flow", "solve_batch", batch, threads,
                (scores, xp.int32(n), xp.int32(d), xp.int32(k), incr, doubles, ints,
                 flags, codes), shared_mem=16 * threads)
