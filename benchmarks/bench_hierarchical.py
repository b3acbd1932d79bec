"""asv: the exact two-level code solver (solve_hierarchical_codes), both levels."""

import qkernels as qk

from .common import SCORE_SCALE, dht_scores, ortools_level2


class HierarchicalCodes:
    """Both levels of hierarchical (cascaded) codes, n = 64, penalties 100 and 1 (x 1e4), as
    in compare.py."""

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
