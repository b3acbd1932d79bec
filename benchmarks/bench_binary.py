"""asv: packed binary codes, BinaryIndex and hamming_topk (Hamming search)."""

import numpy as np

import qkernels as qk


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
