"""Successive shortest paths for the class-by-bucket flow network, in Numba.

The network (REFERENCES.md, section 1) has a supply of ``k`` units at each of the ``n`` classes,
unit arcs class -> bucket of cost ``-scores[i, r]``, and a convex arc bucket -> sink whose
``(c + 1)``-th unit costs ``incr[c]``. The solver keeps node potentials ``p`` such that every
residual arc has a reduced cost ``rc(u, v) = c(u, v) + p(u) - p(v) >= 0`` and, for each unit of
supply, runs Dijkstra from one class to the sink, augments along the shortest path and updates
the potentials. The flow therefore stays optimal for its value after every augmentation, and
the last one is an optimum of the whole problem.

What makes it fast for this graph:

- No source node: every class is a supply node and augments directly (Ahuja, Magnanti & Orlin,
  "Network Flows", section 9.7), so a search starts from one class, not from all of them.
- The convex sink arc is charged from the bucket's occupancy (``incr[count[r]]`` forward,
  ``-incr[count[r] - 1]`` backward) instead of ``n`` parallel arcs; residual arcs
  bucket -> class are read from per-bucket occupancy lists.
- Dijkstra stops when the sink is settled. Potentials become ``p + min(dist, D)``; shifted by
  the constant ``-D``, only the settled nodes change (by ``dist - D <= 0``). So an update costs
  the size of the search, and potentials never increase.
- Warm start: ``p(class i) = max_r scores[i, r]`` makes every class's best bucket free, so the
  first unit of most classes settles one bucket and stops. Classes are served one after the
  other, all ``k`` units each (measured a little faster than round-robin over units).
- Candidate lists. A settled class scans only its ``k + 8`` buckets of largest
  ``v(i, r) = scores[i, r] + p(r)`` and keeps ``thr``, an upper bound on ``v`` of its other
  buckets; as potentials never increase, the bound stays valid. The other buckets cannot be
  labelled below ``dist + p(i) - thr``, so their scan is queued in the search at that key and
  runs only if the search gets that far; then the list is rebuilt from current potentials.
  Searches in this network are short in cost, so most queued scans never run.
- Labels live in flat arrays with a minimum per block of 32 nodes; the next node is found by
  scanning the block minima, then one block. In this dense graph a binary heap pays a
  logarithmic update on most relaxed arcs and measured slower.

Searches are short in cost but can be wide when many classes compete for the same buckets (the
congested regime n * k > d): then a unit costs about (classes within the search radius) x list
length plus as many node selections. All arithmetic is in float64; reduced costs that rounding
pushes below zero are clamped to zero. With integer-valued costs every quantity stays an
integer, so the optimum is exact.
"""

from __future__ import annotations

import numba as nb
import numpy as np

_INF = np.inf
_BLOCK = 32  # nodes per block of the selection structure
_EXTRA = 8  # candidate list length is k + _EXTRA (at most d)

_UNTOUCHED, _LABELLED, _SETTLED = 0, 1, 2


@nb.njit(cache=True, nogil=True)
def _build_list(scores_row, pb, length, out):
    """Write the ``length`` buckets of largest ``v = scores_row + pb`` into ``out``.

    Returns an upper bound on ``v`` of every bucket left out (``-inf`` when none is). Ties keep
    the lower bucket index first.
    """
    d = scores_row.shape[0]
    if length >= d:
        for r in range(d):
            out[r] = r
        return -_INF
    top = np.empty(length)
    filled = 0
    bound = -_INF
    for r in range(d):
        value = scores_row[r] + pb[r]
        if filled == length:
            if value <= top[length - 1]:
                if value > bound:
                    bound = value
                continue
            if top[length - 1] > bound:
                bound = top[length - 1]
            t = length - 1
        else:
            t = filled
            filled += 1
        while t > 0 and top[t - 1] < value:
            top[t] = top[t - 1]
            out[t] = out[t - 1]
            t -= 1
        top[t] = value
        out[t] = r
    return bound


@nb.njit(cache=True, nogil=True)
def _remove(values, count, value):
    """Swap-remove ``value`` from ``values[:count]``; returns the new count."""
    for t in range(count):
        if values[t] == value:
            values[t] = values[count - 1]
            return count - 1
    return count


@nb.njit(cache=True, nogil=True)
def solve_one(scores, k, incr, codes):
    """Write the optimal ``(n, k)`` codes of one problem into ``codes`` (rows sorted)."""
    n, d = scores.shape
    if n == 0:
        return

    # node ids: bucket r -> r, class j -> d + j, queued full scan of class j -> d + n + j;
    # the sink is kept apart (sink_dist, sink_pred)
    cls = d
    scan = d + n
    num_nodes = d + 2 * n
    num_blocks = (num_nodes + _BLOCK - 1) // _BLOCK

    pb = np.zeros(d)  # bucket potentials
    pc = np.empty(n)  # class potentials
    for j in range(n):
        pc[j] = scores[j].max()
    psink = incr[0]

    assigned = np.zeros((n, d), dtype=np.bool_)
    count = np.zeros(d, dtype=np.int64)  # classes in each bucket
    occ = np.empty((d, n), dtype=np.int64)  # occ[r, :count[r]]: the classes in bucket r
    ncode = np.zeros(n, dtype=np.int64)

    list_len = min(d, k + _EXTRA)
    lists = np.empty((n, list_len), dtype=np.int64)
    thr = np.empty(n)
    for j in range(n):
        thr[j] = _build_list(scores[j], pb, list_len, lists[j])

    label = np.full(num_nodes, _INF)  # tentative or final distance
    key = np.full(num_blocks * _BLOCK, _INF)  # label while labelled and not settled, else inf
    block_min = np.full(num_blocks, _INF)
    pred = np.empty(num_nodes, dtype=np.int64)
    state = np.zeros(num_nodes, dtype=np.int8)
    touched = np.empty(num_nodes, dtype=np.int64)

    for source in range(n):
        for _unit in range(k):
            # label the source class
            u = cls + source
            state[u] = _LABELLED
            touched[0] = u
            ntouched = 1
            label[u] = 0.0
            key[u] = 0.0
            block_min[u // _BLOCK] = 0.0
            sink_dist = _INF
            sink_pred = -1
            while True:
                # the next node: smallest key (lowest id on ties); the sink wins ties
                best_block = 0
                for b in range(1, num_blocks):
                    if block_min[b] < block_min[best_block]:
                        best_block = b
                if sink_dist <= block_min[best_block]:
                    break
                start = best_block * _BLOCK
                node = start
                for u in range(start + 1, start + _BLOCK):
                    if key[u] < key[node]:
                        node = u
                dist = key[node]
                key[node] = _INF
                state[node] = _SETTLED
                low = _INF
                for u in range(start, start + _BLOCK):
                    if key[u] < low:
                        low = key[u]
                block_min[best_block] = low

                if node < cls:  # a bucket: its arc to the sink, arcs back to its classes
                    r = node
                    cand = dist + incr[count[r]] + pb[r] - psink
                    if cand < dist:
                        cand = dist
                    if cand < sink_dist:
                        sink_dist = cand
                        sink_pred = r
                    for t in range(count[r]):
                        j = occ[r, t]
                        u = cls + j
                        cand = dist + scores[j, r] + pb[r] - pc[j]
                        if cand < dist:
                            cand = dist
                        if cand < label[u]:  # (never true for a settled node)
                            if state[u] == _UNTOUCHED:
                                state[u] = _LABELLED
                                touched[ntouched] = u
                                ntouched += 1
                            label[u] = cand
                            key[u] = cand
                            pred[u] = r
                            if cand < block_min[u // _BLOCK]:
                                block_min[u // _BLOCK] = cand
                    continue

                # a class: its listed buckets now and the others queued behind the list's
                # bound; or, for a queued scan that came up, all of the class's buckets
                full = node >= scan
                if full:
                    j = node - scan
                    from_dist = label[cls + j]
                    m = d
                else:
                    j = node - cls
                    from_dist = dist
                    m = list_len
                base = from_dist + pc[j]
                for t in range(m):
                    r = t if full else lists[j, t]
                    if assigned[j, r]:
                        continue
                    cand = base - scores[j, r] - pb[r]
                    if cand < from_dist:
                        cand = from_dist
                    if cand < label[r]:
                        if state[r] == _UNTOUCHED:
                            state[r] = _LABELLED
                            touched[ntouched] = r
                            ntouched += 1
                        label[r] = cand
                        key[r] = cand
                        pred[r] = j
                        if cand < block_min[r // _BLOCK]:
                            block_min[r // _BLOCK] = cand
                if full:
                    thr[j] = _build_list(scores[j], pb, list_len, lists[j])
                elif thr[j] > -_INF:
                    u = scan + j
                    cand = base - thr[j]
                    if cand < dist:
                        cand = dist
                    state[u] = _LABELLED
                    touched[ntouched] = u
                    ntouched += 1
                    label[u] = cand
                    key[u] = cand
                    if cand < block_min[u // _BLOCK]:
                        block_min[u // _BLOCK] = cand

            # p += min(dist, D) keeps every reduced cost >= 0; shifted by -D only the settled
            # nodes change. Then reset the search state of the touched nodes.
            for t in range(ntouched):
                u = touched[t]
                if state[u] == _SETTLED:
                    if u < cls:
                        pb[u] -= sink_dist - label[u]
                    elif u < scan:
                        pc[u - cls] -= sink_dist - label[u]
                state[u] = _UNTOUCHED
                label[u] = _INF
                key[u] = _INF
            block_min[:] = _INF

            # augment along source -> r1 -> j1 -> r2 -> ... -> r_m -> sink
            # (each class on the path leaves its bucket before it enters the next one)
            r = sink_pred
            while True:
                j = pred[r]
                leave = -1
                if j != source:
                    leave = pred[cls + j]
                    assigned[j, leave] = False
                    ncode[j] = _remove(codes[j], ncode[j], leave)
                    count[leave] = _remove(occ[leave], count[leave], j)
                assigned[j, r] = True
                codes[j, ncode[j]] = r
                ncode[j] += 1
                occ[r, count[r]] = j
                count[r] += 1
                if j == source:
                    break
                r = leave

    for i in range(n):
        codes[i].sort()


@nb.njit(cache=True, nogil=True, parallel=True)
def solve_batch(scores, k, incr, codes):
    """``solve_one`` for each problem of a ``(B, n, d)`` batch, in parallel over problems."""
    for b in nb.prange(scores.shape[0]):
        solve_one(scores[b], k, incr, codes[b])
