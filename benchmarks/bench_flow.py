"""asv: the exact flat sparse-code solver (solve_sparse_codes), one problem and batched."""

import qkernels as qk

from .common import SCORE_SCALE, dht_scores, ortools_sparse_codes


class SparseCodes:
    params = ([64, 512], [64, 512], [1, 3, 4], [0.3, 1.0])
    param_names = ["n", "d", "k", "penalty"]

    def setup(self, n, d, k, penalty):
        self.scores = dht_scores(n, d, seed=n + d + k)
        self.penalty = penalty * SCORE_SCALE
        qk.solve_sparse_codes(self.scores[:2, :4], 1, self.penalty)  # compile / load the cache

    def time_solve(self, n, d, k, penalty):
        qk.solve_sparse_codes(self.scores, k, self.penalty)

    def track_gap_to_ortools(self, n, d, k, penalty):
        """0 when ours is optimal; a faster but wrong change shows up here."""
        codes = qk.solve_sparse_codes(self.scores, k, self.penalty)
        optimum, _ = ortools_sparse_codes(self.scores, k, self.penalty)
        return qk.sparse_code_objective(self.scores, codes, self.penalty) - optimum


class SparseCodesBatched:
    params = ([16, 256],)
    param_names = ["batch"]

    def setup(self, batch):
        self.scores = dht_scores(64, 64, batch=batch, seed=batch)
        qk.solve_sparse_codes(self.scores[:1], 4, SCORE_SCALE)

    def time_solve_batch(self, batch):
        qk.solve_sparse_codes(self.scores, 4, SCORE_SCALE)
