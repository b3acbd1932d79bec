"""asv: product quantization (train, encode) and PQIndex (ADC search, 4-bit fast scan)."""

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


class FastScan:
    """PQIndex over a 16 x 4-bit quantizer: the fast scan (AVX2 where the CPU has it)."""

    params = ([None, 0], [200_000])
    param_names = ["rerank", "n"]
    timeout = 300

    def setup(self, rerank, n):
        self.x = _data(n, 64, 0)
        self.q = _data(200, 64, 1)
        pq = qk.ProductQuantizer(64, 16, 4).train(self.x[:20_000])
        self.index = qk.PQIndex(pq).add(self.x)
        self.index.search(self.q, 10, rerank=rerank)  # compiled here, not timed

    def time_search(self, rerank, n):
        self.index.search(self.q, 10, rerank=rerank)

    def track_recall(self, rerank, n):
        """recall@10 against the exact L2 neighbours of the 200 queries."""
        truth = np.argsort(((self.q[:, None, :] - self.x[None, :20_000, :]) ** 2).sum(-1),
                           axis=1, kind="stable")[:, :10]
        index = qk.PQIndex(self.index.pq).add_codes(self.index.codes[:20_000])
        _, found = index.search(self.q, 10, rerank=rerank)
        hits = [len(set(a) & set(b)) for a, b in zip(found, truth, strict=True)]
        return float(np.mean(hits)) / 10
