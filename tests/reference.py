"""Slow, obviously-right twins of every kernel and metric: plain Python loops, no vectorisation.

Tests compare the fast code with these on random inputs. Keep them naive: their value is that a
reader can check them against the formula in a minute.
"""

from __future__ import annotations

import math

import numpy as np

# --------------------------------------------------------------------------------------------
# metrics


def _shares_label(a, b) -> bool:
    if np.ndim(a) == 0:
        return int(a) == int(b)
    return any(bool(x) and bool(y) for x, y in zip(a, b, strict=True))


def precision_at_k(I, db_labels, query_labels, k):
    total = 0.0
    for q in range(len(I)):
        hits = 0
        for j in range(k):
            item = int(I[q][j])
            if item >= 0 and _shares_label(db_labels[item], query_labels[q]):
                hits += 1
        total += hits / k
    return total / len(I) if len(I) else 0.0


def map_at_k(I, db_labels, query_labels, k):
    total = 0.0
    for q in range(len(I)):
        hits = 0
        precision_sum = 0.0
        for j in range(k):
            item = int(I[q][j])
            if item >= 0 and _shares_label(db_labels[item], query_labels[q]):
                hits += 1
                precision_sum += hits / (j + 1)
        total += precision_sum / hits if hits else 0.0
    return total / len(I) if len(I) else 0.0


def mahp_at_k(I, db_labels, query_labels, class_similarity, k):
    total = 0.0
    for q in range(len(I)):
        yq = int(query_labels[q])
        all_sims = sorted((class_similarity[yq][int(y)] for y in db_labels), reverse=True)
        hp = []
        got = 0.0
        for i in range(1, k + 1):
            item = int(I[q][i - 1])
            if item >= 0:
                got += class_similarity[yq][int(db_labels[item])]
            ideal = sum(all_sims[:i])
            hp.append(got / ideal if ideal > 0 else 1.0)
        if k == 1:
            total += hp[0]
        else:
            area = 0.0
            for i in range(k - 1):
                area += (hp[i] + hp[i + 1]) / 2
            total += area / (k - 1)
    return total / len(I) if len(I) else 0.0


def nmi(assignments, labels):
    pairs = []
    for item in range(len(labels)):
        row = assignments[item]
        buckets = [int(row)] if np.ndim(row) == 0 else [int(b) for b in row]
        for b in buckets:
            if b >= 0:
                pairs.append((b, int(labels[item])))
    total = len(pairs)
    joint, pc, py = {}, {}, {}
    for b, y in pairs:
        joint[(b, y)] = joint.get((b, y), 0) + 1
        pc[b] = pc.get(b, 0) + 1
        py[y] = py.get(y, 0) + 1
    h_c = -sum(c / total * math.log(c / total) for c in pc.values())
    h_y = -sum(c / total * math.log(c / total) for c in py.values())
    if h_c == 0 and h_y == 0:
        return 1.0
    mutual = 0.0
    for (b, y), c in joint.items():
        p = c / total
        mutual += p * math.log(p / (pc[b] / total * py[y] / total))
    return max(mutual, 0.0) / ((h_c + h_y) / 2)


def search_speedup(candidate_counts, db_size):
    mean = sum(int(c) for c in candidate_counts) / len(candidate_counts)
    return math.inf if mean == 0 else db_size / mean

