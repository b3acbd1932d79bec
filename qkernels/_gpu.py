"""The CUDA side: RawKernels from ``qkernels/cuda/*.cu``, compiled by NVRTC through cupy on
first use (never at import) and cached per device, launched on torch's current stream.

Every GPU kernel has a CPU twin and a parity test marked ``gpu`` (tests/test_gpu.py); the names
differ, so here is the map (``.cu`` kernel: Numba twin):

    flow.cu         solve_batch                  flow/_cpu.py solve_batch
    hamming.cu      hamming_topk                 index/_hamming_cpu.py topk_by_query
    table_probe.cu  probe                        index/_table_cpu.py plan_probes ... merge_heaps
    pq_scan.cu      pq_distance_tables           index/_pq_cpu.py distance_tables
                    pq_scan_u8, pq_scan_u16      index/_pq_cpu.py scan_by_query

Without cupy or a device the public functions keep running on the CPU; a GPU array is then
refused with a message saying what to install.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

from . import config

__all__ = ["available", "block_size", "kernel", "require"]


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
        return cupy.RawModule(code=source, options=("-std=c++17", f"-I{_cuda_dir()}"))


def kernel(source: str, function: str):
    """The compiled ``function`` of ``qkernels/cuda/<source>.cu`` on the current device."""
    import cupy

    return _module(source, cupy.cuda.Device().id).get_function(function)


def block_size(limit: int | None = None) -> int:
    """Threads per block from ``qk.config`` (a multiple of 32), at most ``limit``."""
    threads = int(config.GPU_THREADS_PER_BLOCK)
    if threads < 32 or threads % 32 or threads > 1024:
        raise ValueError("qk.config.GPU_THREADS_PER_BLOCK must be a multiple of 32 in 32..1024, "
                         f"got {threads}")
    return threads if limit is None else min(threads, limit)


def launch(source: str, function: str, grid: int, block: int, args: tuple[Any, ...],
           shared_mem: int = 0) -> None:
    """Launch a kernel (on the current cupy stream: wrap calls in ``_arrays.torch_stream``)."""
    if grid == 0:
        return
    kernel(source, function)((grid,), (block,), args, shared_mem=shared_mem)
