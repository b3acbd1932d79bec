"""Successive shortest paths for the class-by-bucket flow network, in Numba.

The network (Jeong & Song, ICML 2018) has a supply of ``k`` units at each of the ``n`` classes,
unit arcs class -> bucket of cost ``-scores[i, r]``, and a convex arc bucket -> sink whose ``(c
+ 1)``-th unit costs ``incr[c]``; the sink takes ``n * k`` units. The solver keeps node
potentials ``p`` such that every residual arc has a reduced cost ``rc(u, v) = c(u, v) + p(u) -
p(v) >= 0`` while it moves units from nodes with an excess to nodes with a deficit along
shortest paths (successive shortest paths on a pseudo-flow: Ahuja, Magnanti & Orlin, "Network
Flows", section 9.7). When no excess is left, the flow is optimal.

The start is the greedy answer, which is nearly optimal when the penalty dominates the scores
(the DHT case: the optimum fills every bucket evenly), so only the difference is searched:

- Every class takes its ``k`` best buckets (lower index first on ties); ``p(class)`` is its
  ``k``-th best score and ``p(bucket) = 0``, so every class arc has a reduced cost ``>= 0``.
- ``p(sink) = incr[q]``, ``q = n * k // d``. Then any bucket may send any ``f`` units with
  ``lo <= f <= hi`` to the sink (``lo`` unit costs lie below ``p(sink)``, ``hi`` at or below
  it), and ``d * lo <= n * k <= d * hi``. Each bucket's ``f`` is chosen as close to its
  occupancy as the total ``n * k`` allows. A bucket holding more classes than it sends has an
  excess; one holding fewer has a deficit. For DHT-like scores with penalty 1e4 and
  ``(n, d, k) = (64, 64, 4)`` about 45 units are left to move instead of 256.
- Where ``n * k >= d`` (every bucket is to hold a class), one pass over the deficit buckets
  first raises each one's potential, as far as its sink flow stays optimal, until enough
  classes prefer it (``attract``): a class joins when the raise reaches its gap ``p(class) -
  scores - p(bucket)`` and leaves its least attractive bucket, at a reduced cost of zero; the
  raise is the needed-th least gap (a step of the auction algorithm, Bertsekas, 1988, with
  no epsilon, as in the augmenting row reduction of Jonker & Volgenant, 1987). Every reduced
  cost stays ``>= 0``. At ``(64, 64, 3)`` it leaves about 40% fewer units for the searches
  (1.4x faster on DHT-like problems); a second pass, or excess buckets lowering their
  potentials as well, measured slower.
- Each search is Dijkstra from an excess bucket that stops at the nearest deficit bucket;
  potentials become ``p + min(dist, D)``, which, shifted by ``-D``, changes only the nodes
  nearer than ``D``. Paths may pass the sink (one unit more from one bucket, one less from
  another), so the bucket loads of the optimum need not be those of the start.

The search is dense, in the manner of Jonker & Volgenant's assignment solver: labels of the
``d`` buckets and the sink live in one flat array. The next node is the minimum label, the
first on ties, found in one vectorised pass over the labels' bit patterns
(``_simd.nearest_node``: non-negative doubles order like their int64 bits; reduced costs are
clamped at zero, so no label is ``-0.0``). A class is not selected itself: when a settled
bucket improves a class's label, the class relaxes all its ``d`` buckets at once, eight a step
(``_simd.relax_into``): in place where the CPU has AVX-512, elsewhere from one buffer of labels
into a second, which becomes the current one (written in place, the AVX2 loop became masked
stores, which AMD's Zen cores run as microcode: the whole solve ran 2.1-2.4x slower at d =
512). A class whose label is already no nearer than some labelled deficit bucket is skipped
(nothing it reaches can come first), and a deficit bucket among the nearest nodes ends the
search at once (ties are common with integer scores). Where buckets hold three classes or
more on average, a settled bucket offers its classes their labels in one pass without a
branch and relaxes the improved ones after it (the branches of the loop, missed on new
problems, cost 1-5% of a crowded solve; at two classes a bucket the pass saved nothing). The
dense relaxation costs most at large d (d = 2048), and the greedy start helps least where the
penalty is tiny beside the scores (many units left to move).

The code is in phases (``greedy_start``, ``sink_flows``, ``attract`` on crowded problems, then
per augmentation ``search``, ``update_potentials``, ``augment``; see
``solve_with_potentials``). The per-augmentation
phases are closures: Numba inlines them with no call and no reference counting. Two Numba
costs shaped how they are written (both measured): a module-level helper that takes arrays
and writes them or returns a value pays reference counting on every call (15-34x slower in
a relax loop), so only helpers Numba inlines (``sort_rows``, ``_heap.top_k_rows``) are
module-level; and a conditional expression (``a if c else b``) inside a closure made the
relax loops 15-30x slower than the same loop written with ``if`` statements and ``max``.

All arithmetic is in float64; reduced costs that rounding pushes below zero are clamped to
zero. With integer-valued costs every quantity stays an integer, so the optimum is exact.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .._checks import _top_magnitude_bits
from .._heap import _MAGNITUDE, SMALL_K, top_k_rows
from .._parallel import parallel_kernel
from .._simd import (
    least_after,
    line_aligned,
    nearest_node,
    popcount64,
    relax_into,
    target_features,
)

_INF = np.inf
_INF_BITS = np.int64(0x7FF0000000000000)  # the bit pattern of +inf
# A class's arcs are relaxed in place where the CPU has AVX-512, whose masked stores run at
# full speed, and from one buffer of labels into the other elsewhere (see _simd.relax_into).
_IN_PLACE = bool(target_features()["avx512bw"])


@nb.njit(cache=True, nogil=True)
def lines(size):
    """An uninitialised float64 array of ``size`` entries that starts on a 64-byte boundary.

    Numba aligns an array's data to 32 bytes: half of the time each eight-lane vector of it
    spans two cache lines, and a solve's speed depended on where the allocator had put its
    labels (1.02-1.07x slower, once 1.14x, 32 bytes off a line; 1.03-1.10x with a vector
    across a page) and potentials (1.01-1.03x; AMD EPYC Zen 5)."""
    return line_aligned(np.empty(size + 8), size)


@nb.njit(cache=True, nogil=True)
def int_lines(size):
    """``lines`` of int64."""
    return line_aligned(np.empty(size + 8, dtype=np.int64), size)


@nb.njit(cache=True, nogil=True)
def _remove(values, count, value):
    """Swap-remove ``value`` from ``values[:count]``; returns the new count."""
    for t in range(count):
        if values[t] == value:
            values[t] = values[count - 1]
            return count - 1
    return count


@nb.njit(cache=True, nogil=True)
def _top_k(row, k, out, top):
    """Write the ``k`` largest entries' indices of ``row`` into ``out``, largest first (lower
    index first on ties); ``top`` is scratch of length ``k``. Returns the ``k``-th largest.

    For ``k`` above ``SMALL_K`` (smaller ones take ``_heap.top_k_rows``): insertion into a
    sorted list of ``k``; a stable sort beyond 16, where insertion would cost ``k * d``."""
    if k > 16:
        order = np.argsort(-row, kind="mergesort")
        out[:] = order[:k]
        return row[order[k - 1]]
    filled = 0
    for r in range(row.shape[0]):
        value = row[r]
        if filled == k:
            if value <= top[k - 1]:
                continue
            t = k - 1
        else:
            t = filled
            filled += 1
        while t > 0 and top[t - 1] < value:
            top[t] = top[t - 1]
            out[t] = out[t - 1]
            t -= 1
        top[t] = value
        out[t] = r
    return top[k - 1]


@nb.njit(cache=True, nogil=True, inline="always")
def _order(codes, i, a, b):
    """Put ``codes[i, a]`` and ``codes[i, b]`` in ascending order (one comparator of a
    network)."""
    x = codes[i, a]
    y = codes[i, b]
    codes[i, a] = min(x, y)
    codes[i, b] = max(x, y)


@nb.njit(cache=True, nogil=True, inline="always")
def sort_rows(codes, k):
    """Sort ``codes[i, :k]`` of every row ascending: for ``k <= 4`` a sorting network of
    minima and maxima, without a branch on the data (an insertion missed a branch on most
    rows: 0.78 us against 0.08 for 64 rows of three), on ``codes`` itself (a view of each row
    made it ~0.5 us slower); insertion up to 16 (Numba's ``ndarray.sort`` costs about 0.4 us
    a call on four entries, as much as the rest of a 64-class greedy start), a sort beyond
    (insertion costs ``k * k``)."""
    if k == 2:
        for i in range(codes.shape[0]):
            _order(codes, i, 0, 1)
    elif k == 3:
        for i in range(codes.shape[0]):
            _order(codes, i, 0, 1)
            _order(codes, i, 1, 2)
            _order(codes, i, 0, 1)
    elif k == 4:
        for i in range(codes.shape[0]):
            _order(codes, i, 0, 1)
            _order(codes, i, 2, 3)
            _order(codes, i, 0, 2)
            _order(codes, i, 1, 3)
            _order(codes, i, 1, 2)
    if k <= 4:
        return
    for i in range(codes.shape[0]):
        row = codes[i, :k]
        if k > 16:
            row.sort()
            continue
        for t in range(1, k):
            value = row[t]
            u = t
            while u > 0 and row[u - 1] > value:
                row[u] = row[u - 1]
                u -= 1
            row[u] = value


@nb.njit(cache=True, nogil=True)
def _sink_costs(incr, f, r, fwd, back):
    """The costs of one unit more (``fwd``) and one unit less (``back``) from bucket ``r`` to
    the sink at flow ``f[r]`` (``inf`` where there is no such unit)."""
    levels = incr.shape[0]
    fwd[r] = incr[f[r]] if f[r] < levels else _INF
    back[r] = -incr[f[r] - 1] if f[r] > 0 else _INF


@nb.njit(cache=True, nogil=True)
def sink_flows(incr, count, units):
    """The sink's potential and each bucket's flow to it for a start where every bucket's
    potential is 0 and bucket ``r`` holds ``count[r]`` units (``units`` in all).

    With ``p(sink) = incr[units // d]``, any flow ``f`` with ``lo <= f <= hi`` is optimal on a
    bucket's sink arc (``lo`` unit costs lie below ``p(sink)``, ``hi`` at or below it), and
    ``d * lo <= units <= d * hi``. Each ``f`` is chosen as close to the bucket's count as the
    total ``units`` allows. Returns ``(p(sink), f)``."""
    d = count.shape[0]
    levels = incr.shape[0]
    psink = incr[min(units // d, levels - 1)]
    lo = 0
    hi = 0
    for c in range(levels):
        if incr[c] < psink:
            lo += 1
        if incr[c] <= psink:
            hi += 1
    f = np.empty(d, dtype=np.int64)
    total = 0
    for r in range(d):
        f[r] = min(max(count[r], lo), hi)
        total += f[r]
    while total > units:
        for r in range(d):
            if total > units and f[r] > lo:
                f[r] -= 1
                total -= 1
    while total < units:
        for r in range(d):
            if total < units and f[r] < hi:
                f[r] += 1
                total += 1
    return psink, f


@nb.njit(cache=True, nogil=True)
def all_finite(scores):
    """No NaN or Inf in ``scores`` (C-contiguous float64): the largest magnitude's bits, one
    vectorised integer maximum (``_checks._top_magnitude_bits``), stay below infinity's."""
    return _top_magnitude_bits(scores.reshape(-1).view(np.int64), _MAGNITUDE) < _INF_BITS


@nb.njit(cache=True, nogil=True)
def solve_one(scores, k, incr, codes):
    """Write the optimal ``(n, k)`` codes of one problem into ``codes`` (rows sorted).

    Returns False, and writes nothing, if ``scores`` holds NaN or Inf."""
    if not all_finite(scores):
        return False
    n, d = scores.shape
    solve_with_potentials(scores, k, incr, codes, lines(d), lines(n))
    return True


@nb.njit(cache=True, nogil=True)
def solve_linear(scores, k, penalty, codes):
    """``solve_one`` for the common call from a host loop, in one dispatch, into ``codes``
    (n, k), which the caller allocates (after a peer's run had pushed Python and Numba out of
    the caches, a new array returned from here cost ~1.2-2 us more than one made by numpy
    and passed in); the penalty's schedule ``penalty * c`` is built here. Returns False, and
    writes nothing, where the arguments need the checked path: ``k`` outside ``1..d`` or
    ``codes`` of another shape, a penalty that is negative or not finite, NaN or Inf in
    ``scores``."""
    n, d = scores.shape
    if not (1 <= k <= d and codes.shape[0] == n and codes.shape[1] == k
            and 0.0 <= penalty < _INF and all_finite(scores)):
        return False
    incr = np.empty(max(n, 1))
    for c in range(incr.shape[0]):
        incr[c] = penalty * np.float64(c)
    solve_with_potentials(scores, k, incr, codes, lines(d), lines(n))
    return True


@nb.njit(cache=True, nogil=True)
def solve_with_potentials(scores, k, incr, codes, pb, pc):
    """``solve_one`` that also leaves optimal potentials: ``pb`` (d,) of the buckets, ``pc``
    (n,) of the classes; returns the sink's. Every residual arc of the optimum has a reduced
    cost ``>= 0`` with them (up to float64 rounding). The level-2 solver starts from these.
    ``pb`` is read eight lanes at a time: the solve is faster where it starts on a cache line
    (``lines``).

    Phases: ``greedy_start`` and ``sink_flows``, ``attract`` for each deficit bucket of a
    crowded problem, then for each excess bucket ``search`` (to the nearest deficit bucket),
    ``update_potentials`` and ``augment``. The per-augmentation
    phases are closures over the solver's arrays, which Numba inlines with no call and no
    reference counting (see ``_hierarchical_cpu.solve_level2``)."""
    n, d = scores.shape
    if n == 0:
        pb[:] = 0.0
        return incr[0]
    sink = d  # node ids: bucket r -> r, the sink -> d

    score_bits = scores.view(np.int64)
    assigned = np.zeros((n, d), dtype=np.bool_)
    count = np.zeros(d, dtype=np.int64)  # classes in each bucket
    occ = np.empty((d, n), dtype=np.int64)  # occ[r, :count[r]]: the classes in bucket r

    def greedy_start():
        """Every class takes its ``k`` best buckets (lower index first on ties), bucket
        potentials 0, class potentials the ``k``-th best score, so every class arc has a
        reduced cost >= 0. (A closure like the other phases, so that no array is passed.)
        # modifies: codes, pb, pc, assigned, count, occ (all written here)"""
        pb[:] = 0.0
        if k > SMALL_K:
            top = np.empty(k)
            for j in range(n):
                pc[j] = _top_k(scores[j], k, codes[j], top)
        else:
            top_k_rows(score_bits, k, codes, int_lines(8 * ((d + 7) // 8 * 8)).reshape(8, -1),
                       np.empty((8, SMALL_K), dtype=np.int64))
            for j in range(n):
                pc[j] = scores[j, codes[j, k - 1]]
        for j in range(n):
            for t in range(k):
                r = codes[j, t]
                assigned[j, r] = True
                occ[r, count[r]] = j
                count[r] += 1

    greedy_start()
    psink, f = sink_flows(incr, count, n * k)

    def move(j, leave, join):
        """Class j leaves bucket ``leave`` for bucket ``join``.
        # modifies: codes, assigned, occ, count
        Keeps: occ[r, :count[r]] lists bucket r's classes."""
        assigned[j, join] = True
        assigned[j, leave] = False
        for t in range(k):
            if codes[j, t] == leave:
                codes[j, t] = join
                break
        occ[join, count[join]] = j
        count[join] += 1
        count[leave] = _remove(occ[leave], count[leave], j)

    def tighten(j):
        """pc[j] = the least adjusted score ``scores[j, r] + pb[r]`` of class j's buckets
        (so that one of them can leave at a reduced cost of zero).
        # modifies: pc[j]"""
        low = _INF
        for t in range(k):
            r = codes[j, t]
            low = min(low, scores[j, r] + pb[r])
        pc[j] = low

    def attract(r, least, who, gaps, gap_bits):
        """Deficit bucket r raises its potential until ``f[r] - count[r]`` more classes
        prefer it, as far as ``f[r]`` stays optimal on its sink arc (``pb[r] <= psink -
        incr[f[r] - 1]``). A class joins once the raise reaches its gap, ``pc[j]`` less its
        adjusted score of r: the raise is the ``wanted``-th least gap, and the classes of the
        ``wanted`` least gaps (the lower index first among equal ones) that it reaches join, in
        that order. Each leaves its least adjusted bucket (the highest index on ties), which
        its potential then stands at: every reduced cost stays >= 0. ``least`` and ``who`` are
        scratch of length n, ``gaps`` of n rounded up to eight (``gap_bits`` its int64 view,
        padded with the largest key).
        # modifies: pb[r], pc (r's classes), and through move codes, assigned, occ, count"""
        wanted = f[r] - count[r]
        room = psink - incr[f[r] - 1] - pb[r]
        if not room > 0.0:
            return
        # every class's gap as the bits of a non-negative double, with no branch, then inf's
        # for r's own classes (r's potential read once and no membership read in the loop: as
        # it was, with both, the loop cost ~1 us of a crowded 64 x 64 solve); then the wanted
        # least, lower index first on ties, a vectorised pass each
        own = pb[r]
        for j in range(n):
            gaps[j] = max(pc[j] - (scores[j, r] + own), 0.0) + 0.0  # (-0.0 made +0.0)
        for t in range(count[r]):
            gaps[occ[r, t]] = _INF
        filled = min(wanted, n - count[r])
        key, j = -1, -1  # (no pair is before it)
        for t in range(filled):
            key, j = least_after(gap_bits, gap_bits.shape[0], key, j)
            least[t] = gaps[j]
            who[t] = j
        level = room
        if filled == wanted:
            level = min(least[wanted - 1], room)
        pb[r] += level
        for t in range(filled):
            if least[t] > level:
                break
            j = who[t]
            leave = codes[j, 0]
            low = _INF
            for s in range(k):
                b = codes[j, s]
                a = scores[j, b] + pb[b]
                if a < low or (a == low and b > leave):
                    low = a
                    leave = b
            move(j, leave, r)
        for t in range(count[r]):
            tighten(occ[r, t])

    if n * k >= d:
        # Crowded (every bucket is to hold a class): one pass of price raises by the deficit
        # buckets first, which leaves about 40% fewer units for the searches at n = d = 64.
        least = np.empty(n)
        who = np.empty(n, dtype=np.int64)
        gaps = lines((n + 7) // 8 * 8)
        gap_bits = gaps.view(np.int64)
        gap_bits[n:] = _MAGNITUDE
        for r in range(d):
            if count[r] < f[r]:
                attract(r, least, who, gaps, gap_bits)
    fwd = np.empty(d)
    back = np.empty(d)
    # the labels of the buckets and the sink and their masks are padded to a multiple of
    # eight for nearest_node
    size = (d + 8) // 8 * 8
    # masks of one bit a node, byte r // 8, bit r % 8 (see nearest_node)
    deficit = np.zeros(size // 8, dtype=np.uint8)  # the deficit buckets
    done = np.zeros(size // 8, dtype=np.uint8)  # the settled nodes
    for r in range(d):
        _sink_costs(incr, f, r, fwd, back)
        if count[r] < f[r]:
            deficit[r >> 3] |= np.uint8(1 << (r & 7))

    # The labels of the buckets and the sink, and the preds (a bucket's class, -1 for the
    # sink; the sink's bucket), in two buffers: relax_class reads one and writes the other (see
    # _simd.relax_into); cur[0] is the one that holds them.
    labels = lines(2 * size).reshape(2, size)
    labels[:] = _INF
    label_bits = labels.view(np.int64)
    preds = int_lines(2 * size).reshape(2, size)
    preds[:] = 0
    cur = np.zeros(1, dtype=np.int64)
    label_c = np.empty(n)
    pred_c = np.zeros(n, dtype=np.int64)  # the bucket a class leaves
    # three classes a bucket or more on average: a settled bucket's classes are offered their
    # labels without a branch (see search)
    shared = n * k >= 3 * d
    offered = np.empty(64)
    scratch = np.empty(1)
    scratch_bits = scratch.view(np.int64)

    # (reduced costs are clamped at zero everywhere below: with exact arithmetic every one is
    # >= 0, so a label below the settled node's is float64 rounding; the clamp keeps labels
    # monotone, Dijkstra's precondition, and never acts on integer costs, which round to
    # nothing)

    def relax_from_sink(dist, psink):
        """The sink, settled at ``dist``, takes one unit less from any bucket: all ``d``
        arcs in one loop (``if`` statements, not conditional expressions: see the module
        docstring). In place: it runs at most once a search.
        # modifies: labels, preds (of the buckets it improves, in the current buffer)
        Keeps: a settled bucket is never improved (its label is at most dist)."""
        c = cur[0]
        base = dist + psink
        for r in range(d):
            cand = max(base + back[r] - pb[r], dist)
            if cand < labels[c, r]:
                labels[c, r] = cand
                preds[c, r] = -1

    def relax_class(j, from_dist):
        """Class ``j``, labelled ``from_dist``, joins a bucket it is not in: all ``d`` arcs,
        in place (``_IN_PLACE``), or from the current buffer into the other, which becomes the
        current one (the sink's entries copied).
        # modifies: labels, preds, cur
        Keeps: as relax_from_sink."""
        c = cur[0]
        if _IN_PLACE:
            relax_into(scores, j, assigned, pb, labels[c], preds[c], labels[c], preds[c],
                       from_dist + pc[j], from_dist)
            return
        o = 1 - c
        relax_into(scores, j, assigned, pb, labels[c], preds[c], labels[o], preds[o],
                   from_dist + pc[j], from_dist)
        labels[o, sink] = labels[c, sink]
        preds[o, sink] = preds[c, sink]
        cur[0] = o

    def search(source, psink):
        """Dijkstra from excess bucket ``source`` to the nearest deficit bucket; returns it.
        # modifies: labels, preds, cur, done, label_c, pred_c (the search's state)
        Keeps: a settled node's label is its distance; label_c[j] is the least label
        offered to class j so far."""
        c = cur[0]
        labels[c, :] = _INF
        done[:] = 0
        label_c[:] = _INF
        labels[c, source] = 0.0
        while True:
            c = cur[0]
            near, node, bound_bits, target = nearest_node(label_bits[c], done, deficit, size)
            if near >= _INF_BITS:
                raise RuntimeError("flow solver: no augmenting path (please report this)")
            # The early exit. Safe: nodes settle in label order, so a deficit bucket at the
            # least label has its final distance and no deficit bucket is nearer; which of
            # several tied ones is taken does not matter to SSP (the lowest id, for
            # determinism).
            if bound_bits <= near:
                return target
            scratch_bits[0] = bound_bits
            bound = scratch[0]
            dist = labels[c, node]
            done[node >> 3] |= np.uint8(1 << (node & 7))

            if node == sink:  # one unit less from some bucket to the sink
                relax_from_sink(dist, psink)
                continue

            # a bucket (not a deficit one): one unit more to the sink, or a class leaves
            r = node
            cand = max(dist + fwd[r] + pb[r] - psink, dist)
            if cand < labels[c, sink]:
                labels[c, sink] = cand
                preds[c, sink] = r
            # Each of r's classes is offered the label dist + its reduced cost back to r; one
            # that improves relaxes its arcs unless it is at or beyond the bound. (The bound
            # skip. Safe: all the class reaches is at least from_dist >= bound >= D, the
            # target's final distance (a deficit bucket is already labelled at bound); nodes
            # at >= D change neither the target nor the potential update. Its label is kept:
            # a later bucket that brings it below the bound relaxes it then.)
            if not shared:
                for t in range(count[r]):
                    j = occ[r, t]
                    from_dist = max(dist + scores[j, r] + pb[r] - pc[j], dist)
                    if from_dist >= label_c[j]:
                        continue
                    label_c[j] = from_dist
                    pred_c[j] = r
                    if from_dist < bound:
                        relax_class(j, from_dist)
                continue
            # where buckets hold several classes, the offers first, without a branch, and the
            # relaxations after them, in the same order, over a mask of up to 64 classes (a
            # class's relaxation changes no offer)
            for start in range(0, count[r], 64):
                relax = np.uint64(0)
                for t in range(start, min(start + 64, count[r])):
                    j = occ[r, t]
                    from_dist = max(dist + scores[j, r] + pb[r] - pc[j], dist)
                    offered[t - start] = from_dist
                    better = from_dist < label_c[j]
                    label_c[j] = min(from_dist, label_c[j])
                    pred_c[j] += (r - pred_c[j]) * np.int64(better)
                    relax |= np.uint64(better & (from_dist < bound)) << np.uint64(t - start)
                while relax:
                    low = relax & (~relax + np.uint64(1))  # the lowest bit set
                    relax ^= low
                    t = popcount64(low - np.uint64(1))
                    relax_class(occ[r, start + t], offered[t])

    def update_potentials(target, psink):
        """p += min(dist, D), shifted by -D: only the nodes nearer than D change; returns
        the sink's new potential.
        # modifies: pb, pc (psink returned)
        Keeps: every residual arc has a reduced cost >= 0. Skipping the others is exact:
        min(dist, D) - D = 0 for them (and for unlabelled ones, at inf), including classes
        left out by the bound skip (labels >= D)."""
        c = cur[0]
        reach = labels[c, target]
        for r in range(d):
            if labels[c, r] < reach:
                pb[r] -= reach - labels[c, r]
        if labels[c, sink] < reach:
            psink -= reach - labels[c, sink]
        for j in range(n):
            if label_c[j] < reach:
                pc[j] -= reach - label_c[j]
        return psink

    def augment(source, target):
        """Move one unit along source -> ... -> target: a class labelled from bucket a that
        labels bucket b moves from a to b; the sink between buckets a and b takes one unit
        more from a and one less from b.
        # modifies: codes, assigned, occ, count (through move), f, fwd, back, deficit (the
        target's)
        Keeps: fwd/back are the sink arcs' costs at f."""
        c = cur[0]
        r = target
        while r != source:
            j = preds[c, r]
            if j < 0:
                f[r] -= 1
                _sink_costs(incr, f, r, fwd, back)
                r = preds[c, sink]
                f[r] += 1
                _sink_costs(incr, f, r, fwd, back)
                continue
            leave = pred_c[j]
            move(j, leave, r)
            r = leave
        bit = np.uint8(1 << (target & 7))
        if count[target] < f[target]:
            deficit[target >> 3] |= bit
        else:
            deficit[target >> 3] &= ~bit

    for source in range(d):
        while count[source] > f[source]:
            target = search(source, psink)
            psink = update_potentials(target, psink)
            augment(source, target)

    sort_rows(codes, k)
    return psink


@parallel_kernel
def solve_batch(scores, k, incr, codes):
    """``solve_one`` for each problem of a ``(B, n, d)`` batch, in parallel over problems.

    Returns False, and writes nothing, if ``scores`` holds NaN or Inf."""
    if not all_finite(scores):
        return False
    n, d = scores.shape[1:]
    for b in nb.prange(scores.shape[0]):
        solve_with_potentials(scores[b], k, incr, codes[b], lines(d), lines(n))
    return True
