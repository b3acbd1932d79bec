"""The CUDA side: RawKernels from ``qkernels/cuda/*.cu``, compiled by NVRTC through cupy on
first use (never at import) and cached per device, launched on torch's current stream.

Every GPU kernel has a CPU twin and two parity tests: marked ``gpu`` (tests/test_gpu.py, on a
device) and ``emulated`` (tests/test_emulated.py: the kernel compiled as C++ and run on the CPU
under an emulation of the CUDA model, with the launch configuration computed here); the map
(``.cu`` kernel: Numba twin):

    flow.cu     solve_batch                         flow/_flat_cpu.py solve_batch
    hamming.cu  topk_by_query                       index/_hamming_cpu.py topk_by_query
    table.cu    probe (passes 1-5 fused)            index/_table_cpu.py plan_probes ... merge_ranked
    pq.cu       distance_tables                     index/_pq_cpu.py distance_tables
                scan_by_query_u8, scan_by_query_u16 index/_pq_cpu.py scan_by_query

The kernels' fixed limits (per-thread list lengths, shared-memory arrays) are defined once, in
``LIMITS``, and passed to the sources as ``-D`` defines; the Python side reads the same values to
decide when a search falls back to the CPU.

Without cupy or a device the public functions keep running on the CPU; a GPU array is then
refused with a message saying what to install.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

from . import config

__all__ = ["LIMITS", "array_module", "available", "block_size", "compile_options", "kernel",
           "launch", "mirrored", "require"]

# per source (qkernels/cuda/<name>.cu): the -D defines it is compiled with
LIMITS: dict[str, dict[str, int]] = {
    "flow": {},
    # the histogram of distances (bits + 1 counts), topk keys, one count per thread
    "hamming": {"MAX_BITS": 1024, "MAX_TOPK": 1024, "MAX_THREADS": 1024},
    "table": {"MAX_LOCAL_TOPK": 64},  # each thread's best topk keys, in registers
    "pq": {"MAX_LOCAL_TOPK": 128},
}
MERGE_KEYS = 4096  # the keys a block bitonic-sorts in shared memory (32 KB)


@functools.cache
def available() -> bool:
    """True when cupy imports and sees at least one CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def require(what: str) -> None:
    """Refuse GPU input clearly when there is no GPU path."""
    if not available():
        raise RuntimeError(
            f"{what} got GPU arrays, but cupy with a CUDA device is not available: install "
            "qkernels[gpu] (cupy with its CUDA toolkit), or pass CPU arrays"
        )


def _cuda_dir():
    return resources.files("qkernels").joinpath("cuda")


@functools.cache
def _module(name: str, device: int):
    import cupy

    source = _cuda_dir().joinpath(f"{name}.cu").read_text()
    with cupy.cuda.Device(device):  # the sources include common.cuh from their own folder
        return cupy.RawModule(code=source, options=compile_options(name))


def compile_options(source: str) -> tuple[str, ...]:
    """The NVRTC/nvcc options of ``qkernels/cuda/<source>.cu``: C++17, the folder of
    common.cuh, and its LIMITS as ``-D`` defines (the same for the tests that compile them)."""
    defines = tuple(f"-D{name}={value}" for name, value in LIMITS[source].items())
    return ("-std=c++17", f"-I{_cuda_dir()}", *defines)


def kernel(source: str, function: str):
    """The compiled ``function`` of ``qkernels/cuda/<source>.cu`` on the current device."""
    import cupy

    return _module(source, cupy.cuda.Device().id).get_function(function)


def array_module(*arrays: Any):
    """cupy, or numpy when every array is a numpy array: the launch code of the GPU twins is
    written against this module so that the tests' CPU emulation of the kernels
    (tests/emulation.py, which takes the place of :func:`launch`) runs the same code, with the
    same launch configuration, on numpy arrays."""
    import numpy

    if all(isinstance(a, numpy.ndarray) for a in arrays):
        return numpy
    import cupy

    return cupy


def block_size(limit: int | None = None) -> int:
    """Threads per block from ``qk.config`` (a multiple of 32), at most ``limit``."""
    threads = config.get("GPU_THREADS_PER_BLOCK")
    return threads if limit is None else min(threads, limit)


def launch(source: str, function: str, grid: int, block: int, args: tuple[Any, ...],
           shared_mem: int = 0) -> None:
    """Launch a kernel (on the current cupy stream: wrap calls in ``_arrays.torch_stream``)."""
    if grid == 0:
        return
    kernel(source, function)((grid,), (block,), args, shared_mem=shared_mem)


def mirrored(owner: Any, sources: tuple[Any, ...], build):
    """``build()``, the device copy of host ``sources`` on the current device, kept on
    ``owner`` and made again only when one of ``sources`` is another object (a refit assigns
    new arrays) or, for a torch tensor, was changed in place."""
    import cupy

    device = cupy.cuda.Device().id
    token = tuple((id(a), getattr(a, "_version", 0)) for a in sources)
    mirrors = owner.__dict__.setdefault("_device_mirrors", {})
    kept = mirrors.get(device)
    if kept is not None and kept[0] == token and all(a is b for a, b in zip(kept[1], sources,
                                                                            strict=True)):
        return kept[2]
    value = build()
    mirrors[device] = (token, sources, value)
    return value
