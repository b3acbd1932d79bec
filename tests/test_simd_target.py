"""The fast scan's SIMD path, and the flow solver's choice of relaxing in place, follow what
Numba compiles for, in every combination of ``NUMBA_CPU_NAME`` and ``NUMBA_CPU_FEATURES``.

Numba compiles for ``NUMBA_CPU_NAME`` (else the host's name) with ``NUMBA_CPU_FEATURES`` (else
the host's features); a kernel that asks LLVM for an instruction the target lacks aborts the
process ("LLVM ERROR: Do not know how to split", exit 134), and one that takes the scalar path
where the target has AVX2 is exact but slow. Each case runs in a fresh process (both variables
are read when Numba starts) and checks the path chosen and the answer against the exact search
of tests/reference.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from llvmlite import binding

CHILD = """
import json
import sys
import numpy as np
import qkernels as qk
from qkernels import _simd
from qkernels.flow import _flat_cpu
from qkernels.index import _fastscan_cpu

rng = np.random.default_rng(0)
pq = qk.ProductQuantizer(16, 8, 4).set_codebooks(
    rng.standard_normal((8, 16, 2)).astype(np.float32))
codes = rng.integers(0, 16, (300, 8), dtype=np.uint8)
q = rng.standard_normal((5, 16)).astype(np.float32)
fast = qk.PQIndex(pq).add_codes(codes).search(q, 4, rerank=300)
# the exact answer from the loops of tests/reference.py (the exact scan would add a kernel to
# compile for each target)
from tests import reference
exact = [np.asarray(a) for a in reference.pq_search(q, codes, np.asarray(pq.codebooks), 4)]
from tests.test_simd_target import flow_problems
flow = [qk.solve_sparse_codes(s, k, p).tolist() for s, k, p in flow_problems()
        ] if sys.argv[1:] == ["flow"] else None
import numba
@numba.njit
def widen(bits, out):
    _simd.widen_half(bits, out)
bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)[3:]  # (a tail of 13)
widened = np.empty(bits.shape[0], np.float32)
widen(bits, widened)
half = bool((widened.view(np.uint32)
             == bits.view(np.float16).astype(np.float32).view(np.uint32)).all())
print(json.dumps({"features": _simd.target_features(), "avx2": bool(_fastscan_cpu._AVX2),
                  "in_place": _flat_cpu._IN_PLACE, "flow": flow, "half": half,
                  "group": _fastscan_cpu.GROUP,
                  "same": bool((fast[1] == exact[1]).all() and (fast[0] == exact[0]).all()),
                  "show_config": qk.show_config(mode="dicts")["simd"]["4-bit PQ fast scan"]}))
"""

ROOT = Path(__file__).resolve().parents[1]
HOST = binding.get_host_cpu_features()
HOST_AVX2 = bool(HOST.get("avx2", False))


def _run(env: dict[str, str], cache, flow: bool = False) -> dict:
    """The child's answers under ``env``; with ``flow``, also its flow solver's codes, checked
    against this process's (one path may relax in place, the other between two buffers)."""
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES")}
    environment.update(env, NUMBA_CACHE_DIR=str(cache))
    done = subprocess.run([sys.executable, "-c", CHILD, *(["flow"] if flow else [])],
                          capture_output=True, text=True, timeout=600, env=environment,
                          cwd=ROOT)
    assert done.returncode == 0, f"exit {done.returncode} under {env}:\n{done.stderr[-2000:]}"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result.pop("in_place") == result["features"]["avx512bw"]
    codes = result.pop("flow")
    if flow:
        from qkernels import solve_sparse_codes

        assert codes == [solve_sparse_codes(s, k, p).tolist() for s, k, p in flow_problems()]
    return result


def flow_problems():
    """(scores, k, penalty): DHT's crowded regime (class means of unit vectors x 1e4,
    truncated), small integers with ties and paths through the sink, float scores."""
    rng = np.random.default_rng(5)
    out = rng.standard_normal((64, 2, 64))
    out /= np.linalg.norm(out, axis=-1, keepdims=True)
    return [(np.trunc(out.mean(axis=1) * 1e4), 3, 1e4),
            (rng.integers(-4, 4, (8, 6)).astype(np.float64), 2, 1.0),
            (rng.integers(-4, 4, (40, 8)).astype(np.float64), 1, 5.0),
            (rng.standard_normal((32, 16)), 2, 0.3)]


@pytest.mark.skipif(not HOST_AVX2, reason="the case is a host with AVX2 told to compile without")
def test_features_without_avx_on_a_host_with_avx2_take_the_scalar_path(tmp_path):
    result = _run({"NUMBA_CPU_FEATURES": "+sse4.2,+popcnt,-avx,-avx2,-avx512f,-avx512bw"},
                  tmp_path, flow=True)
    assert result == {"features": {"avx2": False, "avx512bw": False, "avx512vbmi": False,
                                   "avx512vnni": False, "popcnt": True},
                      "avx2": False, "group": 3, "same": True, "half": True,
                      "show_config": "scalar (the target has no AVX2)"}


@pytest.mark.skipif(not HOST_AVX2, reason="haswell code needs a host with AVX2 to run")
def test_a_cpu_name_alone_keeps_the_host_features(tmp_path):
    result = _run({"NUMBA_CPU_NAME": "haswell"}, tmp_path)
    # Numba pairs the name with the host's full feature string
    assert result["features"] == {"avx2": True, "popcnt": True, **{
        f: bool(HOST.get(f, False)) for f in ("avx512bw", "avx512vbmi", "avx512vnni")}}
    assert result["avx2"] is True
    assert result["show_config"].startswith(("AVX2", "AVX-512BW", "AVX-512 VBMI"))
    assert result["same"] is True
    assert result["half"] is True


PROBE_ONLY = """
import json
import qkernels as qk
from qkernels import _simd
print(json.dumps({"features": _simd.target_features(),
                  "show_config": qk.show_config(mode="dicts")["simd"]}))
"""


def test_generic_takes_the_scalar_path(tmp_path):
    """What the report and the kernels' choice read for generic x86-64 (the first test above
    runs a scalar search in such a child; compiling one more target here would add a quarter
    of a minute to the suite)."""
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES")}
    environment.update(NUMBA_CPU_NAME="generic", NUMBA_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", PROBE_ONLY], capture_output=True, text=True,
                          timeout=300, env=environment)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # generic x86-64 has no POPCNT either: LLVM expands ctpop
    assert result["features"] == {"avx2": False, "avx512bw": False, "avx512vbmi": False,
                                  "avx512vnni": False, "popcnt": False}
    assert result["show_config"]["4-bit PQ fast scan"] == "scalar (the target has no AVX2)"
    assert result["show_config"]["Hamming popcount"] == "software (the target has no POPCNT)"
    assert result["show_config"]["numba target"].startswith(
        "generic, chosen by NUMBA_CPU_NAME=generic")


def test_without_variables_the_host_features_are_used():
    from qkernels import _simd

    if os.environ.get("NUMBA_CPU_NAME") or os.environ.get("NUMBA_CPU_FEATURES"):
        pytest.skip("this process was started with a Numba CPU variable")
    assert _simd.target_features() == {"avx2": HOST_AVX2, **{
        f: bool(HOST.get(f, False)) for f in ("avx512bw", "avx512vbmi", "avx512vnni", "popcnt")}}
