"""asv: the GPU kernels (skipped where there is no NVIDIA GPU with cupy)."""

import numpy as np

import qkernels as qk

from .common import dht_scores


def _require_gpu():
    from qkernels import _gpu

    if not _gpu.available():
        raise NotImplementedError("no GPU")  # asv skips the benchmark


class GPUSolver:
    params = ([(64, 64, 4), (64, 512, 4)],)
    param_names = ["shape"]

    def setup(self, shape):
        _require_gpu()
        import torch

        n, d, self.k = shape
        self.scores = torch.from_numpy(dht_scores(n, d, batch=256, seed=d)).cuda()
        qk.solve_sparse_codes(self.scores[:1], self.k, 1e4)

    def time_solve_batch(self, shape):
        import torch

        qk.solve_sparse_codes(self.scores, self.k, 1e4)
        torch.cuda.synchronize()


class GPUHamming:
    def setup(self):
        _require_gpu()
        import torch

        rng = np.random.default_rng(0)
        self.db = torch.from_numpy(qk.pack_bits(rng.standard_normal((1_000_000, 64)))).cuda()
        self.q = torch.from_numpy(qk.pack_bits(rng.standard_normal((1000, 64)))).cuda()
        qk.hamming_topk(self.q[:2], self.db, 10)

    def time_hamming_topk(self):
        import torch

        qk.hamming_topk(self.q, self.db, 10)
        torch.cuda.synchronize()
