"""Software prefetch for numba kernels: ``prefetch(array, i)`` and ``prefetch2(array, i, j)`` ask the CPU to
start loading the cache line holding that element (LLVM's ``llvm.prefetch``, read, keep in all cache
levels) and return at once. A kernel that reads scattered elements one after another waits out each cache
miss in turn; asking for the elements some iterations ahead lets those misses overlap. Pure: no I/O."""

from __future__ import annotations

from typing import Any

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _prefetch_codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
    aryty = signature.args[0]
    array = context.make_array(aryty)(context, builder, args[0])
    indices = [context.cast(builder, v, t, types.intp) for v, t in zip(args[1:], signature.args[1:], strict=True)]
    # No bounds check: a prefetch of any address is harmless (it never faults), and callers stay in bounds.
    pointer = cgutils.get_item_pointer(context, builder, aryty, array, indices)
    byte_pointer = ir.IntType(8).as_pointer()
    i32 = ir.IntType(32)
    function = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]), "llvm.prefetch.p0")
    # (address, read, locality 3: keep in every level, data cache)
    builder.call(function, [builder.bitcast(pointer, byte_pointer), ir.Constant(i32, 0), ir.Constant(i32, 3),
                            ir.Constant(i32, 1)])
    return context.get_dummy_value()


@intrinsic
def prefetch(typingctx: Any, array: Any, i: Any) -> Any:
    """Start loading ``array[i]`` (a 1-d array) into the cache."""
    return types.void(array, i), _prefetch_codegen


@intrinsic
def prefetch2(typingctx: Any, array: Any, i: Any, j: Any) -> Any:
    """Start loading ``array[i, j]`` (a 2-d array) into the cache."""
    return types.void(array, i, j), _prefetch_codegen
