"""asv: the GPU paths of every family (skipped where there is no NVIDIA GPU with cupy).

Inputs are cupy arrays made once in ``setup``; each timing ends with the stream synchronised.
``SCALE`` shrinks every database (the tests run each benchmark once under the cupy stand-in at
a small scale). Without asv, ``python -m benchmarks.bench_gpu`` times each benchmark itself
(median of 5 runs after a warm-up), as benchmarks/gpu_check.sh does on a lent machine.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

import qkernels as qk

from .common import clustered_codes_data, dht_scores, gaussian_classes

SCALE = 1.0  # database sizes are multiplied by it


def _require_gpu():
    from qkernels import _gpu

    if not _gpu.available():
        raise NotImplementedError("no GPU")  # asv skips the benchmark


def _device(a: np.ndarray):
    import cupy

    return cupy.asarray(np.ascontiguousarray(a))


def _synchronize():
    import cupy

    cupy.cuda.get_current_stream().synchronize()


def _size(n: int) -> int:
    return max(8, int(n * SCALE))


class GPUSolver:
    params = ([(64, 64, 4), (64, 512, 4)],)
    param_names = ["shape"]

    def setup(self, shape):
        _require_gpu()
        n, d, self.k = shape
        self.scores = _device(dht_scores(n, d, batch=max(1, int(256 * SCALE)), seed=d))
        qk.solve_sparse_codes(self.scores[:1], self.k, 1e4)

    def time_solve_batch(self, shape):
        qk.solve_sparse_codes(self.scores, self.k, 1e4)
        _synchronize()


class GPUHamming:
    def setup(self):
        _require_gpu()
        rng = np.random.default_rng(0)
        self.db = _device(qk.pack_bits(rng.standard_normal((_size(1_000_000), 64))))
        self.q = _device(qk.pack_bits(rng.standard_normal((_size(1000), 64))))
        qk.hamming_topk(self.q[:2], self.db, 10)

    def time_hamming_topk(self):
        qk.hamming_topk(self.q, self.db, 10)
        _synchronize()


class GPUBinaryIndex:
    def setup(self):
        _require_gpu()
        rng = np.random.default_rng(1)
        self.index = qk.BinaryIndex(128).add(qk.pack_bits(rng.standard_normal((_size(1_000_000),
                                                                                128))))
        self.q = _device(qk.pack_bits(rng.standard_normal((_size(1000), 128))))
        self.index.search(self.q[:2], 10)  # the device mirror, once

    def time_search(self):
        self.index.search(self.q, 10)
        _synchronize()


class GPUPQ:
    def setup(self):
        _require_gpu()
        x = gaussian_classes(_size(1_000_000), 64, seed=2)
        pq = qk.ProductQuantizer(64, 8, 8, iterations=5).train(x[:65_536])
        self.index = qk.PQIndex(pq).add(x)
        self.q = _device(gaussian_classes(_size(1000), 64, seed=3))
        self.index.search(self.q[:2], 10)

    def time_search(self):
        self.index.search(self.q, 10)
        _synchronize()


class GPUTable:
    def setup(self):
        _require_gpu()
        n, queries = _size(1_000_000), _size(1000)
        chunks = list(clustered_codes_data(n + queries, 512, dim=64, seed=4))
        act = np.concatenate([c[1] for c in chunks])
        emb = np.concatenate([c[2] for c in chunks])
        self.table = qk.SparseHashTable(512, 2).add(act[:n], emb[:n])
        self.act, self.emb = _device(act[n:]), _device(emb[n:])
        self.table.search(self.act[:2], self.emb[:2], 16)

    def time_search(self):
        self.table.search(self.act, self.emb, 16)
        _synchronize()


class GPUHierarchical:
    def setup(self):
        _require_gpu()
        n, queries, d = _size(1_000_000), _size(1000), 32
        rng = np.random.default_rng(5)
        labels = rng.integers(0, 2000, n + queries)
        level1 = rng.standard_normal((2000, d))[labels] * 3 + rng.standard_normal((len(labels), d))
        level2 = rng.standard_normal((2000, d))[labels] * 3 + rng.standard_normal((len(labels), d))
        emb = gaussian_classes(len(labels), 64, seed=6)
        self.table = qk.HierarchicalHashTable(d, 2).add(level1[:n], level2[:n], emb[:n])
        self.q = [_device(a[n:]) for a in (level1, level2, emb)]
        self.table.search(*(a[:2] for a in self.q), 16)

    def time_search(self):
        self.table.search(*self.q, 16)
        _synchronize()


class GPUEncode:
    def setup(self):
        _require_gpu()
        x = gaussian_classes(_size(1_000_000), 64, seed=7)
        self.itq = qk.ITQ(64, iterations=5).fit(x[:20_000])
        self.h2q = qk.HouseholderQuantizer(64).fit(x[:20_000], epochs=1)
        self.x = _device(x)
        self.itq.encode(self.x[:2])
        self.h2q.encode(self.x[:2])

    def time_itq_encode(self):
        self.itq.encode(self.x)
        _synchronize()

    def time_householder_encode(self):
        self.h2q.encode(self.x)
        _synchronize()


BENCHMARKS = (GPUSolver, GPUHamming, GPUBinaryIndex, GPUPQ, GPUTable, GPUHierarchical,
              GPUEncode)


def run(repeat: int = 5, warm_up: bool = True) -> list[tuple[str, float]]:
    """Each benchmark's median seconds (``repeat`` runs after a warm-up), without asv."""
    results = []
    for cls in BENCHMARKS:
        for params in _parameters(cls):
            bench = cls()
            bench.setup(*params)
            for name in sorted(n for n in dir(cls) if n.startswith("time_")):
                method = getattr(bench, name)
                if warm_up:
                    method(*params)
                times = []
                for _ in range(repeat):
                    start = time.perf_counter()
                    method(*params)
                    times.append(time.perf_counter() - start)
                label = f"{cls.__name__}.{name}" + (f"{params}" if params else "")
                results.append((label, statistics.median(times)))
    return results


def _parameters(cls) -> list[tuple]:
    return [(p,) for p in cls.params[0]] if hasattr(cls, "params") else [()]


if __name__ == "__main__":
    from qkernels import _gpu

    if not _gpu.available():
        print("bench_gpu: skipped (needs an NVIDIA GPU with cupy)")
    else:
        for label, seconds in run():
            print(f"{label:60s} {seconds * 1e3:10.3f} ms")
