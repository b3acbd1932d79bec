"""Small LLVM intrinsics for Numba kernels: float32 distances in eight fixed lanes, popcount,
two items' 8-bit PQ or Hamming distances to many queries at once (``adc_lanes``,
``hamming_lanes``), the flow solver's relaxation of a class's arcs (``relax_into``) and
selections (``nearest_node``, ``least_node``, ``least_after``, ``least_k_lanes``), the table
probe's sorted rows of (distance, row) keys (``rank_key``, ``insert_ranked``), and the
4-bit fast scan's byte-shuffle blocks (AVX2, and AVX-512BW where the CPU has it; see the end
of the module).

Numba does not vectorise a float reduction unless it may reorder the sum (fastmath), and then
the order depends on the compiler and the CPU. These intrinsics emit the vector code directly
with an order that is fixed by construction: coordinate ``j`` is accumulated in lane ``j % 8``
(the tail beyond the last full block of eight in lanes ``0, 1, ...``), each lane in increasing
``j``, and the lanes are summed as ``((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))``. No
fused multiply-add is formed. The result is the same on every CPU, and tests/reference.py
repeats it with plain float32 operations.
"""

from __future__ import annotations

import functools

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["RANK_EMPTY", "adc_lanes", "dot_f32", "dot_f32_pair", "fastscan_block",
           "fastscan_group3", "fastscan_group4", "hamming_lanes", "has_avx2", "has_avx512bw",
           "insert_ranked", "least_after", "least_k_lanes", "least_node", "line_aligned",
           "nearest_node", "numba_target", "popcount64", "prefetch", "rank_key",
           "ranked_distance", "relax_into", "sq_l2_f32", "sq_l2_f32_pair", "target_features",
           "widen_half"]

_LANES = 8


def _lanes_codegen(kind: str):
    """The codegen of ``sq_l2_f32``, ``dot_f32`` and their two-row forms: one query against
    one row, or against two rows with the two sums' dependent additions side by side (each
    row's lanes and sum tree as for one row, so each result is the same to the bit)."""

    def codegen(context, builder, signature, args):
        query = context.make_array(signature.args[0])(context, builder, args[0])
        rows = [context.make_array(t)(context, builder, a)
                for t, a in zip(signature.args[1:], args[1:], strict=True)]
        n = cgutils.unpack_tuple(builder, query.shape, 1)[0]
        f32 = ir.FloatType()
        vec = ir.VectorType(f32, _LANES)
        accs = [cgutils.alloca_once_value(builder, ir.Constant(vec, [0.0] * _LANES))
                for _ in rows]
        blocks = builder.udiv(n, ir.Constant(n.type, _LANES))

        def term(a, b):
            if kind == "l2":
                diff = builder.fsub(a, b)
                return builder.fmul(diff, diff)
            return builder.fmul(a, b)

        with cgutils.for_range(builder, blocks) as loop:
            start = builder.mul(loop.index, ir.Constant(n.type, _LANES))
            qv = builder.load(builder.bitcast(builder.gep(query.data, [start]),
                                              vec.as_pointer()), align=4)
            for row, acc in zip(rows, accs, strict=True):
                rv = builder.load(builder.bitcast(builder.gep(row.data, [start]),
                                                  vec.as_pointer()), align=4)
                builder.store(builder.fadd(builder.load(acc), term(qv, rv)), acc)

        main = builder.mul(blocks, ir.Constant(n.type, _LANES))
        tail = builder.sub(n, main)
        with cgutils.for_range(builder, tail) as loop:
            j = builder.add(main, loop.index)
            qs = builder.load(builder.gep(query.data, [j]))
            lane = builder.trunc(loop.index, ir.IntType(32))
            for row, acc in zip(rows, accs, strict=True):
                rs = builder.load(builder.gep(row.data, [j]))
                lanes = builder.load(acc)
                updated = builder.fadd(builder.extract_element(lanes, lane), term(qs, rs))
                builder.store(builder.insert_element(lanes, updated, lane), acc)

        sums = [_lane_sum(builder, builder.load(acc)) for acc in accs]
        if len(sums) == 1:
            return sums[0]
        return context.make_tuple(builder, signature.return_type, sums)

    return codegen


def _lane_sum(builder, lanes):
    """``((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))`` of eight float32 lanes, as three
    vector additions of the lanes and a shuffle of them: the same additions of the same
    operands as the scalar tree (so the same sum to the bit), in six instructions where the
    scalar tree's extractions and additions took about fifteen."""
    sum_ = lanes
    for swap in ([1, 0, 3, 2, 5, 4, 7, 6], [2, 3, 0, 1, 6, 7, 4, 5], [4, 5, 6, 7, 0, 1, 2, 3]):
        order = ir.Constant(ir.VectorType(ir.IntType(32), _LANES), swap)
        sum_ = builder.fadd(sum_, builder.shuffle_vector(sum_, sum_, order))
    return builder.extract_element(sum_, ir.Constant(ir.IntType(32), 0))


def _check(query, row):
    for a in (query, row):
        if not (isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.float32
                and a.layout == "C"):
            raise TypeError("expected contiguous 1-d float32 arrays")


@intrinsic
def sq_l2_f32(typingctx, query, row):
    """Squared L2 distance of two contiguous float32 vectors of equal length (unchecked)."""
    _check(query, row)
    return types.float32(query, row), _lanes_codegen("l2")


@intrinsic
def dot_f32(typingctx, query, row):
    """Inner product of two contiguous float32 vectors of equal length (unchecked)."""
    _check(query, row)
    return types.float32(query, row), _lanes_codegen("ip")


@intrinsic
def sq_l2_f32_pair(typingctx, query, row_a, row_b):
    """``(sq_l2_f32(query, row_a), sq_l2_f32(query, row_b))``, to the bit, in one pass: the
    two sums' chains of dependent additions side by side (unchecked)."""
    _check(query, row_a)
    _check(query, row_b)
    return types.UniTuple(types.float32, 2)(query, row_a, row_b), _lanes_codegen("l2")


@intrinsic
def dot_f32_pair(typingctx, query, row_a, row_b):
    """``(dot_f32(query, row_a), dot_f32(query, row_b))``, to the bit, in one pass
    (unchecked)."""
    _check(query, row_a)
    _check(query, row_b)
    return types.UniTuple(types.float32, 2)(query, row_a, row_b), _lanes_codegen("ip")


@intrinsic
def popcount64(typingctx, word):
    """Number of set bits of a uint64 (as an int64), through LLVM's ctpop: one POPCNT."""
    if word != types.uint64:
        raise TypeError("popcount64 takes a uint64")

    def codegen(context, builder, signature, args):
        ctpop = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)])
        return builder.call(ctpop, [args[0]])

    return types.int64(types.uint64), codegen


@intrinsic
def prefetch(typingctx, array):
    """Ask the CPU to bring all of a contiguous array's data into cache, one request per
    64-byte line (no effect on results)."""
    if not (isinstance(array, types.Array) and array.layout == "C"):
        raise TypeError("prefetch takes a contiguous array")

    def codegen(context, builder, signature, args):
        arr = context.make_array(array)(context, builder, args[0])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        start = builder.bitcast(arr.data, i8p)
        nbytes = builder.mul(arr.nitems, arr.itemsize)
        lines = builder.udiv(builder.add(nbytes, ir.Constant(nbytes.type, 63)),
                             ir.Constant(nbytes.type, 64))
        with cgutils.for_range(builder, lines) as loop:
            address = builder.gep(start, [builder.mul(loop.index, ir.Constant(nbytes.type, 64))])
            # read access, high temporal locality, data cache
            builder.call(fn, [address, ir.Constant(i32, 0), ir.Constant(i32, 3),
                              ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(array), codegen


_HALF_STEP = 16  # float16 numbers widened a step by ``widen_half``


@intrinsic
def widen_half(typingctx, bits, out):
    """``out[j]`` = the float32 value of the float16 number whose bit pattern is ``bits[j]``
    (uint16 or int16), for every ``j`` of ``bits`` (unchecked: ``out`` at least as long).
    Exact, NaN payloads included (every float16 is a float32).

    Sixteen a step by integer and float operations that any x86-64 CPU vectorises: the
    exponent and mantissa bits shifted into a float32's places make a float32 that is the
    float16's magnitude times ``2**-112`` (a float32 subnormal for a subnormal float16), so
    one multiplication by ``2**112`` gives it exactly; infinities and NaNs get the float32's
    all-ones exponent instead, and the sign its bit. (A look-up in a table of the 65,536
    values took 20.7 ns a 64-d row against 4.2 ns, AMD EPYC Zen 5; F16C's conversion would
    leave CPUs without it a library call.)"""
    if not (isinstance(bits, types.Array) and bits.dtype in (types.uint16, types.int16)):
        raise TypeError(f"widen_half: expected float16 bit patterns as uint16 or int16, got "
                        f"{bits}")
    _check_arrays("widen_half", [(bits, 1, bits.dtype), (out, 1, types.float32)])

    def codegen(context, builder, signature, args):
        source, target = (context.make_array(t)(context, builder, a)
                          for t, a in zip(signature.args, args, strict=True))
        i32, f32 = ir.IntType(32), ir.FloatType()

        def widen(half, width):
            def const(value, kind=i32):
                return ir.Constant(kind, value) if width == 1 else ir.Constant(
                    ir.VectorType(kind, width), [value] * width)

            wide = builder.zext(half, i32 if width == 1 else ir.VectorType(i32, width))
            magnitude = builder.and_(wide, const(0x7FFF))
            shifted = builder.shl(magnitude, const(13))
            as_float = builder.bitcast(shifted, f32 if width == 1 else ir.VectorType(f32, width))
            scaled = builder.bitcast(builder.fmul(as_float, const(2.0**112, f32)), shifted.type)
            special = builder.or_(shifted, const(0x7F800000))
            value = builder.select(builder.icmp_unsigned(">=", magnitude, const(0x7C00)),
                                   special, scaled)
            sign = builder.shl(builder.and_(wide, const(0x8000)), const(16))
            return builder.bitcast(builder.or_(value, sign), as_float.type)

        def at(array, index, kind, width):
            pointer = builder.gep(array.data, [index])
            return pointer if width == 1 else builder.bitcast(
                pointer, ir.VectorType(kind, width).as_pointer())

        n = cgutils.unpack_tuple(builder, source.shape, 1)[0]
        i16 = ir.IntType(16)
        steps = builder.udiv(n, ir.Constant(n.type, _HALF_STEP))
        with cgutils.for_range(builder, steps) as loop:
            start = builder.mul(loop.index, ir.Constant(n.type, _HALF_STEP))
            half = builder.load(at(source, start, i16, _HALF_STEP), align=2)
            builder.store(widen(half, _HALF_STEP), at(target, start, f32, _HALF_STEP), align=4)
        done = builder.mul(steps, ir.Constant(n.type, _HALF_STEP))
        with cgutils.for_range(builder, builder.sub(n, done)) as loop:
            index = builder.add(done, loop.index)
            builder.store(widen(builder.load(at(source, index, i16, 1)), 1),
                          at(target, index, f32, 1))
        return context.get_dummy_value()

    return types.none(bits, out), codegen


# ------------------------------------ many queries in vector lanes (8-bit PQ, Hamming)


@nb.njit(cache=True, nogil=True)
def line_aligned(block, size):
    """The first ``size`` entries of ``block`` from its first 64-byte boundary (``block``
    holds at least ``64 / itemsize`` entries more): lane tables whose entries never span
    two cache lines."""
    skip = (-block.ctypes.data) % 64 // block.itemsize
    return block[skip:skip + size]


def _lane_sums(width, columns):
    """The codegen of ``adc_lanes`` and ``hamming_lanes``: two items' sums over their code
    bytes of table entries held ``width`` to a vector (float32 sums compared as floats, uint8
    ones as unsigned integers); the items' words in rows ``(N, W)``, or in columns ``(W, N)``
    (``columns``)."""

    def codegen(context, builder, signature, args):
        table_type = signature.args[0]
        tables_, words_, thresholds_, sums_ = [
            context.make_array(t)(context, builder, a)
            for t, a in zip(signature.args, args, strict=True) if isinstance(t, types.Array)]
        floats = table_type.dtype == types.float32
        i64 = ir.IntType(64)
        vec = ir.VectorType(ir.FloatType() if floats else ir.IntType(8), width)
        rows, cols = cgutils.unpack_tuple(builder, words_.shape, 2)
        item = context.cast(builder, args[2], signature.args[2], types.int64)
        num_words = rows if columns else cols
        entries = builder.bitcast(tables_.data, vec.as_pointer())

        def word_of(j, w):
            """Word ``w`` of item ``item + j``."""
            at = builder.add(item, ir.Constant(i64, j))
            if columns:
                at = builder.add(builder.mul(w, cols), at)
            else:
                at = builder.add(builder.mul(at, cols), w)
            return builder.load(builder.gep(words_.data, [at]))

        def entry(word, byte, offset):
            """The vector of position ``offset + byte``'s entries for the code in ``byte``."""
            code = builder.and_(builder.lshr(word, ir.Constant(i64, 8 * byte)),
                                ir.Constant(i64, 255))
            at = builder.add(code, builder.add(offset, ir.Constant(i64, 256 * byte)))
            return builder.load(builder.gep(entries, [at]), align=1)

        def add(a, b):
            return builder.fadd(a, b) if floats else builder.add(a, b)

        zero = ir.Constant(i64, 0)
        found = [word_of(j, zero) for j in range(2)]
        totals = [entry(word, 0, zero) for word in found]
        for byte in range(1, 8):
            totals = [add(t, entry(word, byte, zero))
                      for t, word in zip(totals, found, strict=True)]
        slots = [cgutils.alloca_once_value(builder, t) for t in totals]
        with cgutils.for_range(builder, builder.sub(num_words, ir.Constant(i64, 1))) as loop:
            w = builder.add(loop.index, ir.Constant(i64, 1))
            found = [word_of(j, w) for j in range(2)]
            offset = builder.mul(w, ir.Constant(i64, 8 * 256))
            totals = [builder.load(slot) for slot in slots]
            for byte in range(8):
                totals = [add(t, entry(word, byte, offset))
                          for t, word in zip(totals, found, strict=True)]
            for slot, t in zip(slots, totals, strict=True):
                builder.store(t, slot)
        limit = builder.load(builder.bitcast(thresholds_.data, vec.as_pointer()), align=1)
        below = zero
        for j, slot in enumerate(slots):
            total = builder.load(slot)
            out = builder.gep(sums_.data, [ir.Constant(i64, j * width)])
            builder.store(total, builder.bitcast(out, vec.as_pointer()), align=1)
            if floats:
                flags = builder.fcmp_ordered("<", total, limit)
            else:
                flags = builder.icmp_unsigned("<", total, limit)
            bits = builder.bitcast(flags, ir.IntType(width))
            below = builder.or_(below, builder.shl(builder.zext(bits, i64),
                                                   ir.Constant(i64, j * width)))
        return below

    return codegen


def _splat(builder, value, lanes):
    """``value`` in each of ``lanes`` lanes of a vector (inserted once, then broadcast)."""
    i32 = ir.IntType(32)
    one = builder.insert_element(ir.Constant(ir.VectorType(value.type, lanes), ir.Undefined),
                                 value, ir.Constant(i32, 0))
    return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(i32, lanes), [0] * lanes))


def _check_arrays(name, arrays):
    """Each ``(type, ndim, dtype)``: a C-contiguous array of that rank and element type."""
    for a, ndim, dtype in arrays:
        if not (isinstance(a, types.Array) and a.ndim == ndim and a.dtype == dtype
                and a.layout == "C"):
            raise TypeError(f"{name}: expected a contiguous {ndim}-d {dtype} array, got {a}")


def _check_lanes(name, lanes, allowed, item, arrays):
    if not isinstance(lanes, types.IntegerLiteral) or lanes.literal_value not in allowed:
        raise TypeError(f"{name} takes a literal lane count in {allowed}, got {lanes}")
    _check_arrays(name, arrays)
    if not isinstance(item, types.Integer):
        raise TypeError(f"{name} takes an integer item, got {item}")


@intrinsic(prefer_literal=True)
def adc_lanes(typingctx, tables, words, item, thresholds, sums, lanes):
    """Two items' 8-bit PQ distances to ``lanes`` queries at once, one query in each float32
    lane of a vector (unchecked).

    ``words[item]`` and ``words[item + 1]`` hold the items' 8-bit codes as uint64 words (code
    ``m`` in byte ``m % 8`` of word ``m // 8``); ``tables`` holds the queries' distance
    tables interleaved, entry ``(m, c)`` of lane ``l`` at ``(m * 256 + c) * lanes + l``, so
    that one vector load brings one table entry of every query. Each lane's sum starts from
    its entry of subspace 0 and adds the others in subspace order: the float32 additions of
    the one-query scan, lane by lane, so the distances are the same to the bit. Writes item
    ``item + j``'s distances to ``sums[j * lanes:(j + 1) * lanes]`` and returns the int64 bit
    mask of those below ``thresholds[:lanes]`` (bit ``j * lanes + l``; a NaN is not below).
    ``lanes`` is a compile-time constant: 8 or 16 (one or two AVX2 registers, one AVX-512
    register). Two items a call because each sum is a chain of dependent additions: two
    chains side by side ran 1.7x the items a cycle of one (16 lanes, AMD EPYC with AVX2)."""
    _check_lanes("adc_lanes", lanes, (8, 16), item,
                 [(tables, 1, types.float32), (words, 2, types.uint64),
                  (thresholds, 1, types.float32), (sums, 1, types.float32)])
    return (types.int64(tables, words, item, thresholds, sums, lanes),
            _lane_sums(lanes.literal_value, columns=False))


@intrinsic(prefer_literal=True)
def hamming_lanes(typingctx, tables, columns, item, thresholds, sums, lanes):
    """Two items' Hamming distances to ``lanes`` queries at once, one query in each uint8
    lane of a vector (unchecked): ``adc_lanes`` with a table per code byte.

    ``columns[w, item]`` and ``columns[w, item + 1]`` hold word ``w`` of the items' codes (the
    Hamming scan's ``(words, N)`` layout); ``tables`` holds, for code byte ``p`` (byte ``p %
    8`` of word ``p // 8``) and byte value ``c``, lane ``l``'s ``popcount(c ^ query byte p)``
    at ``(p * 256 + c) * lanes + l``. The sums are exact while they stay below 256: codes of
    at most three words. Writes them to ``sums[j * lanes:(j + 1) * lanes]`` and returns the
    int64 bit mask of those below ``thresholds[:lanes]`` (bit ``j * lanes + l``). ``lanes``
    is 32: one AVX2 register."""
    _check_lanes("hamming_lanes", lanes, (32,), item,
                 [(tables, 1, types.uint8), (columns, 2, types.uint64),
                  (thresholds, 1, types.uint8), (sums, 1, types.uint8)])
    return (types.int64(tables, columns, item, thresholds, sums, lanes),
            _lane_sums(lanes.literal_value, columns=True))


# ------------------------------------------------------ the flow solver's relaxation

_RELAX_WIDTH = 8  # float64 lanes a step: one AVX-512 register, two AVX2 ones


def _relax_codegen(context, builder, signature, args):
    """The codegen of ``relax_into``: ``_RELAX_WIDTH`` buckets a step, the rest one by one."""
    scores, _, assigned, pb, label_in, pred_in, label_out, pred_out = [
        context.make_array(t)(context, builder, a) if isinstance(t, types.Array) else None
        for t, a in zip(signature.args[:8], args[:8], strict=True)]
    j, base, floor = args[1], args[8], args[9]
    i64 = ir.IntType(64)
    d = cgutils.unpack_tuple(builder, scores.shape, 2)[1]
    row = builder.mul(j, d)

    def step(b, width):
        def vector(scalar):
            return scalar if width == 1 else ir.VectorType(scalar, width)

        def splat(value):
            return value if width == 1 else _splat(builder, value, width)

        def at(array, index, element):
            return builder.bitcast(builder.gep(array.data, [index]), vector(element).as_pointer())

        f64, i8 = ir.DoubleType(), ir.IntType(8)
        cost = builder.fsub(builder.fsub(splat(base), builder.load(at(scores, builder.add(row, b),
                                                                      f64), align=8)),
                            builder.load(at(pb, b, f64), align=8))
        # max(cost, floor) as Numba computes it: floor if floor > cost, else cost
        cand = builder.select(builder.fcmp_ordered(">", splat(floor), cost), splat(floor), cost)
        old = builder.load(at(label_in, b, f64), align=8)
        free = builder.icmp_unsigned("==", builder.load(at(assigned, builder.add(row, b), i8),
                                                        align=1),
                                     splat(ir.Constant(i8, 0)))
        better = builder.and_(builder.fcmp_ordered("<", cand, old), free)
        builder.store(builder.select(better, cand, old), at(label_out, b, f64), align=8)
        builder.store(builder.select(better, splat(j), builder.load(at(pred_in, b, i64), align=8)),
                      at(pred_out, b, i64), align=8)

    steps = builder.udiv(d, ir.Constant(i64, _RELAX_WIDTH))
    with cgutils.for_range(builder, steps) as loop:
        step(builder.mul(loop.index, ir.Constant(i64, _RELAX_WIDTH)), _RELAX_WIDTH)
    done = builder.mul(steps, ir.Constant(i64, _RELAX_WIDTH))
    with cgutils.for_range(builder, builder.sub(d, done)) as loop:
        step(builder.add(done, loop.index), 1)
    return context.get_dummy_value()


@intrinsic
def relax_into(typingctx, scores, j, assigned, pb, label_in, pred_in, label_out, pred_out,
               base, floor):
    """The flow solver's relaxation of class ``j``'s arcs into all ``d`` buckets (unchecked):
    for every bucket ``b``,

    ``cand = max(base - scores[j, b] - pb[b], floor)``, and where ``cand < label_in[b]`` and
    not ``assigned[j, b]``: ``label_out[b] = cand``, ``pred_out[b] = j``; elsewhere
    ``label_out[b] = label_in[b]``, ``pred_out[b] = pred_in[b]``.

    The same float64 operations, in the same order, as the scalar loop; eight buckets a step
    with a select and a plain store (eight against four: 1.10-1.14x the whole solve at d = 512
    with AVX-512, no change with AVX2 code). The output may be the input (``label_out is
    label_in``, ``pred_out is pred_in``): the flow solver relaxes in place where the target
    has AVX-512 (1.02-1.07x the whole solve on a Zen 5), and from one buffer into another
    elsewhere: the scalar loop written in place became AVX2 masked stores, which AMD's Zen
    cores execute as microcode (1.4 ns a bucket against 0.6-0.7 ns into a second buffer, AMD
    EPYC with AVX2). Entries at ``d`` and beyond are not touched."""
    _check_arrays("relax_into", [
        (scores, 2, types.float64), (assigned, 2, types.boolean), (pb, 1, types.float64),
        (label_in, 1, types.float64), (pred_in, 1, types.int64), (label_out, 1, types.float64),
        (pred_out, 1, types.int64)])
    if not isinstance(j, types.Integer) or not all(isinstance(x, types.Float)
                                                   for x in (base, floor)):
        raise TypeError("relax_into takes an integer class and float base and floor")
    return (types.void(scores, types.int64, assigned, pb, label_in, pred_in, label_out,
                       pred_out, types.float64, types.float64), _relax_codegen)


_KEY_LANES = 8  # int64 keys a step of ``nearest_node``: one AVX-512 register, two AVX2 ones


def _nearest_codegen(context, builder, signature, args, after=False):
    """The codegen of ``nearest_node`` (keys and two chunk masks), ``least_node`` (keys) and,
    with ``after``, ``least_after`` (keys, then the pair to start after): per lane the least
    key and the step where it was first seen, and (with the masks) the least deficit key and
    its step; then the lanes reduced."""
    if after:
        args, after = args[:2], args[2:]
    arrays = [context.make_array(t)(context, builder, a)
              for t, a in zip(signature.args[:len(args) - 1], args[:-1], strict=True)]
    size = args[-1]
    i64 = ir.IntType(64)
    vec = ir.VectorType(i64, _KEY_LANES)
    inf_bits = ir.Constant(vec, [0x7FF0000000000000] * _KEY_LANES)
    zero = ir.Constant(vec, [0] * _KEY_LANES)

    def load(array, start):
        return builder.load(builder.bitcast(builder.gep(array.data, [start]), vec.as_pointer()),
                            align=8)

    def node_of(steps):
        """The node of each lane (step * lanes + lane), given each lane's step."""
        return builder.add(builder.mul(steps, ir.Constant(vec, [_KEY_LANES] * _KEY_LANES)),
                           ir.Constant(vec, list(range(_KEY_LANES))))

    def lanes_of(mask, step):
        """Chunk ``step``'s byte of a mask as eight i1 lanes (bit l is lane l)."""
        byte = builder.load(builder.gep(mask.data, [step]))
        return builder.bitcast(byte, ir.VectorType(ir.IntType(1), _KEY_LANES))

    def lesser(acc, at, value, step):
        """Keep the lesser of each lane of ``acc`` and ``value``, and in ``at`` the step where
        a lane's least was first seen (a strict comparison)."""
        old = builder.load(acc)
        lower = builder.icmp_signed("<", value, old)
        builder.store(builder.select(lower, value, old), acc)
        builder.store(builder.select(lower, step, builder.load(at)), at)

    above = ir.Constant(vec, [2**63 - 1] * _KEY_LANES)  # no key is above it
    least = cgutils.alloca_once_value(builder, above)
    step_of = cgutils.alloca_once_value(builder, zero)
    least_deficit = cgutils.alloca_once_value(builder, above)
    deficit_step_of = cgutils.alloca_once_value(builder, zero)
    steps = builder.udiv(size, ir.Constant(i64, _KEY_LANES))
    with cgutils.for_range(builder, steps) as loop:
        start = builder.mul(loop.index, ir.Constant(i64, _KEY_LANES))
        step = _splat(builder, loop.index, _KEY_LANES)
        key = load(arrays[0], start)
        if len(arrays) == 3:
            key = builder.or_(key, builder.select(lanes_of(arrays[1], loop.index), inf_bits,
                                                  zero))
            lesser(least_deficit, deficit_step_of,
                   builder.or_(key, builder.select(lanes_of(arrays[2], loop.index), zero,
                                                   inf_bits)), step)
        if after:
            # only the (key, node) pairs above (after[0], after[1]): the others masked
            low_key = _splat(builder, after[0], _KEY_LANES)
            later = builder.or_(builder.icmp_signed(">", key, low_key),
                                builder.and_(builder.icmp_signed("==", key, low_key),
                                             builder.icmp_signed(
                                                 ">", node_of(step),
                                                 _splat(builder, after[1], _KEY_LANES))))
            key = builder.select(later, key, above)
        lesser(least, step_of, key, step)

    def reduce(name, value):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [vec]),
                                            f"llvm.vector.reduce.{name}.v{_KEY_LANES}i64")
        return builder.call(fn, [value])

    def first(acc, at):
        """The least key of the lanes and the least index (step * lanes + lane) that holds
        it."""
        lanes = builder.load(acc)
        low = reduce("smin", lanes)
        holds = builder.icmp_signed("==", lanes, _splat(builder, low, _KEY_LANES))
        return low, reduce("umin", builder.select(holds, node_of(builder.load(at)),
                                                   ir.Constant(vec, [-1] * _KEY_LANES)))

    out = list(first(least, step_of))
    if len(arrays) == 3:
        out.extend(first(least_deficit, deficit_step_of))
    return context.make_tuple(builder, signature.return_type, out)


@intrinsic
def nearest_node(typingctx, label_bits, done, deficit, size):
    """The flow solver's selection (unchecked): over the first ``size`` nodes (a multiple of
    eight; ``label_bits`` at least that long, the masks at least ``size // 8``), where a
    node's key is its label's bits, or inf's bits where it is settled, returns ``(near, node,
    bound, target)``: the least key and the first node that holds it, and the least key of a
    deficit node (inf's bits or more where there is none) and the first deficit node that
    holds it. Labels are non-negative doubles, whose int64 bit patterns order like them.
    ``done`` and ``deficit`` are masks of one byte per eight nodes: bit ``l`` of byte ``i``
    is node ``8 * i + l``.

    One pass, eight keys a step: per lane the least key and the step that first held it (a
    strict comparison), then the lanes reduced. It replaced a minimum followed by a search for
    the first node that held it, whose data-dependent exit the branch predictor misses on
    every new problem. The masks are bytes because the solver sets one node's bit at a time:
    a scalar store into an array of int64 flags that the next vector load reads cannot be
    forwarded to it, and the load waited for the store (about 17 ns a selection, AMD EPYC
    Zen 5)."""
    _check_arrays("nearest_node", [(label_bits, 1, types.int64), (done, 1, types.uint8),
                                   (deficit, 1, types.uint8)])
    if not isinstance(size, types.Integer):
        raise TypeError("nearest_node takes an integer size")
    return (types.UniTuple(types.int64, 4)(label_bits, done, deficit, types.int64),
            _nearest_codegen)


@intrinsic
def least_node(typingctx, key_bits, size):
    """``nearest_node`` of keys without masks (unchecked): ``(near, node)``, the least of the
    first ``size`` int64 keys (a multiple of eight; any values) and the first node that holds
    it."""
    _check_arrays("least_node", [(key_bits, 1, types.int64)])
    if not isinstance(size, types.Integer):
        raise TypeError("least_node takes an integer size")
    return types.UniTuple(types.int64, 2)(key_bits, types.int64), _nearest_codegen


@intrinsic
def least_after(typingctx, key_bits, size, key, node):
    """``least_node`` of the ``(key, node)`` pairs after ``(key, node)`` (unchecked): the
    least key and its first node among the nodes whose key is above ``key``, or equal to it
    at an index above ``node``; ``(2**63 - 1, ...)`` where there is none. The next of a
    selection in (key, node) order without masking the ones taken: a scalar store into the
    keys, which the next vector load reads, cannot be forwarded to that load, which then
    waits for it (about 17 ns a selection, AMD EPYC Zen 5)."""
    _check_arrays("least_after", [(key_bits, 1, types.int64)])
    if not all(isinstance(x, types.Integer) for x in (size, key, node)):
        raise TypeError("least_after takes an integer size, key and node")
    return (types.UniTuple(types.int64, 2)(key_bits, types.int64, types.int64, types.int64),
            functools.partial(_nearest_codegen, after=True))


_TOP_LEVELS = 8  # the largest k of ``least_k_lanes`` (qkernels._heap.SMALL_K)


def _transpose8(builder, rows):
    """The columns of eight vectors of eight lanes: ``columns[c]`` lane ``l`` is ``rows[l]``
    lane ``c`` (three stages of two-input shuffles, 24 in all)."""
    def shuffle(a, b, order):
        return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), 8), order))

    pairs = []
    for r in range(0, 8, 2):  # lanes (2i, 2i + 1) of rows r, r + 1: even and odd columns
        pairs.append((shuffle(rows[r], rows[r + 1], [0, 8, 2, 10, 4, 12, 6, 14]),
                      shuffle(rows[r], rows[r + 1], [1, 9, 3, 11, 5, 13, 7, 15])))
    quads = {}  # (rows 0-3 or 4-7, column residue mod 4) -> columns (c, c + 4) of four rows
    for half in range(2):
        (even_a, odd_a), (even_b, odd_b) = pairs[2 * half], pairs[2 * half + 1]
        quads[half, 0] = shuffle(even_a, even_b, [0, 1, 8, 9, 4, 5, 12, 13])
        quads[half, 2] = shuffle(even_a, even_b, [2, 3, 10, 11, 6, 7, 14, 15])
        quads[half, 1] = shuffle(odd_a, odd_b, [0, 1, 8, 9, 4, 5, 12, 13])
        quads[half, 3] = shuffle(odd_a, odd_b, [2, 3, 10, 11, 6, 7, 14, 15])
    columns = [None] * 8
    for c in range(4):
        columns[c] = shuffle(quads[0, c], quads[1, c], [0, 1, 2, 3, 8, 9, 10, 11])
        columns[c + 4] = shuffle(quads[0, c], quads[1, c], [4, 5, 6, 7, 12, 13, 14, 15])
    return columns


def _least_k_codegen(context, builder, signature, args):
    """The codegen of ``least_k_lanes``: one loop for each ``k`` (a switch on it), so that the
    ``k`` sorted lists live in registers."""
    keys = context.make_array(signature.args[0])(context, builder, args[0])
    out = context.make_array(signature.args[2])(context, builder, args[2])
    k = args[1]
    i64 = ir.IntType(64)
    vec = ir.VectorType(i64, 8)
    width = cgutils.unpack_tuple(builder, keys.shape, 2)[1]
    out_width = cgutils.unpack_tuple(builder, out.shape, 2)[1]
    eight = ir.Constant(i64, 8)
    above = ir.Constant(vec, [2**63 - 1] * 8)
    end = builder.append_basic_block("least_k.end")
    switch = builder.switch(k, end)
    for levels in range(1, _TOP_LEVELS + 1):
        block = builder.append_basic_block(f"least_k.{levels}")
        switch.add_case(ir.Constant(i64, levels), block)
        builder.position_at_end(block)
        least = [cgutils.alloca_once_value(builder, above) for _ in range(levels)]
        where = [cgutils.alloca_once_value(builder, ir.Constant(vec, [0] * 8))
                 for _ in range(levels)]
        with cgutils.for_range(builder, builder.udiv(width, eight)) as loop:
            start = builder.mul(loop.index, eight)
            rows = [builder.load(builder.bitcast(
                builder.gep(keys.data, [builder.add(builder.mul(ir.Constant(i64, lane), width),
                                                    start)]), vec.as_pointer()), align=8)
                for lane in range(8)]
            for c, column in enumerate(_transpose8(builder, rows)):
                key = column
                at = _splat(builder, builder.add(start, ir.Constant(i64, c)), 8)
                # insertion into each lane's sorted list: the key goes before the first entry
                # above it (after equal ones: the lower column first), the rest move down one.
                # A key below entry t is below every later one (the list is sorted), so every
                # level compares with the key itself and none waits for the level above it.
                held = [builder.load(least[t]) for t in range(levels)]
                held_at = [builder.load(where[t]) for t in range(levels)]
                lower = [builder.icmp_signed("<", key, held[t]) for t in range(levels)]
                for t in range(levels):
                    new, new_at = key, at
                    if t > 0:  # entry t - 1 moves down where the key went above it
                        new = builder.select(lower[t - 1], held[t - 1], key)
                        new_at = builder.select(lower[t - 1], held_at[t - 1], at)
                    builder.store(builder.select(lower[t], new, held[t]), least[t])
                    builder.store(builder.select(lower[t], new_at, held_at[t]), where[t])
        for t in range(levels):
            columns = builder.load(where[t])
            for lane in range(8):
                index = builder.add(builder.mul(ir.Constant(i64, lane), out_width),
                                    ir.Constant(i64, t))
                builder.store(builder.extract_element(columns, ir.Constant(ir.IntType(32), lane)),
                              builder.gep(out.data, [index]))
        builder.branch(end)
    builder.position_at_end(end)
    return context.get_dummy_value()


@intrinsic
def least_k_lanes(typingctx, keys, k, out):
    """The ``k`` least keys of each of eight rows, in one pass over their columns (unchecked):
    ``keys`` (8, w) int64 with ``w`` a multiple of eight, ``1 <= k <= 8``, and in every row at
    least ``k`` keys below ``2**63 - 1`` (the largest key pads rows and is never picked);
    writes into ``out[l, :k]`` (``out`` (8, >= k) int64) the columns of row ``l``'s ``k``
    least keys, least first, the lower column first among equal keys: what ``least_node`` and
    then ``least_after`` ``k - 1`` times select in one row.

    The rows are the lanes: eight columns are loaded as rows and transposed by shuffles, and
    each column's keys are inserted into the lanes' sorted lists of ``k`` (per level a
    comparison with the key and four selections, no branch). The repeated selection waits for
    a reduction of the lanes at every pick; this pass has none."""
    _check_arrays("least_k_lanes", [(keys, 2, types.int64), (out, 2, types.int64)])
    if not isinstance(k, types.Integer):
        raise TypeError("least_k_lanes takes an integer k")
    return types.none(keys, types.int64, out), _least_k_codegen


# ------------------------------ sorted top-K rows of (distance, row) keys (the table probe)

# a slot of a ranked row that holds no entry: above every key ``rank_key`` makes
RANK_EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)


@intrinsic
def rank_key(typingctx, dist, row):
    """A uint64 that orders like ``(dist, row)`` for a float32 ``dist`` and a row in ``0 ..
    2**32 - 1``: the distance's bits mapped to an unsigned integer of the same order (a
    negative float's bits inverted, a non-negative one's sign bit set) above the row. Zero
    counts as +0.0 and any NaN as +NaN, which ranks after +inf; no key is 0 or
    ``RANK_EMPTY``."""
    if dist != types.float32 or not isinstance(row, types.Integer):
        raise TypeError("rank_key takes a float32 distance and an integer row")

    def codegen(context, builder, signature, args):
        dist, row = args
        i32, i64 = ir.IntType(32), ir.IntType(64)
        f32 = ir.FloatType()
        dist = builder.select(builder.fcmp_ordered("==", dist, ir.Constant(f32, 0.0)),
                              ir.Constant(f32, 0.0), dist)
        dist = builder.select(builder.fcmp_unordered("uno", dist, dist),
                              ir.Constant(f32, float("nan")), dist)
        bits = builder.bitcast(dist, i32)
        negative = builder.icmp_signed("<", bits, ir.Constant(i32, 0))
        mapped = builder.select(negative, builder.not_(bits),
                                builder.or_(bits, ir.Constant(i32, 0x80000000)))
        row = context.cast(builder, row, signature.args[1], types.int64)
        return builder.or_(builder.shl(builder.zext(mapped, i64), ir.Constant(i64, 32)),
                           builder.and_(row, ir.Constant(i64, 0xFFFFFFFF)))

    return types.uint64(dist, row), codegen


@intrinsic
def ranked_distance(typingctx, key):
    """The float32 distance of a key made by ``rank_key`` (the inverse of its mapping)."""
    if key != types.uint64:
        raise TypeError("ranked_distance takes a uint64 key")

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        mapped = builder.trunc(builder.lshr(args[0], ir.Constant(ir.IntType(64), 32)), i32)
        was_negative = builder.icmp_signed(">=", mapped, ir.Constant(i32, 0))
        bits = builder.select(was_negative, builder.not_(mapped),
                              builder.xor(mapped, ir.Constant(i32, 0x80000000)))
        return builder.bitcast(bits, ir.FloatType())

    return types.float32(key), codegen


def _insert_codegen(context, builder, signature, args):
    keys, items = (context.make_array(t)(context, builder, a)
                   for t, a in zip(signature.args[:2], args[:2], strict=True))
    i32, i64 = ir.IntType(32), ir.IntType(64)
    vec = ir.VectorType(i64, _KEY_LANES)
    key = _splat(builder, args[2], _KEY_LANES)
    item = _splat(builder, context.cast(builder, args[3], signature.args[3], types.int64),
                  _KEY_LANES)
    # the previous step's lanes, before they were rewritten: its last lane is the entry just
    # before this step's first (none before the row: 0, below every key)
    zero = ir.Constant(vec, [0] * _KEY_LANES)
    before_keys = cgutils.alloca_once_value(builder, zero)
    before_items = cgutils.alloca_once_value(builder, zero)
    shifted = ir.Constant(ir.VectorType(i32, _KEY_LANES),
                          [_KEY_LANES - 1 + j for j in range(_KEY_LANES)])
    steps = builder.udiv(builder.extract_value(keys.shape, 0), ir.Constant(i64, _KEY_LANES))
    with cgutils.for_range(builder, steps) as loop:
        start = builder.mul(loop.index, ir.Constant(i64, _KEY_LANES))
        at_keys = builder.bitcast(builder.gep(keys.data, [start]), vec.as_pointer())
        at_items = builder.bitcast(builder.gep(items.data, [start]), vec.as_pointer())
        old_keys = builder.load(at_keys, align=8)
        old_items = builder.load(at_items, align=8)
        prev_keys = builder.shuffle_vector(builder.load(before_keys), old_keys, shifted)
        prev_items = builder.shuffle_vector(builder.load(before_items), old_items, shifted)
        # an entry stays where it is below the key; the first one not below it becomes the
        # key; the others take their predecessor's place
        stays = builder.icmp_unsigned("<", old_keys, key)
        lands = builder.icmp_unsigned("<", prev_keys, key)
        builder.store(builder.select(stays, old_keys, builder.select(lands, key, prev_keys)),
                      at_keys, align=8)
        builder.store(builder.select(stays, old_items,
                                     builder.select(lands, item, prev_items)),
                      at_items, align=8)
        builder.store(old_keys, before_keys)
        builder.store(old_items, before_items)
    return context.get_dummy_value()


@intrinsic
def insert_ranked(typingctx, keys, items, key, item):
    """Insert ``key`` (made by ``rank_key``, not already in the row) and its ``item`` into
    a row of keys sorted ascending (unchecked): ``keys`` uint64 and ``items`` int64, both of
    one length, a multiple of eight; the last entry falls off. Empty slots hold
    ``RANK_EMPTY``.

    Eight entries a step without a branch: an entry below the key stays, the first one not
    below it becomes the key, the rest move up one. The table probe calls it only for a key
    below the row's ``K``-th entry (one comparison turns most candidates away); it replaced a
    binary heap on three keys, whose sift-downs cost more than the scan's distances."""
    _check_arrays("insert_ranked", [(keys, 1, types.uint64), (items, 1, types.int64)])
    if key != types.uint64 or not isinstance(item, types.Integer):
        raise TypeError("insert_ranked takes a uint64 key and an integer item")
    return types.none(keys, items, key, item), _insert_codegen


# ------------------------------ 4-bit fast scan (AVX2, AVX-512BW, AVX-512 VBMI and VNNI)


# What the fast-scan kernels need: a 256-bit integer add is one ``vpaddb`` on a ymm register
# only with AVX2, a 512-bit one on a zmm register only with AVX-512BW (``min-legal-vector-width``
# lets LLVM use zmm registers on CPUs that prefer 256-bit vectors); a byte shuffle across the
# whole zmm register is one ``vpermb`` only with AVX-512 VBMI, and a sum of four byte products
# into each 32-bit lane one ``vpdpbusd`` on zmm only with AVX-512 VNNI (the 256-bit AVX-VNNI form
# does not count); and what the Hamming scan runs on: ``llvm.ctpop`` is one ``popcnt`` only with
# POPCNT. Compiled by the target machine Numba compiles for, these functions say what it will
# accept, without ever asking it for an instruction it cannot select (which aborts the
# process): they are plain IR that LLVM lowers to those instructions where it may.
_PROBE_IR = """
define <32 x i8> @probe_avx2(<32 x i8> %a, <32 x i8> %b) #0 {
  %c = add <32 x i8> %a, %b
  ret <32 x i8> %c
}
define <64 x i8> @probe_avx512bw(<64 x i8> %a, <64 x i8> %b) #0 {
  %c = add <64 x i8> %a, %b
  ret <64 x i8> %c
}
define <64 x i8> @probe_avx512vbmi(<64 x i8> %a) #0 {
  %c = shufflevector <64 x i8> %a, <64 x i8> poison, <64 x i32> <ORDER>
  ret <64 x i8> %c
}
define i32 @probe_avx512vnni(<64 x i8> %a, <64 x i8> %b) #0 {
  %za = zext <64 x i8> %a to <64 x i32>
  %sb = sext <64 x i8> %b to <64 x i32>
  %m = mul <64 x i32> %za, %sb
  %c = call i32 @llvm.vector.reduce.add.v64i32(<64 x i32> %m)
  ret i32 %c
}
define i64 @probe_popcnt(i64 %a) {
  %c = call i64 @llvm.ctpop.i64(i64 %a)
  ret i64 %c
}
declare i32 @llvm.vector.reduce.add.v64i32(<64 x i32>)
declare i64 @llvm.ctpop.i64(i64)
attributes #0 = { "min-legal-vector-width"="512" }
"""
# the byte order of a quad of the fast-scan layout that ``_byte_dot_sums`` shuffles into (byte
# 4 i + t from byte 16 t + i); the VBMI probe shuffles the same way
QUAD_ORDER = [16 * (j % 4) + j // 4 for j in range(64)]
_PROBE_IR = _PROBE_IR.replace("ORDER", ", ".join(f"i32 {j}" for j in QUAD_ORDER))
# feature -> (instruction, operand) that its probe compiles to only where the target has it
_PROBE = {"avx2": ("vpaddb", "%ymm"), "avx512bw": ("vpaddb", "%zmm"),
          "avx512vbmi": ("vpermb", "%zmm"), "avx512vnni": ("vpdpbusd", "%zmm"),
          "popcnt": ("popcnt", "")}


def numba_target() -> tuple[str, str]:
    """The CPU name and feature string Numba compiles for (as its JIT codegen chooses them):
    ``NUMBA_CPU_NAME`` or the host's name, and ``NUMBA_CPU_FEATURES`` or the host's features
    (less AVX where ``NUMBA_ENABLE_AVX=0``)."""
    from llvmlite import binding
    from numba.core import codegen, config

    name = config.CPU_NAME or binding.get_host_cpu_name()
    features = (config.CPU_FEATURES if config.CPU_FEATURES is not None
                else codegen.get_host_cpu_features())
    return name, features


@functools.cache
def target_features() -> dict[str, bool]:
    """``{"avx2": ..., "avx512bw": ..., "avx512vbmi": ..., "avx512vnni": ..., "popcnt": ...}``:
    whether the CPU Numba compiles for (``numba_target``) has each, asked once per process of
    LLVM itself (both variables are fixed when Numba starts). A feature string may name some
    features and leave the rest to the CPU name's defaults, and turning one off turns off those
    that imply it; rather than repeat LLVM's rules, the probe functions above are compiled for
    that exact target and their assembly read. Anything that fails here answers False: the
    scalar kernels compile everywhere."""
    from llvmlite import binding

    try:
        binding.initialize_native_target()
        binding.initialize_native_asmprinter()
        name, features = numba_target()
        machine = binding.Target.from_default_triple().create_target_machine(
            cpu=name, features=features, opt=0)
        module = binding.parse_assembly(_PROBE_IR)
        module.verify()
        assembly = machine.emit_assembly(module)
    except Exception:  # an unknown CPU name or feature, a non-x86 machine: no SIMD path
        return dict.fromkeys(_PROBE, False)
    found = {}
    for feature, (instruction, operand) in _PROBE.items():
        body = assembly.split(f"probe_{feature}:", 1)[-1].split("ret", 1)[0]
        found[feature] = any(line.split() and line.split()[0].startswith(instruction)
                             and operand in line for line in body.splitlines())
    return found


def has_avx2() -> bool:
    """Whether Numba compiles for a CPU with AVX2, so that ``fastscan_block`` can be
    compiled."""
    return target_features()["avx2"]


def has_avx512bw() -> bool:
    """Whether Numba compiles for a CPU with AVX-512BW: the fast-scan kernels then shuffle two
    pairs of sub-quantizers per 512-bit ``vpshufb``."""
    return target_features()["avx512bw"]


def has_byte_dots() -> bool:
    """Whether Numba compiles for a CPU with AVX-512BW, VBMI and VNNI: the fast-scan kernels
    then look up four sub-quantizers per ``vpermb`` and add each vector's four entries into a
    32-bit lane by one ``vpdpbusd``."""
    found = target_features()
    return found["avx512bw"] and found["avx512vbmi"] and found["avx512vnni"]


FASTSCAN_BLOCK = 32  # database vectors per block of the fast-scan layout


_V16I16 = ir.VectorType(ir.IntType(16), 16)
_V32I16 = ir.VectorType(ir.IntType(16), 32)


def _accumulate(builder, codes_data, start, tables, pairs):
    """The 32 uint16 sums of a block, in vector order, for each query whose uint8 tables start
    at ``tables[q]`` (i8 pointers), over ``pairs`` pairs of sub-quantizers. Per half of the
    block (vectors 0-15 by the low nibbles, 16-31 by the high ones) four accumulators: the sums
    of the even bytes plus 256 x the odd ones (wrapping) and the sums of the odd bytes, two adds
    and a shift per shuffle instead of widening every byte (``_block_sums`` separates them).

    Where the CPU has AVX-512BW (decided when the kernel is compiled; Numba's cache is per CPU)
    two pairs go per 512-bit shuffle (their 64 code bytes and 64 table bytes are contiguous, and
    ``vpshufb`` works per 128-bit lane as the 256-bit one does), an odd last pair through the
    256-bit loop into the low halves of the same accumulators, and ``_wide_block_sums`` reduces
    the four 512-bit accumulators at their full width. Where it also has VBMI and VNNI,
    ``_byte_dot_sums`` instead."""
    i64 = ir.IntType(64)
    if has_byte_dots():
        return _byte_dot_sums(builder, codes_data, start, tables, pairs)
    if not has_avx512bw():
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(_V16I16, [0] * 16))
                 for _ in range(4)] for _ in tables]
        _shuffle_loop(builder, codes_data, start, tables, ir.Constant(i64, 0), pairs, 32, accs,
                      16)
        return [_block_sums(builder, [builder.load(a) for a in query]) for query in accs]
    wide = builder.udiv(pairs, ir.Constant(i64, 2))
    accs = [[cgutils.alloca_once_value(builder, ir.Constant(_V32I16, [0] * 32))
             for _ in range(4)] for _ in tables]
    _shuffle_loop(builder, codes_data, start, tables, ir.Constant(i64, 0), wide, 64, accs, 32)
    _shuffle_loop(builder, codes_data, start, tables, builder.mul(wide, ir.Constant(i64, 64)),
                  builder.sub(pairs, builder.mul(wide, ir.Constant(i64, 2))), 32, accs, 32)
    return [_wide_block_sums(builder, [builder.load(a) for a in query]) for query in accs]


def _byte_dot_sums(builder, codes_data, start, tables, pairs):
    """``_accumulate`` by whole-register byte look-ups (AVX-512 VBMI and VNNI): four
    sub-quantizers (a quad: two pairs, 64 code bytes and 64 table bytes) per step. The quad's
    bytes are shuffled once (``QUAD_ORDER``) so that byte ``4 i + t`` holds sub-quantizer
    ``4 s + t``'s codes of vectors ``i`` (low nibble) and ``16 + i`` (high nibble); each nibble
    plus ``16 t`` indexes the quad's 64 table bytes (``vpermb``), and ``vpdpbusd`` with a
    multiplier of 1 adds each vector's four entries into its 32-bit lane. Two accumulators a
    query (vectors 0-15 and 16-31), no per-block reduction but their low halves. An odd last
    pair is a quad whose second pair has codes and tables of zeros."""
    i8, i16, i32, i64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
    v64i8 = ir.VectorType(i8, 64)
    v32i8 = ir.VectorType(i8, 32)
    v16i32 = ir.VectorType(i32, 16)
    permb = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(v64i8, [v64i8, v64i8]), "llvm.x86.avx512.permvar.qi.512")
    dot = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(v16i32, [v16i32, v16i32, v16i32]),
        "llvm.x86.avx512.vpdpbusd.512")
    order = ir.Constant(ir.VectorType(i32, 64), QUAD_ORDER)
    nibble = ir.Constant(v64i8, [0x0F] * 64)
    four = ir.Constant(v64i8, [4] * 64)
    offsets = ir.Constant(v64i8, [16 * (j % 4) for j in range(64)])
    ones = ir.Constant(v16i32, [0x01010101] * 16)
    widen = ir.Constant(ir.VectorType(i32, 64), list(range(64)))
    zeros = ir.Constant(v32i8, [0] * 32)
    accs = [[cgutils.alloca_once_value(builder, ir.Constant(v16i32, [0] * 16))
             for _ in range(2)] for _ in tables]

    def step(packed, load_table):
        packed = builder.shuffle_vector(packed, packed, order)
        indexes = (builder.or_(builder.and_(packed, nibble), offsets),
                   builder.or_(builder.and_(builder.lshr(packed, four), nibble), offsets))
        for q, base in enumerate(tables):
            table = load_table(base)
            for half, index in enumerate(indexes):
                looked = builder.bitcast(builder.call(permb, [table, index]), v16i32)
                acc = accs[q][half]
                builder.store(builder.call(dot, [builder.load(acc), looked, ones]), acc)

    def load(pointer, vector):
        return builder.load(builder.bitcast(pointer, vector.as_pointer()), align=1)

    quads = builder.udiv(pairs, ir.Constant(i64, 2))
    with cgutils.for_range(builder, quads) as loop:
        offset = builder.mul(loop.index, ir.Constant(i64, 64))
        step(load(builder.gep(codes_data, [builder.add(start, offset)]), v64i8),
             lambda base: load(builder.gep(base, [offset]), v64i8))
    offset = builder.mul(quads, ir.Constant(i64, 64))
    odd = builder.icmp_unsigned("!=", builder.mul(quads, ir.Constant(i64, 2)), pairs)
    with builder.if_then(odd, likely=False):
        def half_quad(pointer):
            return builder.shuffle_vector(load(pointer, v32i8), zeros, widen)
        step(half_quad(builder.gep(codes_data, [builder.add(start, offset)])),
             lambda base: half_quad(builder.gep(base, [offset])))
    # the sums (below 65536) are the low halves of the 32-bit lanes
    low = ir.Constant(ir.VectorType(i32, 32), list(range(0, 64, 2)))
    v32i16 = ir.VectorType(i16, 32)
    return [builder.shuffle_vector(builder.bitcast(builder.load(first), v32i16),
                                   builder.bitcast(builder.load(second), v32i16), low)
            for first, second in accs]


def _shuffle_loop(builder, codes_data, start, tables, first, count, width, accs, lanes):
    """``count`` steps of ``width`` bytes (32: one pair, ``vpshufb`` on 256 bits; 64: two pairs,
    on 512 bits) from byte ``first`` of the block's codes and tables, added into ``accs``
    of ``lanes`` uint16 (a 256-bit step into 32 lanes goes to their low half)."""
    i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
    bytes_ = ir.VectorType(i8, width)
    words = ir.VectorType(ir.IntType(16), width // 2)
    name = "llvm.x86.avx2.pshuf.b" if width == 32 else "llvm.x86.avx512.pshuf.b.512"
    pshufb = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(bytes_, [bytes_, bytes_]), name)
    nibble = ir.Constant(bytes_, [0x0F] * width)
    four = ir.Constant(bytes_, [4] * width)
    eight = ir.Constant(words, [8] * (width // 2))
    widen = ir.Constant(ir.VectorType(i32, lanes), list(range(lanes)))
    zeros = ir.Constant(words, [0] * (width // 2))

    def add_to(acc, value):
        if lanes != width // 2:  # zero-extended into the low half
            value = builder.shuffle_vector(value, zeros, widen)
        builder.store(builder.add(builder.load(acc), value), acc)

    with cgutils.for_range(builder, count) as loop:
        offset = builder.add(first, builder.mul(loop.index, ir.Constant(i64, width)))
        packed = builder.load(builder.bitcast(
            builder.gep(codes_data, [builder.add(start, offset)]), bytes_.as_pointer()), align=1)
        indexes = (builder.and_(packed, nibble),
                   builder.and_(builder.lshr(packed, four), nibble))
        for q, base in enumerate(tables):
            table = builder.load(builder.bitcast(builder.gep(base, [offset]),
                                                 bytes_.as_pointer()), align=1)
            for half, index in enumerate(indexes):
                looked = builder.bitcast(builder.call(pshufb, [table, index]), words)
                add_to(accs[q][2 * half], looked)
                add_to(accs[q][2 * half + 1], builder.lshr(looked, eight))


def _block_sums(builder, accs):
    """The 32 uint16 sums of a block, in vector order, from its four 256-bit accumulators."""
    i32 = ir.IntType(32)
    eight = ir.Constant(ir.VectorType(ir.IntType(16), 16), [8] * 16)

    def lanes(v, picks):
        return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, len(picks)), picks))

    halves = []
    for half in range(2):
        odd = accs[2 * half + 1]
        even = builder.sub(accs[2 * half], builder.shl(odd, eight))
        # u16 lane j < 8 holds byte 2j (sub-quantizer 2p, vector 2j) and lane 8 + j byte
        # 16 + 2j (sub-quantizer 2p + 1, the same vector): add the two, then interleave
        sums = [builder.add(lanes(v, list(range(8))), lanes(v, list(range(8, 16))))
                for v in (even, odd)]
        order = [x for j in range(8) for x in (j, 8 + j)]
        halves.append(builder.shuffle_vector(sums[0], sums[1],
                                             ir.Constant(ir.VectorType(i32, 16), order)))
    return builder.shuffle_vector(halves[0], halves[1],
                                  ir.Constant(ir.VectorType(i32, 32), list(range(32))))


def _wide_block_sums(builder, accs):
    """``_block_sums`` of four 512-bit accumulators (pair ``2s`` in the low 256 bits, ``2s + 1``
    in the high ones) without narrowing them first. Each 128-bit chunk holds 8 lanes to add to
    the same chunk of the three others (the two sub-quantizers of a pair, the two pairs): two
    rounds of chunk shuffles and adds sum them for all four accumulators at once, and the last
    round's shuffles put the 32 sums in vector order."""
    i32 = ir.IntType(32)
    eight = ir.Constant(_V32I16, [8] * 32)

    def pick(a, b, picks):
        return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(i32, len(picks)),
                                                         picks))

    def chunks(*which):  # lanes of chunks ``which`` of (a, b): b's chunk c is chunk 4 + c
        return [8 * c + j for c in which for j in range(8)]

    parts = []  # even bytes then odd bytes, low nibbles (vectors 0-15) then high ones (16-31)
    for half in range(2):
        odd = accs[2 * half + 1]
        parts += [builder.sub(accs[2 * half], builder.shl(odd, eight)), odd]
    # per part, chunks 0 + 2 and 1 + 3 (the two pairs); two parts per vector
    folded = [builder.add(pick(a, b, chunks(0, 1, 4, 5)), pick(a, b, chunks(2, 3, 6, 7)))
              for a, b in (parts[:2], parts[2:])]
    # folded[h] = [even c0, even c1, odd c0, odd c1] of half h: lane j of chunk 0 + chunk 1
    # is the sum of vector 16 h + 2 j (even) or 16 h + 2 j + 1 (odd); pick them in that order
    low, high = [], []
    for v in range(32):
        h, j, parity = v // 16, (v % 16) // 2, v % 2
        at = 32 * h + 16 * parity + j
        low.append(at)
        high.append(at + 8)
    return builder.add(pick(folded[0], folded[1], low), pick(folded[0], folded[1], high))


def _store_below(builder, dist, out_ptr, threshold):
    """Store the 32 sums at ``out_ptr``; the int64 mask of those below ``threshold``."""
    i16, i32 = ir.IntType(16), ir.IntType(32)
    v32i16 = ir.VectorType(i16, 32)
    builder.store(dist, builder.bitcast(out_ptr, v32i16.as_pointer()), align=2)
    limit = _splat(builder, builder.trunc(threshold, i16), 32)
    below = builder.bitcast(builder.icmp_unsigned("<", dist, limit), i32)
    return builder.zext(below, ir.IntType(64))


@intrinsic
def fastscan_block(typingctx, codes, start, lut, threshold, out):
    """One block of the 4-bit fast-scan layout by byte shuffles (AVX2 ``vpshufb``; unchecked).

    ``codes[start:start + len(lut)]`` holds 32 vectors' codes for ``len(lut) // 32`` pairs of
    sub-quantizers: per pair 32 bytes, byte ``i < 16`` the codes of sub-quantizer ``2p`` of
    vectors ``i`` (low nibble) and ``16 + i`` (high nibble), byte ``16 + i`` those of
    ``2p + 1``. ``lut`` holds per pair the two uint8 tables of 16 entries. Writes the 32 uint16
    sums to ``out[:32]`` (exact while they stay below 65536: at most 257 uint8 entries) and
    returns the int64 bit mask of the vectors whose sum is below ``threshold`` (0..65535).
    """
    _check_arrays("fastscan_block", [(codes, 1, types.uint8), (lut, 1, types.uint8),
                                       (out, 1, types.uint16)])
    if start != types.int64 or threshold != types.int64:
        raise TypeError("fastscan_block takes an int64 start and threshold")

    def codegen(context, builder, signature, args):
        arrays = [context.make_array(t)(context, builder, a)
                  for t, a in zip(signature.args, args, strict=True) if isinstance(t, types.Array)]
        codes_, lut_, out_ = arrays
        stride = cgutils.unpack_tuple(builder, lut_.shape, 1)[0]
        pairs = builder.udiv(stride, ir.Constant(stride.type, 32))
        sums = _accumulate(builder, codes_.data, args[1], [lut_.data], pairs)[0]
        return _store_below(builder, sums, out_.data, args[3])

    return types.int64(codes, start, lut, threshold, out), codegen


def _fastscan_group(count):
    """``fastscan_block`` for ``count`` queries at once (each block's codes loaded and split
    into nibbles once): ``luts`` ``(count, P * 32)``, ``thresholds`` ``(count,)`` int64; the
    sums into ``out`` ``(count, 32)`` and the masks into ``masks`` ``(count,)``; returns their
    union."""
    name = f"fastscan_group{count}"

    def typer(typingctx, codes, start, luts, thresholds, out, masks):
        _check_arrays(name, [(codes, 1, types.uint8), (luts, 2, types.uint8),
                               (thresholds, 1, types.int64), (out, 2, types.uint16),
                               (masks, 1, types.int64)])
        if start != types.int64:
            raise TypeError(f"{name} takes an int64 start")

        def codegen(context, builder, signature, args):
            codes_, luts_, thr_, out_, masks_ = [
                context.make_array(t)(context, builder, a)
                for t, a in zip(signature.args, args, strict=True)
                if isinstance(t, types.Array)]
            i64 = ir.IntType(64)
            stride = cgutils.unpack_tuple(builder, luts_.shape, 2)[1]
            pairs = builder.udiv(stride, ir.Constant(i64, 32))
            tables = [builder.gep(luts_.data, [builder.mul(ir.Constant(i64, q), stride)])
                      for q in range(count)]
            union = ir.Constant(i64, 0)
            for q, sums in enumerate(_accumulate(builder, codes_.data, args[1], tables, pairs)):
                at = ir.Constant(i64, q)
                row = builder.gep(out_.data, [builder.mul(at, ir.Constant(i64, 32))])
                mask = _store_below(builder, sums, row,
                                    builder.load(builder.gep(thr_.data, [at])))
                builder.store(mask, builder.gep(masks_.data, [at]))
                union = builder.or_(union, mask)
            return union

        return types.int64(codes, start, luts, thresholds, out, masks), codegen

    typer.__name__ = typer.__qualname__ = name
    typer.__doc__ = _fastscan_group.__doc__.replace("``count``", str(count))
    return intrinsic(typer)


# three queries per pass with AVX2 (16 registers: their 12 accumulators fit beside the codes'
# nibbles and a table; four queries' 16 spill), four with AVX-512 (32 registers)
fastscan_group3 = _fastscan_group(3)
fastscan_group4 = _fastscan_group(4)
