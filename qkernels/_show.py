"""``qk.show_config()`` and ``python -m qkernels``: what a bug report needs, as
``numpy.show_config()`` and ``torch.__config__.show()`` give it."""

from __future__ import annotations

import importlib
import os
import platform
import sys
from pathlib import Path
from typing import Any

__all__ = ["config_info", "show_config"]

_LIBRARIES = ("numpy", "numba", "llvmlite", "scipy", "torch", "cupy")


def _version(name: str) -> str:
    try:
        module = importlib.import_module(name)
    except Exception as error:  # not installed, or broken: either is worth reporting
        return "not installed" if isinstance(error, ImportError) else f"fails to import ({error})"
    return str(getattr(module, "__version__", "unknown"))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _simd() -> dict[str, Any]:
    """The Numba target and the path each kernel family takes on it, with the reason."""
    from llvmlite import binding
    from numba.core import config as numba_config

    from . import _simd, config

    name, _ = _simd.numba_target()
    found = _simd.target_features()
    # what LLVM sees on this host (the target may differ when the variables are set)
    host = binding.get_host_cpu_features()
    seen = [f for f in ("sse4.2", "popcnt", "avx2", "avx512f", "avx512bw", "avx512vbmi",
                        "avx512vnni", "avx512vpopcntdq")
            if host.get(f, False)]
    if numba_config.CPU_NAME:
        why = f"NUMBA_CPU_NAME={numba_config.CPU_NAME}"
    else:
        why = f"the host CPU ({name})"
    if numba_config.CPU_FEATURES is not None:
        why += f", NUMBA_CPU_FEATURES={numba_config.CPU_FEATURES or '(empty)'}"
    if not config.get("FASTSCAN_SIMD"):
        fastscan = "scalar (qk.config.FASTSCAN_SIMD is False)"
    elif _simd.has_byte_dots():
        fastscan = ("AVX-512 VBMI and VNNI (four sub-quantizers per 512-bit look-up, summed by "
                    "byte dot products; four queries a pass)")
    elif found["avx512bw"]:
        fastscan = "AVX-512BW (two sub-quantizer pairs per 512-bit shuffle, four queries a pass)"
    elif found["avx2"]:
        fastscan = "AVX2 (256-bit byte shuffles, three queries a pass)"
    else:
        fastscan = "scalar (the target has no AVX2)"
    width = "AVX-512" if found["avx512bw"] else "AVX2" if found["avx2"] else "SSE"
    # eight float64 or int64 lanes, sixteen float32 ones
    registers = {"AVX-512": "one 512-bit register", "AVX2": "two 256-bit registers",
                 "SSE": "four 128-bit registers"}[width]
    return {
        "numba target": f"{name}, chosen by {why}",
        "host CPU features": ", ".join(seen) or "none of sse4.2, popcnt, avx2, avx512*",
        "4-bit PQ fast scan": fastscan,
        "float32 distances (tables, re-ranking)": (f"8 fixed lanes, {width} instructions; "
                                                   "the table scan two items a pass"),
        "8-bit PQ scan": (f"up to 16 queries a pass in float32 lanes ({registers} a "
                          "vector), one query alone"),
        "Hamming popcount": ("POPCNT instruction" if found["popcnt"]
                             else "software (the target has no POPCNT)"),
        "Hamming scan of many queries": ("32 queries a pass in the uint8 lanes of a vector "
                                         "(codes of up to 192 bits)"),
        "flow solvers": ("a class's arcs relaxed eight buckets a step ("
                         + ("in place" if found["avx512bw"] else "from one buffer of labels "
                            "into another") + ") and the nearest node found eight labels a "
                         f"step, in 64-bit lanes ({registers}); the rest scalar code "
                         "vectorised by LLVM where it can"),
    }


def _threads() -> dict[str, Any]:
    import numba
    from numba.core import config as numba_config

    try:
        layer = numba.threading_layer()
    except ValueError:  # chosen when the first parallel kernel runs
        layer = f"not chosen yet (NUMBA_THREADING_LAYER={numba_config.THREADING_LAYER})"
    return {"numba threading layer": layer, "numba threads": numba.get_num_threads(),
            "CPU cores": os.cpu_count()}


def _gpu() -> dict[str, Any]:
    info: dict[str, Any] = {}
    try:
        import torch

        info["torch CUDA"] = (f"available, {torch.cuda.device_count()} device(s)"
                              if torch.cuda.is_available() else "not available")
    except ImportError:
        info["torch CUDA"] = "torch not installed"
    try:
        import cupy
    except ImportError:
        info["cupy"] = "not installed: GPU arrays are refused (pip install qkernels[gpu])"
        return info
    except Exception as error:
        info["cupy"] = f"fails to import ({error})"
        return info
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        names = [cupy.cuda.runtime.getDeviceProperties(i)["name"].decode() for i in range(count)]
        info["cupy devices"] = ", ".join(names) or "none"
        info["CUDA runtime"] = cupy.cuda.runtime.runtimeGetVersion()
    except Exception as error:
        info["cupy devices"] = f"none usable ({type(error).__name__}: {error})"
    try:
        from cupy.cuda import nvrtc

        major, minor = nvrtc.getVersion()
        info["NVRTC"] = f"{major}.{minor}"
    except Exception as error:
        info["NVRTC"] = f"not usable ({type(error).__name__})"
    return info


def _cache() -> str:
    from numba.core import config as numba_config

    if numba_config.CACHE_DIR:
        return f"{numba_config.CACHE_DIR} (NUMBA_CACHE_DIR)"
    package = Path(__file__).resolve().parent
    return (f"__pycache__ folders under {package} (Numba's user cache where that is "
            "read-only)")


def config_info() -> dict[str, dict[str, Any]]:
    """What :func:`show_config` prints, as nested dicts.

    Returns
    -------
    dict of str to dict
        Sections ``"versions"``, ``"platform"``, ``"simd"``, ``"threads"``, ``"gpu"`` and
        ``"cache"``, each a dict of str to str or int.
    """
    from . import __version__

    return {
        "versions": {"qkernels": __version__, "python": platform.python_version(),
                     **{name: _version(name) for name in _LIBRARIES}},
        "platform": {"system": f"{platform.system()} {platform.release()}",
                     "machine": platform.machine(), "cpu": _cpu_model(),
                     "executable": sys.executable},
        "simd": _simd(),
        "threads": _threads(),
        "gpu": _gpu(),
        "cache": {"numba kernel cache": _cache()},
    }


def show_config(mode: str = "stdout") -> dict[str, dict[str, Any]] | None:
    """Print (or return) what a bug report needs.

    The versions of qkernels and the libraries it runs on; the SIMD path each kernel family
    takes on this CPU and why (the CPU Numba compiles for, from the host or from
    ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES``); Numba's threading layer and thread count;
    whether a GPU, cupy and NVRTC are usable; where compiled kernels are cached.
    ``python -m qkernels`` prints the same.

    Parameters
    ----------
    mode : {"stdout", "dicts"}, default "stdout"
        Print the report, or return it as nested dicts (as :func:`config_info`).

    Returns
    -------
    dict of str to dict or None
        The report for ``mode="dicts"``; None when printed.

    Raises
    ------
    ValueError
        If ``mode`` is neither ``"stdout"`` nor ``"dicts"``.

    Examples
    --------
    >>> import qkernels as qk
    >>> info = qk.show_config(mode="dicts")
    >>> sorted(info)
    ['cache', 'gpu', 'platform', 'simd', 'threads', 'versions']
    """
    if mode not in ("stdout", "dicts"):
        raise ValueError(f"mode must be 'stdout' or 'dicts', got {mode!r}")
    info = config_info()
    if mode == "dicts":
        return info
    for section, values in info.items():
        print(f"{section}:")
        width = max(len(key) for key in values)
        for key, value in values.items():
            print(f"  {key:<{width}}  {value}")
    return None
