"""Successive shortest paths for the level-2 network of cascaded codes (CVPR 2019), in Numba.

Given each class's level-1 bucket (its parent ``p(i)``), the network is (REFERENCES.md, sec. 2)::

    class i --(cap 1, -scores[i, t])--> group (p(i), t) --(convex: sib[c_{p,t}])--> child t
            --(convex: glob[c_t])--> sink

with a supply of ``k`` at every class. A group node has no supply and one forward exit, so it
is eliminated: its paths become composite arcs between classes and children, with the group's
occupancy ``c_{p,t}`` (the classes of family ``p`` in child ``t``) in their costs:

====================  =====================================  ================================
residual arc          meaning                                cost
====================  =====================================  ================================
class j -> child t    j joins child t (j not in t)            -scores[j, t] + sib[c_{p,t}]
class j -> class j'   j takes sibling j''s place in child t   -scores[j, t] + scores[j', t]
child t -> class j'   j' leaves child t                       -sib[c_{p,t} - 1] + scores[j', t]
child t -> sink       one more class in child t               glob[c_t]
====================  =====================================  ================================

Shortest paths in this graph are those of the original network (every original path maps to a
chain of these arcs with the same cost), so successive shortest paths on it are exact; the
search now has ``n + d`` nodes like the flat problem, instead of one per (parent, child) pair.
The rest is the flat solver's machinery (``_cpu.py``): supply at the classes, Dijkstra stopped
at the sink with potentials moved on settled nodes only, selection by block minima, float64
arithmetic with reduced costs clamped at zero; integer-valued costs give the exact optimum.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from ._cpu import _remove

_INF = np.inf
_BLOCK = 32


@nb.njit(cache=True, nogil=True)
def solve_level2(scores, parents, k, sib, glob, codes):
    """Write the optimal level-2 codes ``(n, k)`` (rows sorted) given ``parents`` (n,)."""
    n, d = scores.shape
    if n == 0:
        return

    # families: the classes of each parent, listed once
    num_parent_ids = 0
    for i in range(n):
        num_parent_ids = max(num_parent_ids, parents[i] + 1)
    slot_of = np.full(num_parent_ids, -1, dtype=np.int64)
    num_slots = 0
    for i in range(n):
        if slot_of[parents[i]] < 0:
            slot_of[parents[i]] = num_slots
            num_slots += 1
    slot = np.empty(n, dtype=np.int64)
    family_start = np.zeros(num_slots + 1, dtype=np.int64)
    for i in range(n):
        slot[i] = slot_of[parents[i]]
        family_start[slot[i] + 1] += 1
    for s in range(num_slots):
        family_start[s + 1] += family_start[s]
    family = np.empty(n, dtype=np.int64)
    fill = family_start[:-1].copy()
    for i in range(n):
        family[fill[slot[i]]] = i
        fill[slot[i]] += 1

    # node ids: class j -> j, child t -> n + t; the sink apart
    child0 = n
    num_nodes = n + d
    num_blocks = (num_nodes + _BLOCK - 1) // _BLOCK

    pc = np.empty(n)
    for i in range(n):
        pc[i] = scores[i].max() - sib[0]
    pt = np.zeros(d)
    psink = glob[0]

    assigned = np.zeros((n, d), dtype=np.bool_)
    ncode = np.zeros(n, dtype=np.int64)
    count_pair = np.zeros((num_slots, d), dtype=np.int64)  # c_{p,t}
    members = np.empty((d, n), dtype=np.int64)  # members[t, :count_child[t]]
    count_child = np.zeros(d, dtype=np.int64)

    label = np.full(num_nodes, _INF)
    key = np.full(num_blocks * _BLOCK, _INF)
    block_min = np.full(num_blocks, _INF)
    pred = np.empty(num_nodes, dtype=np.int64)  # class or child that labelled the node
    via = np.empty(n, dtype=np.int64)  # for a class labelled by a sibling: the child swapped
    state = np.zeros(num_nodes, dtype=np.int8)
    touched = np.empty(num_nodes, dtype=np.int64)

    for source in range(n):
        for _unit in range(k):
            state[source] = 1
            touched[0] = source
            ntouched = 1
            label[source] = 0.0
            key[source] = 0.0
            block_min[source // _BLOCK] = 0.0
            sink_dist = _INF
            sink_pred = -1
            while True:
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
                state[node] = 2
                low = _INF
                for u in range(start, start + _BLOCK):
                    if key[u] < low:
                        low = key[u]
                block_min[best_block] = low

                if node < child0:
                    j = node
                    s = slot[j]
                    base = dist + pc[j]
                    # j joins a child it is not in
                    for t in range(d):
                        if assigned[j, t]:
                            continue
                        u = child0 + t
                        cand = base - scores[j, t] + sib[count_pair[s, t]] - pt[t]
                        if cand < dist:
                            cand = dist
                        if cand < label[u]:
                            if state[u] == 0:
                                state[u] = 1
                                touched[ntouched] = u
                                ntouched += 1
                            label[u] = cand
                            key[u] = cand
                            pred[u] = j
                            if cand < block_min[u // _BLOCK]:
                                block_min[u // _BLOCK] = cand
                    # j takes a sibling's place in a child it is not in
                    for f in range(family_start[s], family_start[s + 1]):
                        sibling = family[f]
                        if sibling == j:
                            continue
                        for c in range(ncode[sibling]):
                            t = codes[sibling, c]
                            if assigned[j, t]:
                                continue
                            cand = base - scores[j, t] + scores[sibling, t] - pc[sibling]
                            if cand < dist:
                                cand = dist
                            if cand < label[sibling]:
                                if state[sibling] == 0:
                                    state[sibling] = 1
                                    touched[ntouched] = sibling
                                    ntouched += 1
                                label[sibling] = cand
                                key[sibling] = cand
                                pred[sibling] = j
                                via[sibling] = t
                                if cand < block_min[sibling // _BLOCK]:
                                    block_min[sibling // _BLOCK] = cand
                else:
                    t = node - child0
                    cand = dist + glob[count_child[t]] + pt[t] - psink
                    if cand < dist:
                        cand = dist
                    if cand < sink_dist:
                        sink_dist = cand
                        sink_pred = t
                    # a member leaves the child
                    for m in range(count_child[t]):
                        j = members[t, m]
                        cand = (dist - sib[count_pair[slot[j], t] - 1] + scores[j, t] + pt[t]
                                - pc[j])
                        if cand < dist:
                            cand = dist
                        if cand < label[j]:
                            if state[j] == 0:
                                state[j] = 1
                                touched[ntouched] = j
                                ntouched += 1
                            label[j] = cand
                            key[j] = cand
                            pred[j] = node
                            if cand < block_min[j // _BLOCK]:
                                block_min[j // _BLOCK] = cand

            # potentials: p += min(dist, D), shifted by -D (only settled nodes change)
            for q in range(ntouched):
                u = touched[q]
                if state[u] == 2:
                    if u < child0:
                        pc[u] -= sink_dist - label[u]
                    else:
                        pt[u - child0] -= sink_dist - label[u]
                state[u] = 0
                label[u] = _INF
                key[u] = _INF
            block_min[:] = _INF

            # augment: walk back from the sink. Each class on the path joins one child (the
            # pending join) and, unless it is the source, leaves another first, so that its
            # code never holds more than k children.
            node = child0 + sink_pred
            pending_class, pending_child = -1, -1
            while True:
                if node >= child0:  # a child entered from class pred[node], which joins it
                    pending_class, pending_child = pred[node], node - child0
                    node = pending_class
                    continue
                j = node
                if j != source:
                    before = pred[j]
                    left = before - child0 if before >= child0 else via[j]
                    assigned[j, left] = False
                    ncode[j] = _remove(codes[j], ncode[j], left)
                    count_child[left] = _remove(members[left], count_child[left], j)
                    count_pair[slot[j], left] -= 1
                t = pending_child
                assigned[j, t] = True
                codes[j, ncode[j]] = t
                ncode[j] += 1
                members[t, count_child[t]] = j
                count_child[t] += 1
                count_pair[slot[j], t] += 1
                if j == source:
                    break
                if before >= child0:  # j left child `before`, entered from a class
                    node = before
                else:  # a sibling swap: `before` takes the child j left
                    pending_class, pending_child = before, left
                    node = before

    for i in range(n):
        codes[i, :k].sort()


@nb.njit(cache=True, nogil=True, parallel=True)
def solve_level2_batch(scores, parents, k, sib, glob, codes):
    for b in nb.prange(scores.shape[0]):
        solve_level2(scores[b], parents[b], k, sib, glob, codes[b])
