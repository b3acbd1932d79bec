"""asv: SparseHashTable build and search on clustered data that looks like learned codes."""

import numpy as np

import qkernels as qk

from .common import clustered_codes_data


class SparseTable:
    params = ([1, 2, 4],)
    param_names = ["k"]
    timeout = 300

    def setup(self, k):
        n, num_buckets = 200_000, 512
        _, act, emb = zip(*clustered_codes_data(n + 500, num_buckets, seed=k), strict=True)
        act, emb = np.concatenate(act), np.concatenate(emb)
        self.db_act, self.db_emb = act[:n], emb[:n]
        self.q_act, self.q_emb = act[n:], emb[n:]
        self.table = qk.SparseHashTable(num_buckets, k).add(self.db_act, self.db_emb)
        self.table.search(self.q_act[:2], self.q_emb[:2], 16)  # build and compile

    def time_search(self, k):
        self.table.search(self.q_act, self.q_emb, 16)

    def time_build(self, k):
        table = qk.SparseHashTable(self.table.num_buckets, k).add(self.db_act, self.db_emb)
        table.search(self.q_act[:1], self.q_emb[:1], 1)

    def track_speedup_factor(self, k):
        """SUF of the last search: a change that makes searches look at more items shows up."""
        self.table.search(self.q_act, self.q_emb, 16)
        return qk.metrics.search_speedup(self.table.candidate_counts, self.table.ntotal)

    def track_recall_vs_exhaustive(self, k):
        """Fraction of the exhaustive top-16 that the table search returns."""
        _, I = self.table.search(self.q_act, self.q_emb, 16)
        norms = (self.db_emb**2).sum(1)
        hits = 0
        for q, found in zip(self.q_emb, I, strict=True):
            truth = np.argsort(norms - 2 * (self.db_emb @ q), kind="stable")[:16]
            hits += len(set(truth) & set(found))
        return hits / (16 * len(I))
