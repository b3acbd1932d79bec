"""Small LLVM intrinsics for Numba kernels: float32 distances in eight fixed lanes, popcount.

Numba does not vectorise a float reduction unless it may reorder the sum (fastmath), and then
the order depends on the compiler and the CPU. These intrinsics emit the vector code directly
with an order that is fixed by construction: coordinate ``j`` is accumulated in lane ``j % 8``
(the tail beyond the last full block of eight in lanes ``0, 1, ...``), each lane in increasing
``j``, and the lanes are summed as ``((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))``. No
fused multiply-add is formed. The result is the same on every CPU, and tests/reference.py
repeats it with plain float32 operations.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["dot_f32", "popcount64", "prefetch", "sq_l2_f32"]

_LANES = 8


def _lanes_codegen(kind: str):
    def codegen(context, builder, signature, args):
        query_type, row_type = signature.args
        query = context.make_array(query_type)(context, builder, args[0])
        row = context.make_array(row_type)(context, builder, args[1])
        n = cgutils.unpack_tuple(builder, query.shape, 1)[0]
        f32 = ir.FloatType()
        vec = ir.VectorType(f32, _LANES)
        acc = cgutils.alloca_once_value(builder, ir.Constant(vec, [0.0] * _LANES))
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
            rv = builder.load(builder.bitcast(builder.gep(row.data, [start]),
                                              vec.as_pointer()), align=4)
            builder.store(builder.fadd(builder.load(acc), term(qv, rv)), acc)

        main = builder.mul(blocks, ir.Constant(n.type, _LANES))
        tail = builder.sub(n, main)
        with cgutils.for_range(builder, tail) as loop:
            j = builder.add(main, loop.index)
            qs = builder.load(builder.gep(query.data, [j]))
            rs = builder.load(builder.gep(row.data, [j]))
            lanes = builder.load(acc)
            lane = builder.trunc(loop.index, ir.IntType(32))
            updated = builder.fadd(builder.extract_element(lanes, lane), term(qs, rs))
            builder.store(builder.insert_element(lanes, updated, lane), acc)

        lanes = builder.load(acc)
        part = [builder.extract_element(lanes, ir.Constant(ir.IntType(32), i))
                for i in range(_LANES)]
        low = builder.fadd(builder.fadd(part[0], part[1]), builder.fadd(part[2], part[3]))
        high = builder.fadd(builder.fadd(part[4], part[5]), builder.fadd(part[6], part[7]))
        return builder.fadd(low, high)

    return codegen


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
