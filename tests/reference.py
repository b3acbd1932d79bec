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


def precision_recall_curve(I, db_labels, query_labels, cutoffs):
    """Per query: hits among the first c results over c, and over the query's relevant items in
    the whole database; means over the queries that have any (CalcTopMapWithPR's rule)."""
    precision = [0.0] * len(cutoffs)
    recall = [0.0] * len(cutoffs)
    counted = 0
    for q in range(len(I)):
        relevant = sum(_shares_label(y, query_labels[q]) for y in db_labels)
        if relevant == 0:
            continue
        counted += 1
        for i, c in enumerate(cutoffs):
            hits = sum(1 for j in range(int(c)) if int(I[q][j]) >= 0
                       and _shares_label(db_labels[int(I[q][j])], query_labels[q]))
            precision[i] += hits / int(c)
            recall[i] += hits / relevant
    if counted == 0:
        return [0.0] * len(cutoffs), [0.0] * len(cutoffs)
    return [p / counted for p in precision], [r / counted for r in recall]


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


# --------------------------------------------------------------------------------------------
# exact sparse codes (DHT): the objective and three independent optimum oracles


def increments(n, penalty=1.0, bucket_costs=None):
    """incr[c]: the cost of the (c + 1)-th class in one bucket."""
    if bucket_costs is not None:
        return [float(x) for x in bucket_costs[:n]]
    return [penalty * c for c in range(n)]


def sparse_code_objective(scores, codes, incr):
    """-sum of the chosen scores + sum over buckets of incr[0] + ... + incr[c_r - 1]."""
    n, d = len(scores), len(scores[0])
    occupancy = [0] * d
    total = 0.0
    for i in range(n):
        for r in codes[i]:
            total -= float(scores[i][int(r)])
            occupancy[int(r)] += 1
    for r in range(d):
        for c in range(occupancy[r]):
            total += incr[c]
    return total


def relax_class(scores, j, assigned, pb, label, pred, base, floor):
    """One Dijkstra step of the flow solver: class ``j`` (at ``floor``, with ``base = floor +
    its potential``) offers every bucket it is not in ``max(base - scores[j][b] - pb[b],
    floor)`` (the clamp as Numba's ``max(x, floor)``: ``floor`` only where ``floor > x``),
    which replaces the bucket's label (and ``j`` its pred) where strictly lower. Returns the
    new labels and preds."""
    label, pred = list(label), list(pred)
    for b in range(len(scores[j])):
        cost = (base - scores[j][b]) - pb[b]
        cand = floor if floor > cost else cost
        if cand < label[b] and not assigned[j][b]:
            label[b], pred[b] = cand, j
    return label, pred


def top_k(row, k):
    """The indices of the ``k`` largest entries of ``row``, largest first, the lower index
    first on ties (``-0.0`` ties with ``0.0``): the flow solver's greedy start."""
    return sorted(range(len(row)), key=lambda r: (-row[r], r))[:k]


def nearest_node(label_bits, done, deficit):
    """The flow solver's selection: a node's key is its label's bits, inf's bits or more
    where it is settled (``done[i]`` true); ``(the least key, the first node holding it, the
    least key of a deficit node (``deficit[i]`` true), the first deficit node holding it)``;
    without a deficit node the same of the keys with inf's bits set (at least inf's bits)."""
    inf_bits = 0x7FF0000000000000
    keys = [int(a) | (inf_bits if s else 0) for a, s in zip(label_bits, done, strict=True)]
    near = min(keys)
    lacking = [key if f else key | inf_bits for key, f in zip(keys, deficit, strict=True)]
    bound = min(lacking)
    return near, keys.index(near), bound, lacking.index(bound)


def least_after(keys, key, node):
    """The least ``(key, node)`` pair of ``keys`` after ``(key, node)`` in (key, node) order:
    ``(its key, its node)``, or ``(2**63 - 1, 0)`` where there is none."""
    later = [(int(a), i) for i, a in enumerate(keys) if (int(a), i) > (key, node)]
    return min(later) if later else (2**63 - 1, 0)


def byte_mask(flags):
    """Flags as the solver's masks: one byte per eight, flag ``i`` in bit ``i % 8`` of byte
    ``i // 8``."""
    return np.packbits(np.asarray(flags, dtype=bool), bitorder="little")


def sparse_codes_brute_force(scores, k, incr):
    """The optimum by trying every assignment (tiny instances only)."""
    import itertools

    n, d = len(scores), len(scores[0])
    choices = list(itertools.combinations(range(d), k))
    best = math.inf
    for codes in itertools.product(choices, repeat=n):
        best = min(best, sparse_code_objective(scores, codes, incr))
    return best


def _flow_arcs(scores, k, incr):
    """The DHT network with the convex sink cost as parallel unit arcs (the reference code's
    construction): source 0, classes 1..n, buckets n+1..n+d, sink n+d+1."""
    n, d = len(scores), len(scores[0])
    source, sink = 0, n + d + 1
    arcs = []  # (tail, head, capacity, cost)
    for i in range(n):
        arcs.append((source, 1 + i, k, 0))
        for r in range(d):
            arcs.append((1 + i, 1 + n + r, 1, -scores[i][r]))
    for r in range(d):
        for c in range(n):
            arcs.append((1 + n + r, sink, 1, incr[c]))
    return arcs, source, sink


def sparse_codes_ortools(scores, k, incr):
    """The optimum by OR-tools SimpleMinCostFlow (integer-valued scores and increments only)."""
    from ortools.graph.python import min_cost_flow

    n = len(scores)
    arcs, source, sink = _flow_arcs(scores, k, incr)
    solver = min_cost_flow.SimpleMinCostFlow()
    for tail, head, capacity, cost in arcs:
        if cost != int(cost):
            raise ValueError("OR-tools needs integer costs")
        solver.add_arc_with_capacity_and_unit_cost(tail, head, capacity, int(cost))
    solver.set_node_supply(source, n * k)
    solver.set_node_supply(sink, -n * k)
    if solver.solve() != solver.OPTIMAL:
        raise RuntimeError("OR-tools found no optimum")
    return float(solver.optimal_cost())


def sparse_codes_networkx(scores, k, incr):
    """The optimum by networkx's network simplex (integer-valued costs)."""
    import networkx as nx

    n = len(scores)
    arcs, source, sink = _flow_arcs(scores, k, incr)
    graph = nx.MultiDiGraph()
    graph.add_node(source, demand=-n * k)
    graph.add_node(sink, demand=n * k)
    for tail, head, capacity, cost in arcs:
        graph.add_edge(tail, head, capacity=capacity, weight=int(cost))
    return float(nx.min_cost_flow_cost(graph))


def sparse_codes_linprog(scores, k, incr):
    """The optimum of the LP relaxation by HiGHS; the constraint matrix is totally unimodular,
    so it equals the integer optimum. Works on real-valued scores."""
    from scipy.optimize import linprog
    from scipy.sparse import lil_matrix

    n, d = len(scores), len(scores[0])
    num_z, num_y = n * d, d * n  # z[i, r] class i in bucket r; y[r, c] unit c of bucket r used
    cost = [-float(scores[i][r]) for i in range(n) for r in range(d)]
    cost += [float(incr[c]) for r in range(d) for c in range(n)]
    a_eq = lil_matrix((n + d, num_z + num_y))
    b_eq = []
    for i in range(n):  # each class in exactly k buckets
        for r in range(d):
            a_eq[i, i * d + r] = 1
        b_eq.append(k)
    for r in range(d):  # classes in bucket r == units of bucket r used
        for i in range(n):
            a_eq[n + r, i * d + r] = 1
        for c in range(n):
            a_eq[n + r, num_z + r * n + c] = -1
        b_eq.append(0)
    result = linprog(cost, A_eq=a_eq.tocsr(), b_eq=b_eq, bounds=(0, 1), method="highs",
                     options={"primal_feasibility_tolerance": 1e-10,
                              "dual_feasibility_tolerance": 1e-10})
    if result.status != 0:
        raise RuntimeError(result.message)
    return float(result.fun)


# --------------------------------------------------------------------------------------------
# SparseHashTable


def ranked_buckets(activations_row):
    """Bucket indices by activation, largest first, lower index first on ties."""
    return sorted(range(len(activations_row)), key=lambda r: (-float(activations_row[r]), r))


def lane_distance(query, row, inner_product):
    """Squared L2 (or minus the inner product) in float32 over eight interleaved lanes, summed
    pairwise: the arithmetic of qkernels' kernels, one operation at a time."""
    f32 = np.float32
    lanes = [f32(0.0)] * 8
    for j in range(len(query)):
        if inner_product:
            term = f32(query[j]) * f32(row[j])
        else:
            diff = f32(query[j]) - f32(row[j])
            term = diff * diff
        lanes[j % 8] = f32(lanes[j % 8] + term)
    total = f32(f32(f32(lanes[0] + lanes[1]) + f32(lanes[2] + lanes[3]))
                + f32(f32(lanes[4] + lanes[5]) + f32(lanes[6] + lanes[7])))
    return f32(-total) if inner_product else total


def ranked_top(entries, count):
    """The first ``count`` of ``entries`` ``(float32 distance, row, item)`` in the table probe's
    order: by distance, a zero of either sign as +0.0 and NaN after +inf, then by row."""
    def order(entry):
        d = float(entry[0])
        return (math.isnan(d), 0.0 if d == 0 or math.isnan(d) else d, int(entry[1]))
    return sorted(entries, key=order)[:count]


def sparse_table_search(db_codes, db_embeddings, db_ids, query_activations, query_embeddings,
                        k, topk, metric="l2", exclude=None, distance=None):
    """The DHT table rule with plain loops. ``db_codes[i]`` lists item i's buckets (any order).
    ``distance(q, item)``, where given, replaces the float32 lane distance between embeddings
    (a table that keeps PQ codes re-ranks by asymmetric distance: ``adc_distance``).

    Returns D (list of lists of float32), I (ids) and the candidate counts.
    """
    inner_product = metric == "ip"
    buckets = {}
    for item, codes in enumerate(db_codes):
        for r in codes:
            buckets.setdefault(int(r), []).append(item)
    all_d, all_i, counts = [], [], []
    for q in range(len(query_activations)):
        excluded = set() if exclude is None else {int(e) for e in np.atleast_1d(exclude[q])}
        order = ranked_buckets(query_activations[q])
        candidates = []
        seen = set()
        probed = 0
        while probed < len(order) and (probed < k or len(candidates) < topk):
            for item in buckets.get(order[probed], []):
                if item in seen:
                    continue
                seen.add(item)
                if int(db_ids[item]) in excluded:
                    continue
                candidates.append(item)
            probed += 1
        scored = sorted(
            (lane_distance(query_embeddings[q], db_embeddings[item], inner_product)
             if distance is None else distance(q, item), item)
            for item in candidates
        )[:topk]
        missing = topk - len(scored)
        pad = -np.inf if inner_product else np.inf
        all_d.append([(-d if inner_product else d) for d, _ in scored] + [pad] * missing)
        all_i.append([int(db_ids[item]) for _, item in scored] + [-1] * missing)
        counts.append(len(candidates))
    return all_d, all_i, counts


def table_candidates(db_codes, db_ids, query_activations, probes, exclude=None):
    """Per query, the distinct items of its first ``probes[q]`` ranked buckets whose ids are not
    excluded: what a sharded search adds up over the shards to plan its probes."""
    counts = []
    for q, row in enumerate(query_activations):
        excluded = set() if exclude is None else {int(e) for e in np.atleast_1d(exclude[q])}
        probed = set(ranked_buckets(row)[: int(probes[q])])
        counts.append(sum(1 for item, codes in enumerate(db_codes)
                          if probed & {int(c) for c in codes}
                          and int(db_ids[item]) not in excluded))
    return counts


# --------------------------------------------------------------------------------------------
# product quantization


def kmeans_subspace(points, num_centroids, uniforms, iterations):
    """k-means++ seeding (draws ``uniforms``) then Lloyd, as qkernels does it, with loops."""
    f32 = np.float32
    n = len(points)
    dist = lambda a, b: lane_distance(a, b, False)  # noqa: E731
    centroids = [np.array(points[min(n - 1, int(uniforms[0] * n))], dtype=f32)]
    nearest = [float(dist(points[i], centroids[0])) for i in range(n)]
    for c in range(1, num_centroids):
        total = 0.0
        for value in nearest:
            total += value
        pick = -1
        if total > 0:
            running = 0.0
            for i in range(n):
                running += nearest[i]
                if running > uniforms[c] * total and nearest[i] > 0:
                    pick = i
                    break
            if pick < 0:
                pick = max(i for i in range(n) if nearest[i] > 0)
        if pick < 0:
            pick = min(n - 1, int(uniforms[c] * n))
        centroids.append(np.array(points[pick], dtype=f32))
        for i in range(n):
            nearest[i] = min(nearest[i], float(dist(points[i], centroids[c])))
    assign = [-1] * n
    for it in range(iterations):
        changed = 0
        d = [0.0] * n
        for i in range(n):
            scores = [dist(points[i], centroids[c]) for c in range(num_centroids)]
            best = min(range(num_centroids), key=lambda c: (scores[c], c))
            d[i] = scores[best]
            if best != assign[i]:
                changed += 1
                assign[i] = best
        if changed == 0 and it > 0:
            break
        members = [[i for i in range(n) if assign[i] == c] for c in range(num_centroids)]
        for c in range(num_centroids):
            if members[c]:
                sums = [0.0] * len(points[0])
                for i in members[c]:
                    for j in range(len(sums)):
                        sums[j] += float(points[i][j])
                centroids[c] = np.array([s / len(members[c]) for s in sums], dtype=f32)
        for c in range(num_centroids):
            if members[c]:
                continue
            far = max(range(n), key=lambda i: (d[i], -i))
            centroids[c] = np.array(points[far], dtype=f32)
            members[c] = [far]
            assign[far] = c
            d[far] = f32(0.0)
    return np.array(centroids, dtype=f32)


def pq_encode(x, codebooks):
    """Nearest codeword per subspace (lane distance; the lower index on ties)."""
    m_count, k_count, dsub = codebooks.shape
    codes = []
    for row in x:
        code = []
        for m in range(m_count):
            sub = row[m * dsub:(m + 1) * dsub]
            scores = [lane_distance(sub, codebooks[m][c], False) for c in range(k_count)]
            code.append(min(range(k_count), key=lambda c: (scores[c], c)))
        codes.append(code)
    return codes


def pq_search(queries, codes, codebooks, topk, metric="l2", symmetric=False):
    """Asymmetric (or symmetric) PQ search with loops: per query a table of sub-distances, each
    item the float32 sum of its entries in subspace order; ranked by (distance, item)."""
    f32 = np.float32
    inner_product = metric == "ip"
    m_count, k_count, dsub = codebooks.shape
    all_d, all_i = [], []
    for q in queries:
        if symmetric:
            q_code = pq_encode([q], codebooks)[0]
            subs = [codebooks[m][q_code[m]] for m in range(m_count)]
        else:
            subs = [q[m * dsub:(m + 1) * dsub] for m in range(m_count)]
        table = [[lane_distance(subs[m], codebooks[m][c], inner_product)
                  for c in range(k_count)] for m in range(m_count)]
        scored = []
        for item, code in enumerate(codes):
            total = table[0][int(code[0])]
            for m in range(1, m_count):
                total = f32(total + table[m][int(code[m])])
            scored.append((total, item))
        scored.sort()
        best = scored[:topk]
        pad = topk - len(best)
        all_d.append([(-d if inner_product else d) for d, _ in best]
                     + [-np.inf if inner_product else np.inf] * pad)
        all_i.append([i for _, i in best] + [-1] * pad)
    return all_d, all_i


def adc_distance(query, code, codebooks, inner_product=False):
    """The asymmetric distance of one PQ code to a query: the float32 sum, in subspace order,
    of the lane distances between the query's sub-vectors and the code's codewords (minus the
    inner products for ``inner_product``)."""
    m_count, _, dsub = codebooks.shape
    total = lane_distance(query[:dsub], codebooks[0][int(code[0])], inner_product)
    for m in range(1, m_count):
        total = np.float32(total + lane_distance(query[m * dsub:(m + 1) * dsub],
                                                 codebooks[m][int(code[m])], inner_product))
    return total


def pq_fastscan_search(queries, codes, codebooks, topk, metric="l2", rerank=None):
    """The 4-bit fast scan's rule with loops. Per query the float32 ADC table ``T`` (as in
    pq_search) is rounded to uint8 with one scale for all sub-quantizers,
    ``floor((T[m][c] - low_m) * a + 0.5)`` with ``low_m = min_c T[m][c]`` and ``a = 255 /
    max_m (max_c T[m][c] - low_m)`` (the differences in float32, ``a`` and the rounding in
    float64); each item scores the integer sum of its entries. The best
    ``R`` by (sum, item) are kept (``R = 4 * topk`` for None, ``topk`` for 0, at most all), and
    then the best ``topk`` of those by (float32 ADC distance, item) are returned with that
    distance; with ``rerank=0`` the best ``topk`` by (sum, item), with the distance
    ``sum_m low_m + sum / a`` (in float64, rounded to float32)."""
    f32 = np.float32
    inner_product = metric == "ip"
    m_count, k_count, dsub = codebooks.shape
    n = len(codes)
    keep = min(n, 4 * topk if rerank is None else (rerank or topk))
    all_d, all_i = [], []
    for q in queries:
        table = [[lane_distance(q[m * dsub:(m + 1) * dsub], codebooks[m][c], inner_product)
                  for c in range(k_count)] for m in range(m_count)]
        lows = [min(row) for row in table]
        span = max(f32(max(row) - low) for row, low in zip(table, lows, strict=True))
        a = 255.0 / float(span) if span > 0 else 1.0  # float64, as the rounding below
        bias = f32(0)
        for low in lows:
            bias = f32(bias + low)
        levels = [[min(int(np.floor(float(f32(t - lows[m])) * a + 0.5)), 255)
                   for t in table[m]] for m in range(m_count)]
        sums = [sum(levels[m][int(code[m])] for m in range(m_count)) for code in codes]
        kept = sorted(range(n), key=lambda i: (sums[i], i))[:keep]
        if rerank == 0:
            best = [(f32(float(bias) + sums[i] / a), i) for i in kept[:topk]]
        else:
            scored = []
            for i in kept:
                total = table[0][int(codes[i][0])]
                for m in range(1, m_count):
                    total = f32(total + table[m][int(codes[i][m])])
                scored.append((total, i))
            best = sorted(scored)[:topk]
        pad = topk - len(best)
        all_d.append([(-d if inner_product else d) for d, _ in best]
                     + [-np.inf if inner_product else np.inf] * pad)
        all_i.append([i for _, i in best] + [-1] * pad)
    return all_d, all_i


def fastscan_block(packed, start, lut):
    """The 32 sums of one block of the fast-scan layout (qkernels/index/_fastscan_cpu.py):
    vector ``v`` of the block, pair ``p``: the low (``v < 16``) or high nibble of byte ``v %
    16`` (sub-quantizer 2p) and of byte ``16 + v % 16`` (2p + 1) index the pair's two tables."""
    sums = []
    for v in range(32):
        total = 0
        for p in range(len(lut) // 32):
            for half in range(2):
                byte = int(packed[start + 32 * p + 16 * half + v % 16])
                code = (byte >> 4) if v >= 16 else (byte & 15)
                total += int(lut[32 * p + 16 * half + code])
        sums.append(total)
    return sums


# --------------------------------------------------------------------------------------------
# binary codes


def hamming_search(query_codes, db_codes, topk, query_features=None, db_features=None):
    """Hamming distance by counting set bits byte by byte; ranked by (distance, feature
    distance if given, item)."""
    all_d, all_i = [], []
    for q in range(len(query_codes)):
        scored = []
        for item in range(len(db_codes)):
            d = sum(bin(int(a) ^ int(b)).count("1")
                    for a, b in zip(query_codes[q], db_codes[item], strict=True))
            t = (lane_distance(query_features[q], db_features[item], False)
                 if query_features is not None else 0.0)
            scored.append((d, t, item))
        scored.sort()
        best = scored[:topk]
        pad = topk - len(best)
        all_d.append([d for d, _, _ in best] + [np.iinfo(np.int32).max] * pad)
        all_i.append([i for _, _, i in best] + [-1] * pad)
    return all_d, all_i


# --------------------------------------------------------------------------------------------
# losses (inputs are nested lists or numpy arrays of float64; results are floats)


def _norm(v):
    return math.sqrt(sum(x * x for x in v))


def _normalize(v):
    length = _norm(v)
    return [x / length for x in v] if length > 0 else list(v)


def _shares(a, b):
    return _shares_label(a, b)


def semi_hard_triplet(f, labels, margin=1.0, masks=None, distance="l1", normalize=True):
    n = len(f)
    f = [_normalize(row) if normalize else list(row) for row in f]

    def dist(i, j):
        total = 0.0
        for r in range(len(f[i])):
            w = 1.0 if masks is None else (1.0 if (masks[i][r] or masks[j][r]) else 0.0)
            diff = f[i][r] - f[j][r]
            total += w * (abs(diff) if distance == "l1" else diff * diff)
        return total

    losses = []
    for i in range(n):
        for p in range(n):
            if i == p or not _shares(labels[i], labels[p]):
                continue
            d_ap = dist(i, p)
            negatives = [dist(i, j) for j in range(n) if not _shares(labels[i], labels[j])]
            farther = [d for d in negatives if d > d_ap]
            d_an = min(farther) if farther else max(negatives)
            losses.append(max(d_ap - d_an + margin, 0.0))
    return sum(losses) / len(losses)


def npairs(anchors, positives, labels, reg=0.003, anchor_masks=None, positive_masks=None,
           scale=None):
    n = len(anchors)
    if scale is not None:
        anchors = [[scale * x for x in _normalize(a)] for a in anchors]
        positives = [[scale * x for x in _normalize(p)] for p in positives]
    total = 0.0
    for i in range(n):
        row = []
        for j in range(n):
            s = 0.0
            for r in range(len(anchors[i])):
                w = 1.0
                if anchor_masks is not None:
                    w = 1.0 if (anchor_masks[i][r] or positive_masks[j][r]) else 0.0
                s += w * anchors[i][r] * positives[j][r]
            row.append(s)
        top = max(row)
        log_norm = top + math.log(sum(math.exp(s - top) for s in row))
        same = [j for j in range(n) if _shares(labels[i], labels[j])]
        total += -sum((row[j] - log_norm) for j in same) / len(same)
    if scale is not None:
        return total / n
    l2 = (sum(sum(x * x for x in a) for a in anchors) / n
          + sum(sum(x * x for x in p) for p in positives) / n)
    return total / n + reg * 0.25 * l2


def dqn(z, labels, reconstruction=None, pq_weight=0.0):
    n = len(z)
    units = [_normalize(row) for row in z]
    total = 0.0
    for i in range(n):
        for j in range(n):
            s = 1.0 if _shares(labels[i], labels[j]) else -1.0
            cos = sum(a * b for a, b in zip(units[i], units[j], strict=True))
            total += (s - cos) ** 2
    loss = total / (n * n)
    if reconstruction is not None:
        loss += pq_weight * sum(
            sum((a - b) ** 2 for a, b in zip(z[i], reconstruction[i], strict=True))
            for i in range(n)) / n
    return loss


def relative_distance(h, target, p=1.0):
    n = len(h)
    units = [_normalize(row) for row in h]
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    d_hash = [1 - sum(a * b for a, b in zip(units[i], units[j], strict=True)) for i, j in pairs]
    d_target = [float(target[i][j]) for i, j in pairs]
    mean_hash = sum(d_hash) / len(pairs)
    mean_target = sum(d_target) / len(pairs)
    return sum(abs(a / mean_hash - b / mean_target) ** p
               for a, b in zip(d_hash, d_target, strict=True)) / len(pairs)


def binary_kl(x, y):
    """1-NN KL estimate of the outputs x against target samples y."""
    n, m = len(x), len(x[0])

    def euclid(a, b):
        return math.sqrt(sum((u - v) ** 2 for u, v in zip(a, b, strict=True)))

    total = 0.0
    for i in range(n):
        rho = min(euclid(x[i], x[j]) for j in range(n) if j != i)
        nu = min(euclid(x[i], t) for t in y)
        total += math.log(nu / rho)
    return m / n * total + math.log(len(y) / (n - 1))


# --------------------------------------------------------------------------------------------
# cascaded (hierarchical) codes


def level2_objective(scores2, parents, codes2, penalty_sibling, penalty_global):
    total = 0.0
    child, pair = {}, {}
    for i, row in enumerate(codes2):
        for t in row:
            total -= float(scores2[i][int(t)])
            child[int(t)] = child.get(int(t), 0) + 1
            key = (int(parents[i]), int(t))
            pair[key] = pair.get(key, 0) + 1
    total += penalty_global * sum(c * (c - 1) / 2 for c in child.values())
    total += penalty_sibling * sum(c * (c - 1) / 2 for c in pair.values())
    return total


def level2_brute_force(scores2, parents, k, penalty_sibling, penalty_global):
    import itertools

    n, d = len(scores2), len(scores2[0])
    choices = list(itertools.combinations(range(d), k))
    return min(level2_objective(scores2, parents, codes, penalty_sibling, penalty_global)
               for codes in itertools.product(choices, repeat=n))


def level2_ortools(scores2, parents, k, penalty_sibling, penalty_global):
    """The level-2 network of the CVPR 2019 paper, built arc by arc: source -> class (k),
    class -> group (p(i), t) (1, -score), group -> child t (convex sibling cost as parallel unit
    arcs), child t -> sink (convex global cost as parallel unit arcs)."""
    from ortools.graph.python import min_cost_flow

    n, d = len(scores2), len(scores2[0])
    parent_ids = sorted({int(p) for p in parents})
    slot = {p: s for s, p in enumerate(parent_ids)}
    source, sink = 0, 1 + n + len(parent_ids) * d + d

    def group(p, t):
        return 1 + n + slot[p] * d + t

    def child(t):
        return 1 + n + len(parent_ids) * d + t

    solver = min_cost_flow.SimpleMinCostFlow()
    for i in range(n):
        solver.add_arc_with_capacity_and_unit_cost(source, 1 + i, k, 0)
        for t in range(d):
            solver.add_arc_with_capacity_and_unit_cost(1 + i, group(int(parents[i]), t), 1,
                                                       int(-scores2[i][t]))
    for p in parent_ids:
        for t in range(d):
            for c in range(n):
                solver.add_arc_with_capacity_and_unit_cost(group(p, t), child(t), 1,
                                                           int(penalty_sibling * c))
    for t in range(d):
        for c in range(n):
            solver.add_arc_with_capacity_and_unit_cost(child(t), sink, 1, int(penalty_global * c))
    solver.set_node_supply(source, n * k)
    solver.set_node_supply(sink, -n * k)
    if solver.solve() != solver.OPTIMAL:
        raise RuntimeError("OR-tools found no optimum")
    return float(solver.optimal_cost())


def hierarchical_probe_order(level1_row, level2_row):
    """Compound buckets p * d + t in the order of (level-1 rank, level-2 rank)."""
    d = len(level2_row)
    return [p * d + t for p in ranked_buckets(level1_row) for t in ranked_buckets(level2_row)]


def hierarchical_table_search(db_parents, db_children, db_embeddings, q_level1, q_level2,
                              query_embeddings, k, topk):
    """The cascaded table rule with loops: items in compound buckets p * d + t; a query walks
    its compound buckets in (parent rank, child rank) order, k first, more while short."""
    d = len(q_level2[0])
    buckets = {}
    for item, (p, children) in enumerate(zip(db_parents, db_children, strict=True)):
        for t in children:
            buckets.setdefault(int(p) * d + int(t), []).append(item)
    all_d, all_i, counts = [], [], []
    for q in range(len(q_level1)):
        order = hierarchical_probe_order(q_level1[q], q_level2[q])
        candidates, seen, probed = [], set(), 0
        while probed < len(order) and (probed < k or len(candidates) < topk):
            for item in buckets.get(order[probed], []):
                if item not in seen:
                    seen.add(item)
                    candidates.append(item)
            probed += 1
        scored = sorted((lane_distance(query_embeddings[q], db_embeddings[item], False), item)
                        for item in candidates)[:topk]
        pad = topk - len(scored)
        all_d.append([s for s, _ in scored] + [np.inf] * pad)
        all_i.append([i for _, i in scored] + [-1] * pad)
        counts.append(len(candidates))
    return all_d, all_i, counts


def bit_balance(codes):
    """Per bit by counting; correlations by the textbook formula, pair by pair."""
    n, m = len(codes), len(codes[0])
    bits = [[1.0 if float(codes[i][b]) > 0 else 0.0 for b in range(m)] for i in range(n)]
    p = [sum(bits[i][b] for i in range(n)) / n for b in range(m)]
    imbalance = sum(abs(2 * q - 1) for q in p) / m
    entropy = sum(0.0 if q in (0.0, 1.0) else -(q * math.log2(q) + (1 - q) * math.log2(1 - q))
                  for q in p) / m
    total, pairs = 0.0, 0
    for a in range(m):
        for b in range(m):
            if a == b:
                continue
            pairs += 1
            cov = sum((bits[i][a] - p[a]) * (bits[i][b] - p[b]) for i in range(n)) / n
            var_a = sum((bits[i][a] - p[a]) ** 2 for i in range(n)) / n
            var_b = sum((bits[i][b] - p[b]) ** 2 for i in range(n)) / n
            if var_a > 0 and var_b > 0:
                total += abs(cov / math.sqrt(var_a * var_b))
    return {"imbalance": imbalance, "correlation": total / pairs if pairs else 0.0,
            "entropy": entropy}


# --------------------------------------------------------------------------------------------
# the index lifecycle: a brute-force model of the items an index holds


class IndexModel:
    """The items of an index as a plain list in the order added, each ``(id, payload)``, with
    the id rules of qkernels.index.Index: given ids are unique; without them the next ids of
    a counter one above the largest id given so far; removals keep the others' ids and order;
    a reset empties and restarts the counter; a merge appends the other's items, renumbered
    from this counter when all of their ids came from the other's counter."""

    def __init__(self):
        self.items = []  # (id, payload) in the order added
        self.next_id = 0
        self.default_ids = True

    def add(self, payloads, ids=None):
        if ids is None:
            ids = list(range(self.next_id, self.next_id + len(payloads)))
        else:
            ids = [int(i) for i in ids]
            held = {i for i, _ in self.items}
            if len(set(ids)) != len(ids) or held & set(ids):
                raise ValueError("repeated id")
            self.default_ids = self.default_ids and not ids  # an empty add changes nothing
        self.items += list(zip(ids, payloads, strict=True))
        if ids:
            self.next_id = max(self.next_id, max(ids) + 1)
        return ids

    def remove(self, ids):
        ids = [int(i) for i in ids]
        held = {i for i, _ in self.items}
        if len(set(ids)) != len(ids) or not set(ids) <= held:
            raise ValueError("unknown or repeated id")
        gone = set(ids)
        self.items = [(i, p) for i, p in self.items if i not in gone]
        return len(ids)

    def reset(self):
        self.items, self.next_id, self.default_ids = [], 0, True

    def merge(self, other):
        if other.default_ids:
            moved = [(i + self.next_id, p) for i, p in other.items]
        else:
            moved = list(other.items)
            if {i for i, _ in self.items} & {i for i, _ in moved}:
                raise ValueError("an id in both")
            self.default_ids = self.default_ids and not moved
        self.items += moved
        if moved:
            self.next_id = max(self.next_id, max(i for i, _ in moved) + 1)
        other.reset()

    @property
    def ids(self):
        return [i for i, _ in self.items]

    def passing(self, include=None, exclude=None):
        """The items a search with this filter for every query may return, in order."""
        if include is not None:
            allowed = {int(i) for i in include}
            return [(i, p) for i, p in self.items if i in allowed]
        if exclude is not None:
            refused = {int(i) for i in exclude}
            return [(i, p) for i, p in self.items if i not in refused]
        return list(self.items)


def householder_rotation(weights):
    """H_1 ... H_m, one reflection at a time: H_i = I - 2 v v^T / |v|^2, v the i-th column of
    ``weights`` below the diagonal with a 1 on it (numpy, float64)."""
    w = np.asarray(weights, dtype=np.float64)
    m = w.shape[0]
    product = np.eye(m)
    for i in range(m):
        v = np.zeros(m)
        v[i] = 1.0
        v[i + 1:] = w[i + 1:, i]
        product = product @ (np.eye(m) - 2.0 * np.outer(v, v) / (v @ v))
    return product


def householder_fit_autograd(x, weights, epochs, lr, batch_size, seed, validation_fraction,
                             kind):
    """HouseholderQuantizer.fit written the obvious way (torch autograd through
    torch.linalg.householder_product, torch.optim.SGD): ``(best weights, history)``; ``x``
    already rescaled (torch float64)."""
    import torch

    from qkernels.quantize._h2q_loss import quantization_loss

    def rotation(w):
        lower = torch.tril(w, diagonal=-1)
        tau = 2.0 / (1.0 + lower.pow(2).sum(dim=0))
        return torch.linalg.householder_product(lower + torch.eye(w.shape[0],
                                                                  dtype=w.dtype), tau)

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(x.shape[0], generator=generator)
    num_val = min(x.shape[0] - 1, max(1, round(validation_fraction * x.shape[0])))
    val, train = x[order[:num_val]], x[order[num_val:]]
    w = weights.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([w], lr=lr)

    def validation():
        with torch.no_grad():
            return float(quantization_loss(val @ rotation(w).T, kind))

    best = (validation(), w.detach().clone())
    history = [best[0]]
    for _ in range(epochs):
        permutation = torch.randperm(train.shape[0], generator=generator)
        for start in range(0, train.shape[0], batch_size):
            batch = train[permutation[start:start + batch_size]]
            loss = quantization_loss(batch @ rotation(w).T, kind)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        current = validation()
        history.append(current)
        if current < best[0]:
            best = (current, w.detach().clone())
    return best[1], history
