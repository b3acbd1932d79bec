"""asv: packed binary codes, BinaryIndex and hamming_topk (Hamming search)."""

import numpy as np

import qkernels as qk

from .common import gaussian_classes


class Hamming:
    params = ([64, 128], [1_000_000])
    param_names = ["nbits", "n"]
    timeout = 300

    def setup(self, nbits, n):
        rng = np.random.default_rng(nbits)
        self.db = qk.pack_bits(rng.standard_normal((n, nbits), dtype=np.float32))
        self.q = qk.pack_bits(rng.standard_normal((200, nbits), dtype=np.float32))
        self.index = qk.BinaryIndex(nbits).add(self.db)
        self.index.search(self.q[:2], 10)

    def time_search(self, nbits, n):
        self.index.search(self.q, 10)

    def time_hamming_topk_function(self, nbits, n):
        qk.hamming_topk(self.q, self.db, 10)


class HouseholderFit:
    """One epoch of the H2Q fit (batch 128, the paper's) over 54,000 embeddings."""

    params = ([16, 64],)
    param_names = ["dim"]
    timeout = 300

    def setup(self, dim):
        self.x = gaussian_classes(60_000, dim, seed=dim, num_classes=100)

    def time_fit_one_epoch(self, dim):
        qk.HouseholderQuantizer(dim).fit(self.x, epochs=1)
