"""asv: the exact sparse-code solvers (solve_sparse_codes, solve_hierarchical_codes)."""

import qkernels as qk

from .common import SCORE_SCALE, dht_scores, ortools_level2, ortools_sparse_codes


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


class HierarchicalCodes:
    """Both levels of cascaded codes, n = 64, penalties 100 and 1 (x 1e4) as in compare.py."""

    params = ([32, 64], [1, 4])
    param_names = ["d", "k2"]

    def setup(self, d, k2):
        self.s1 = dht_scores(64, d, seed=d + k2)
        self.s2 = dht_scores(64, d, seed=d + k2 + 100)
        self.penalties = (100.0 * SCORE_SCALE, 1.0 * SCORE_SCALE)
        qk.solve_hierarchical_codes(self.s1[:4], self.s2[:4], 1, *self.penalties)

    def time_solve(self, d, k2):
        qk.solve_hierarchical_codes(self.s1, self.s2, k2, *self.penalties)

    def track_level2_gap_to_ortools(self, d, k2):
        """0 when level 2 is optimal (given our level 1)."""
        level1, level2 = qk.solve_hierarchical_codes(self.s1, self.s2, k2, *self.penalties)
        ours = qk.hierarchical_code_objective(self.s1, self.s2, level1, level2,
                                              *self.penalties)[1]
        return ours - ortools_level2(self.s2, level1, k2, *self.penalties)
