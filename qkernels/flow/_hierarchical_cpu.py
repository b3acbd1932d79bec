"""Successive shortest paths for the level-2 network of cascaded codes (CVPR 2019), in Numba.

Given each class's level-1 bucket (its parent ``p(i)``), the network is (Jeong, Kim & Song,
CVPR 2019)::

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
child t -> sink       one more unit from t to the sink        glob[f_t]
sink -> child t       one unit less from t to the sink        -glob[f_t - 1]
====================  =====================================  ================================

Shortest paths in this graph are those of the original network (every original path maps to a
chain of these arcs with the same cost), so successive shortest paths on it are exact; the
search has ``n + d + 1`` nodes like the flat problem, instead of one per (parent, child) pair.
(``f_t`` is the flow from child ``t`` to the sink; at the optimum it equals ``c_t``.)

It starts, like the flat solver (``_flat_cpu.py``), from a nearly optimal pseudo-flow and moves only
the difference. Each family is first solved alone, exactly, by the flat solver with the
sibling cost as its bucket cost; shifted so that its sink's potential is 0, that solve's
bucket potentials are those of the family's group nodes, every child's potential is 0, and
every arc up to the children has a reduced cost >= 0. The children's sink flows are then
chosen around ``p(sink) = glob[n k // d]`` as in the flat solver, and Dijkstra runs from each
child with an excess to the nearest child with a deficit (which wins ties). The next node is
chosen as in the flat solver (``_simd.least_node``: one vectorised pass over the keys' bit
patterns, the lowest id on ties); potentials move on the nodes nearer than the target only;
float64 arithmetic with reduced costs clamped at zero; integer-valued costs give the exact
optimum.

The selection scans all ``n + d + 1`` keys per settled node. Against the block minima it
replaced (the same nodes, the same codes) it measured 0.83-0.90x the time at n = 64, 0.90-0.99x
at n = 256-512 and 1.10x at n = 1024 (interleaved, one 2-core Xeon).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .._parallel import parallel_kernel
from .._simd import least_node
from ._flat_cpu import _remove, sink_flows, solve_with_potentials, sort_rows

_INF = np.inf
_UNTOUCHED, _LABELLED, _SETTLED = 0, 1, 2


@nb.njit(cache=True, nogil=True)
def _families(parents):
    """The classes of each parent, listed once: ``(slot, family_start, family)``, class ``i``
    in family ``slot[i]``, whose classes are ``family[family_start[s]:family_start[s + 1]]``
    in increasing order."""
    n = parents.shape[0]
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
    return slot, family_start, family


@nb.njit(cache=True, nogil=True)
def _family_start(scores, k, sib, slot, family_start, family, codes, pc, assigned, count_pair,
                  members, count_child):
    """The greedy start: each family alone, solved exactly with the sibling cost as its bucket
    cost (the flat solver). With its potentials shifted so that its sink's is 0, a family's
    bucket potentials are those of its group nodes (p, t), every child's potential is 0, and
    every arc up to the children has a reduced cost >= 0. Only the children's loads are left.

    # modifies: codes, pc, assigned, count_pair, members, count_child (all written here)"""
    d = scores.shape[1]
    group_p = np.empty(d)
    for s in range(family_start.shape[0] - 1):
        first = family_start[s]
        size = family_start[s + 1] - first
        sub = np.empty((size, d))
        for a in range(size):
            sub[a] = scores[family[first + a]]
        sub_codes = np.empty((size, k), dtype=np.int64)
        sub_pc = np.empty(size)
        p_family_sink = solve_with_potentials(sub, k, sib, sub_codes, group_p, sub_pc)
        for a in range(size):
            j = family[first + a]
            pc[j] = sub_pc[a] - p_family_sink
            for c in range(k):
                t = sub_codes[a, c]
                codes[j, c] = t
                assigned[j, t] = True
                members[t, count_child[t]] = j
                count_child[t] += 1
                count_pair[s, t] += 1


@nb.njit(cache=True, nogil=True)
def solve_level2(scores, parents, k, sib, glob, codes):
    """Write the optimal level-2 codes ``(n, k)`` (rows sorted) given ``parents`` (n,).

    Phases: ``_family_start`` (the greedy start), then for each excess child ``search`` (to
    the nearest deficit child), ``update_potentials`` and ``augment``. The phases and the one
    ``relax`` are closures over the solver's arrays: Numba inlines them with no call and no
    reference counting, where module-level helpers taking the arrays as arguments measured
    up to 15x slower per call (each array argument is reference-counted)."""
    n, d = scores.shape
    if n == 0:
        return
    levels = glob.shape[0]
    slot, family_start, family = _families(parents)
    num_slots = family_start.shape[0] - 1

    pc = np.empty(n)  # potentials: classes, children (0 at the start), the sink
    pt = np.zeros(d)
    assigned = np.zeros((n, d), dtype=np.bool_)
    count_pair = np.zeros((num_slots, d), dtype=np.int64)  # c_{p,t}
    members = np.empty((d, n), dtype=np.int64)  # members[t, :count_child[t]]
    count_child = np.zeros(d, dtype=np.int64)
    _family_start(scores, k, sib, slot, family_start, family, codes, pc, assigned, count_pair,
                  members, count_child)

    # sink flows f in lo..hi around p(sink) = glob[n k // d], as in the flat solver; children
    # holding more classes than they send have an excess, those holding fewer a deficit
    psink, f = sink_flows(glob, count_child, n * k)

    # node ids: class j -> j, child t -> n + t, the sink -> n + d
    child0 = n
    sink = n + d
    num_nodes = n + d + 1
    label = np.full(num_nodes, _INF)
    key = np.full((num_nodes + 8) // 8 * 8, _INF)  # label while not settled, inf once settled
    key_bits = key.view(np.int64)  # (padded to a multiple of 8 for least_node)
    pred = np.empty(num_nodes, dtype=np.int64)  # class, child or sink that labelled the node
    via = np.empty(n, dtype=np.int64)  # for a class labelled by a sibling: the child swapped
    state = np.zeros(num_nodes, dtype=np.int8)
    touched = np.empty(num_nodes, dtype=np.int64)  # touched[:ntouched]: nodes not untouched

    def relax(u, cand, dist, by, ntouched):
        """Offer node ``u`` the label ``cand`` from ``by`` (settled at ``dist``); returns
        ``(ntouched, its new label)``, the label inf where it did not improve.
        # modifies: label, key, pred at u; state, touched when u is first reached
        Keeps: key[v] = label[v] for every labelled unsettled v.
        The clamp: with exact arithmetic every reduced cost is >= 0, so cand < dist is
        float64 rounding; clamping keeps labels monotone (Dijkstra's precondition) and never
        acts on integer costs, which round to nothing."""
        if cand < dist:
            cand = dist
        if cand >= label[u]:
            return ntouched, _INF
        if state[u] == _UNTOUCHED:
            state[u] = _LABELLED
            touched[ntouched] = u
            ntouched += 1
        label[u] = cand
        key[u] = cand
        pred[u] = by
        return ntouched, cand

    def search(source, psink):
        """Dijkstra from excess child ``source`` to the nearest deficit child; returns
        ``(target, its distance D, ntouched)``.
        # modifies: label, key, pred, via, state, touched (the search's state)
        Keeps: every settled node has its shortest distance; target_dist is the least label
        of a deficit child."""
        u = child0 + source
        state[u] = _LABELLED
        touched[0] = u
        ntouched = 1
        label[u] = 0.0
        key[u] = 0.0
        target_dist = _INF
        target = -1
        while True:
            # the unsettled node of least key, the first on ties (the flat solver's selection)
            node = least_node(key_bits, key_bits.shape[0])[1]
            dist = key[node]
            # The early exit. Safe: the nearest labelled deficit child is no farther than
            # every unsettled node, so nothing settled later gives it a shorter path (labels
            # only grow from here); it wins ties with the rest.
            if target_dist <= dist:
                if target < 0:  # nothing labelled is left and no deficit child was reached
                    raise RuntimeError(
                        "hierarchical solver: no augmenting path (please report this)")
                return target, target_dist, ntouched
            key[node] = _INF
            state[node] = _SETTLED
            if node < child0:
                j = node
                s = slot[j]
                base = dist + pc[j]
                for t in range(d):  # j joins a child it is not in
                    if assigned[j, t]:
                        continue
                    u = child0 + t
                    ntouched, got = relax(
                        u, base - scores[j, t] + sib[count_pair[s, t]] - pt[t], dist, j,
                        ntouched)
                    if got < target_dist and count_child[t] < f[t]:
                        target_dist = got
                        target = t
                # j takes a sibling's place in a child it is not in
                for q in range(family_start[s], family_start[s + 1]):
                    sibling = family[q]
                    if sibling == j:
                        continue
                    for c in range(k):
                        t = codes[sibling, c]
                        if assigned[j, t]:
                            continue
                        ntouched, got = relax(
                            sibling, base - scores[j, t] + scores[sibling, t] - pc[sibling],
                            dist, j, ntouched)
                        if got < _INF:
                            via[sibling] = t
            elif node == sink:  # one unit less from a child to the sink
                for t in range(d):
                    if f[t] == 0:
                        continue
                    u = child0 + t
                    ntouched, got = relax(u, dist - glob[f[t] - 1] + psink - pt[t], dist,
                                          sink, ntouched)
                    if got < target_dist and count_child[t] < f[t]:
                        target_dist = got
                        target = t
            else:
                t = node - child0
                if f[t] < levels:  # one unit more to the sink
                    ntouched, _ = relax(sink, dist + glob[f[t]] + pt[t] - psink, dist, t,
                                        ntouched)
                for m in range(count_child[t]):  # a member leaves the child
                    j = members[t, m]
                    ntouched, _ = relax(
                        j, dist - sib[count_pair[slot[j], t] - 1] + scores[j, t] + pt[t]
                        - pc[j], dist, node, ntouched)

    def update_potentials(target_dist, ntouched, psink):
        """p += min(dist, D), shifted by -D: only the settled nodes nearer than D change;
        returns the sink's new potential and clears the search's state.
        # modifies: pc, pt (psink returned); label, key, state (reset)
        Keeps: every residual arc has a reduced cost >= 0. Walking the touched list only is
        exact: an untouched node is at inf and an unsettled one at >= D, and min(dist, D) - D
        = 0 for both."""
        for q in range(ntouched):
            u = touched[q]
            if state[u] == _SETTLED and label[u] < target_dist:
                if u < child0:
                    pc[u] -= target_dist - label[u]
                elif u < sink:
                    pt[u - child0] -= target_dist - label[u]
                else:
                    psink -= target_dist - label[u]
            state[u] = _UNTOUCHED
            label[u] = _INF
            key[u] = _INF
        return psink

    def augment(source, target):
        """Move one unit along the shortest path, walking back from the target child to the
        source child. A child entered by a class: that class joins it after leaving the
        child (or, for a sibling swap, the sibling's place) it was labelled from. A child
        entered from the sink sends one unit less to the sink, the child before the sink one
        more.
        # modifies: codes, assigned, members, count_child, count_pair, f
        Keeps: the flow is a pseudo-flow whose residual arcs all have reduced costs >= 0
        (the path was shortest), one unit less excess at source, less deficit at target."""
        node = child0 + target
        pending_child = -1
        while True:
            if node >= child0:
                t = node - child0
                if t == source:
                    return
                if pred[node] == sink:
                    f[t] -= 1
                    node = child0 + pred[sink]
                    f[node - child0] += 1
                    continue
                pending_child = t
                node = pred[node]
                continue
            j = node
            before = pred[j]
            if before >= child0:
                left = before - child0
            else:
                left = via[j]
            assigned[j, left] = False
            for c in range(k):
                if codes[j, c] == left:
                    codes[j, c] = pending_child
                    break
            count_child[left] = _remove(members[left], count_child[left], j)
            count_pair[slot[j], left] -= 1
            t = pending_child
            assigned[j, t] = True
            members[t, count_child[t]] = j
            count_child[t] += 1
            count_pair[slot[j], t] += 1
            if before < child0:  # a sibling swap: `before` takes the child j left
                pending_child = left
            node = before

    for source in range(d):
        while count_child[source] > f[source]:
            target, target_dist, ntouched = search(source, psink)
            psink = update_potentials(target_dist, ntouched, psink)
            augment(source, target)

    sort_rows(codes, k)


@parallel_kernel
def solve_level2_batch(scores, parents, k, sib, glob, codes):
    for b in nb.prange(scores.shape[0]):
        solve_level2(scores[b], parents[b], k, sib, glob, codes[b])
