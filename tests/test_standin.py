"""Every public GPU entry point run end to end without a GPU: cupy replaced by
tests/cupy_standin.py, the kernels of qkernels/cuda under the CUDA emulation.

The cases (tests/gpu_cases.py) are the device tests' own: each equals its CPU twin, and here the
copies between host and device inside each call are counted and the stream of every launch
checked. The stand-in's own semantics (what it refuses, what it counts) are tested first: a
stand-in that let a hidden copy through would make every count below meaningless.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import qkernels as qk
from qkernels import _gpu
from tests import cupy_standin, gpu_cases

pytestmark = pytest.mark.emulated


class StandinDevice(gpu_cases.Device):
    name = "stand-in"

    def __init__(self, ledger: cupy_standin.Ledger):
        self.ledger = ledger
        self.cupy = cupy_standin.module

    def put(self, a):
        return self.cupy.asarray(a)

    def get(self, x):
        return self.cupy.asnumpy(x)

    def is_device(self, x) -> bool:
        return isinstance(x, self.cupy.ndarray)

    def stream(self):
        return self.cupy.cuda.Stream()

    @contextlib.contextmanager
    def watch(self, *, htod, dtoh, dtoh_bytes=0, stream=None, kernels=None):
        with self.ledger.watching() as seen:
            yield seen
        listing = "\n".join(f"  {c.direction} {c.nbytes} B {c.what} at {c.caller}"
                            for c in seen.copies)
        if htod is not None:
            assert seen.count("htod") == htod, f"{htod} host-to-device copies expected:\n{listing}"
        if dtoh is not None:
            assert seen.count("dtoh") == dtoh, f"{dtoh} device-to-host copies expected:\n{listing}"
            large = sum(c.nbytes for c in seen.copies if c.direction == "dtoh" and c.nbytes > 8)
            assert large <= dtoh_bytes, f"{large} bytes came back, {dtoh_bytes} allowed:\n{listing}"
        if stream is not None:
            assert seen.launches, "no kernel ran"
            assert {launch.stream for launch in seen.launches} == {stream.ptr}, seen.launches
        if kernels is not None:
            assert {launch.function for launch in seen.launches} == set(kernels), seen.launches


@pytest.fixture
def dev(standin, monkeypatch):
    # 64 threads per block: the emulation runs every CUDA thread, and the kernels' parity at
    # 32 and 256 threads is tests/test_emulated.py's
    monkeypatch.setattr(qk.config, "GPU_THREADS_PER_BLOCK", 64)
    return StandinDevice(standin)


@pytest.mark.parametrize("name", sorted(gpu_cases.CASES))
def test_gpu_entry_point_under_the_standin(dev, name):
    gpu_cases.CASES[name](dev)


# ------------------------------------------------------------------ the stand-in itself


def test_standin_refuses_implicit_host_conversion(standin):
    cupy = cupy_standin.module
    x = cupy.asarray(np.arange(6.0))
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(x)
    with pytest.raises(TypeError, match="Unsupported type"):
        x + np.ones(6)
    with pytest.raises(TypeError, match="Unsupported type"):
        np.add(np.ones(6), x)
    with pytest.raises(TypeError, match="Unsupported type"):
        cupy.where(x > 2, np.ones(6), x)
    with pytest.raises(AttributeError, match="does not model"):
        cupy.fft  # noqa: B018


def test_standin_counts_every_crossing(standin):
    cupy = cupy_standin.module
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    x = cupy.asarray(host)
    y = (x * 2 + 1).sum(axis=1)  # stays on the device
    assert isinstance(y, cupy.ndarray)
    assert standin.summary() == {"htod": (1, 48), "dtoh": (0, 0)}
    np.testing.assert_array_equal(y.get(), (host * 2 + 1).sum(axis=1))
    assert float(y[0]) == 16.0 and bool((x > 5).any())
    x[0] = np.zeros(4, dtype=np.float32)
    assert standin.summary() == {"htod": (2, 64), "dtoh": (3, 12 + 4 + 1)}


def test_standin_kernels_record_their_stream_and_refuse_host_arrays(standin):
    cupy = cupy_standin.module
    rng = np.random.default_rng(0)
    scores = cupy.asarray(rng.standard_normal((2, 5, 4)))
    stream = cupy.cuda.Stream()
    with stream:
        qk.solve_sparse_codes(scores, 1, 0.5)
    assert [(launch.function, launch.stream) for launch in standin.launches] == [
        ("solve_batch", stream.ptr)]
    kernel = _gpu.kernel("flow", "solve_batch")
    with pytest.raises(TypeError, match="host array"):
        kernel((1,), (32,), (np.zeros(3),))


def test_gpu_paths_are_taken_only_with_the_standin(standin):
    assert _gpu.available()
    x = cupy_standin.module.asarray(np.ones((2, 8), dtype=np.float32))
    assert isinstance(qk.pack_bits(x), cupy_standin.module.ndarray)



def test_every_gpu_benchmark_runs_under_the_standin(standin, monkeypatch):
    """benchmarks/bench_gpu.py (asv's GPU suite, and gpu_check.sh's without asv) at a small
    scale: every family's GPU path runs, and the timed calls copy nothing to the device."""
    from benchmarks import bench_gpu

    monkeypatch.setattr(bench_gpu, "SCALE", 1e-3)
    monkeypatch.setattr(bench_gpu.GPUSolver, "params", ([(16, 24, 2)],))  # the flow emulated
    monkeypatch.setattr(qk.config, "GPU_THREADS_PER_BLOCK", 64)          # is slow at 64 x 64
    results = bench_gpu.run(repeat=1, warm_up=False)
    assert [label for label, _ in results] == [
        "GPUSolver.time_solve_batch((16, 24, 2),)",
        "GPUHamming.time_hamming_topk", "GPUBinaryIndex.time_search", "GPUPQ.time_search",
        "GPUTable.time_search", "GPUHierarchical.time_search",
        "GPUEncode.time_householder_encode", "GPUEncode.time_itq_encode"]
    assert {launch.function for launch in standin.launches} == {
        "solve_batch", "topk_by_query", "distance_tables", "scan_by_query_u8", "probe"}


def test_gpu_check_skips_cleanly_without_a_gpu(tmp_path):
    """benchmarks/gpu_check.sh on this machine (no cupy): exit 0, saying it skipped, and no
    step ran (a step that ran without a GPU could only pass falsely)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    if _gpu.available():
        pytest.skip("this machine has a GPU: gpu_check.sh runs for real")
    script = Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("gpu_check: skipped, no NVIDIA GPU with cupy here")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no-gpu.log", "summary.txt"]
