"""asv: product quantization (train, encode) and PQIndex (ADC search)."""

import numpy as np

import qkernels as qk


def _data(n, dim, seed):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((200, dim)).astype(np.float32) * 2
    return centers[rng.integers(0, 200, n)] + rng.standard_normal((n, dim), dtype=np.float32)


class ProductQuantization:
    params = ([4, 8], [200_000])
    param_names = ["num_subspaces", "n"]
    timeout = 300

    def setup(self, num_subspaces, n):
        self.x = _data(n, 64, 0)
        self.q = _data(200, 64, 1)
        self.pq = qk.ProductQuantizer(64, num_subspaces, 8).train(self.x[:20_000])
        self.index = qk.PQIndex(self.pq).add(self.x)
        self.index.search(self.q[:2], 10)

    def time_train(self, num_subspaces, n):
        qk.ProductQuantizer(64, num_subspaces, 8, iterations=10).train(self.x[:20_000])

    def time_encode(self, num_subspaces, n):
        self.pq.encode(self.x)

    def time_search(self, num_subspaces, n):
        self.index.search(self.q, 10)

    def track_reconstruction_error(self, num_subspaces, n):
        """Mean squared error of decode(encode(x)): a worse quantizer shows up here."""
        sample = self.x[:20_000]
        return float(((self.pq.decode(self.pq.encode(sample)) - sample) ** 2).mean())
