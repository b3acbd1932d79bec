"""Run the CUDA kernels (qkernels/cuda/*.cu) on the CPU: each source compiled unchanged as C++20
with g++ against tests/cuda_emulation/cuda_emulation.h, and launched through ctypes with the
grid, block, dynamic shared memory and arguments that qkernels' own launch code computes
(``launch`` has the signature of ``qkernels._gpu.launch``; the tests put it in its place and
call the GPU twins with numpy arrays).

Every launch checks its arguments against the kernel's C++ signature (dtype of each array, C
order, the exact integer width of each scalar), so a launch that would pass an int64 where the
kernel reads an int fails here as it would misbehave on a GPU. A barrier that not every
thread of a block reaches fails the launch after ``TIMEOUT_S`` (``Deadlock``), never a hang.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from qkernels import _gpu

HEADER = Path(__file__).parent / "cuda_emulation" / "cuda_emulation.h"
CUDA = Path(_gpu.__file__).parent / "cuda"
TIMEOUT_S = 30.0
_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(')
# Itanium type codes of the kernels' parameters -> numpy dtypes
_CODES = {"f": np.float32, "d": np.float64, "i": np.int32, "j": np.uint32, "x": np.int64,
          "l": np.int64, "y": np.uint64, "m": np.uint64, "h": np.uint8, "t": np.uint16,
          "s": np.int16, "a": np.int8}
_CTYPES = {np.float32: ctypes.c_float, np.float64: ctypes.c_double, np.int32: ctypes.c_int32,
           np.uint32: ctypes.c_uint32, np.int64: ctypes.c_int64, np.uint64: ctypes.c_uint64,
           np.uint8: ctypes.c_uint8, np.uint16: ctypes.c_uint16, np.int16: ctypes.c_int16,
           np.int8: ctypes.c_int8}


class Deadlock(AssertionError):
    """A __syncthreads() that not every thread of the block reached."""


class LaunchError(AssertionError):
    """A launch whose arguments do not match the kernel, or a kernel that failed."""


def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


def kernels(source: str) -> list[str]:
    """The ``extern "C" __global__`` kernels of ``qkernels/cuda/<source>.cu``."""
    return kernels_of((CUDA / f"{source}.cu").read_text())


def kernels_of(code: str) -> list[str]:
    """The ``extern "C" __global__`` kernels of CUDA source text."""
    return _KERNEL.findall(code)


def sources() -> list[str]:
    return sorted(p.stem for p in CUDA.glob("*.cu"))


@functools.cache
def library(source: str, sanitize: str | None = None) -> ctypes.CDLL:
    """``qkernels/cuda/<source>.cu`` compiled for the emulation, with the ``-D`` defines of its
    real compilation (``_gpu.compile_options``). ``sanitize="thread"``: for ThreadSanitizer."""
    defines = [o for o in _gpu.compile_options(source) if o.startswith("-D")]
    return _build(f'#include "{CUDA / (source + ".cu")}"\n', kernels(source), defines,
                  sanitize, source)


def custom_library(code: str, names: list[str], sanitize: str | None = None) -> ctypes.CDLL:
    """A kernel written in the test (the harness' own tests), compiled like the real ones."""
    return _build(code, names, [], sanitize, "custom")


def _build(code: str, names: list[str], defines: list[str], sanitize: str | None,
           label: str) -> ctypes.CDLL:
    """Compile (cached on disk by the hash of the sources and flags) and load."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("the CUDA emulation needs g++ (or $CXX)")
    unit = (f'#include "{HEADER}"\n{code}\n'
            + "".join(f"QK_EXPORT({name})\n" for name in names))
    flags = ["-std=c++20", "-O2", "-g", "-shared", "-fPIC", "-pthread", "-ffp-contract=off",
             f"-I{CUDA}", *defines]
    if sanitize:
        flags.append(f"-fsanitize={sanitize}")
    texts = [unit, HEADER.read_text(), *(p.read_text() for p in sorted(CUDA.iterdir())),
             " ".join(flags)]
    key = hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"qkernels-emulation-{os.getuid()}"
    folder.mkdir(exist_ok=True)
    path = folder / f"{label}-{sanitize or 'plain'}-{key}.so"
    if not path.exists():
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        done = subprocess.run([cxx, *flags, "-x", "c++", "-", "-o", str(partial)], input=unit,
                              text=True, capture_output=True)
        if done.returncode:
            raise RuntimeError(f"g++ could not compile {label} for the emulation:\n"
                               f"{done.stderr[-4000:]}")
        os.replace(partial, path)
    return ctypes.CDLL(str(path))


def _signature(lib: ctypes.CDLL, function: str) -> list[str]:
    getter = getattr(lib, f"qk_signature_{function}")
    getter.restype = ctypes.c_char_p
    return getter().decode().split(",")[:-1]


def _holder(code: str, value: Any, position: int, function: str):
    """The ctypes value that a kernel parameter of type ``code`` reads, after checking that
    ``value`` is what the kernel expects there."""
    where = f"{function}: argument {position}"
    if code.startswith("P"):
        base = code.lstrip("PrVK")  # pointer, restrict, volatile, const
        if not isinstance(value, np.ndarray):
            raise LaunchError(f"{where} must be an array ({code}), got {type(value).__name__}")
        if value.dtype != np.dtype(_CODES[base]):
            raise LaunchError(f"{where} must be {np.dtype(_CODES[base])}, got {value.dtype}")
        if not value.flags.c_contiguous:
            raise LaunchError(f"{where} must be C-contiguous")
        return ctypes.c_void_p(value.ctypes.data)
    if isinstance(value, np.ndarray) or not isinstance(value, np.generic):
        raise LaunchError(f"{where} must be a numpy scalar of {np.dtype(_CODES[code])} (as "
                          f"cupy.int32(...)), got {type(value).__name__}")
    if value.dtype != np.dtype(_CODES[code]):
        raise LaunchError(f"{where} must be {np.dtype(_CODES[code])}, got {value.dtype}")
    return _CTYPES[_CODES[code]](value.item())


def launch(source: str, function: str, grid: int, block: int, args: tuple[Any, ...],
           shared_mem: int = 0, *, sanitize: str | None = None) -> None:
    """``qkernels._gpu.launch`` on the CPU: the kernel run block by block, one thread per CUDA
    thread, on numpy arrays."""
    if grid == 0:
        return
    launch_library(library(source, sanitize), function, grid, block, args, shared_mem)


def launch_library(lib: ctypes.CDLL, function: str, grid: int, block: int,
                   args: tuple[Any, ...], shared_mem: int = 0) -> None:
    """Launch ``function`` of a library made by :func:`library` or :func:`custom_library`."""
    if not 1 <= block <= 1024:
        raise LaunchError(f"{function}: {block} threads per block (CUDA allows 1..1024)")
    if shared_mem > 227 * 1024:
        raise LaunchError(f"{function}: {shared_mem} bytes of dynamic shared memory (an H100 "
                          "block has at most 227 KB)")
    codes = _signature(lib, function)
    if len(codes) != len(args):
        raise LaunchError(f"{function} takes {len(codes)} arguments, the launch passes "
                          f"{len(args)}")
    holders = [_holder(c, a, i, function) for i, (c, a) in enumerate(zip(codes, args,
                                                                           strict=True))]
    params = (ctypes.c_void_p * len(holders))(
        *[ctypes.cast(ctypes.pointer(h), ctypes.c_void_p) for h in holders])
    run = getattr(lib, f"qk_launch_{function}")
    run.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_size_t, ctypes.c_void_p,
                    ctypes.c_double]
    run.restype = ctypes.c_int
    status = run(grid, block, shared_mem, params, TIMEOUT_S)
    if status == 1:
        raise Deadlock(f"{function}: a __syncthreads() was not reached by every thread of a "
                       f"block within {TIMEOUT_S:.0f} s (grid {grid}, block {block})")
    if status == 3:
        raise LaunchError(f"{function}: a thread was still running {2 * TIMEOUT_S:.0f} s after "
                          "the last other thread of its block finished (an endless loop?); it "
                          "is left running")
    if status:
        raise LaunchError(f"{function} failed (status {status})")
