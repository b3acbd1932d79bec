"""qk.show_config() and python -m qkernels: what a bug report needs, true to this process."""

from __future__ import annotations

import subprocess
import sys

import numba
import numpy as np
import pytest

import qkernels as qk
from qkernels import _simd

SECTIONS = ["versions", "platform", "simd", "threads", "gpu", "cache"]


def test_the_report_has_every_section_and_this_process_values():
    info = qk.show_config(mode="dicts")
    assert list(info) == SECTIONS
    assert info["versions"]["qkernels"] == qk.__version__
    assert info["versions"]["numpy"] == np.__version__
    assert info["versions"]["numba"] == numba.__version__
    assert info["threads"]["numba threads"] == numba.get_num_threads()
    name, _ = _simd.numba_target()
    assert info["simd"]["numba target"].startswith(name)


def test_the_fast_scan_line_follows_the_target_and_the_tunable(monkeypatch):
    features = _simd.target_features()
    line = qk.show_config(mode="dicts")["simd"]["4-bit PQ fast scan"]
    expected = ("AVX-512 VBMI and VNNI" if _simd.has_byte_dots()
                else "AVX-512BW" if features["avx512bw"] else "AVX2" if features["avx2"]
                else "scalar (the target has no AVX2)")
    assert line.startswith(expected), line
    monkeypatch.setattr(qk.config, "FASTSCAN_SIMD", False)
    line = qk.show_config(mode="dicts")["simd"]["4-bit PQ fast scan"]
    assert line == "scalar (qk.config.FASTSCAN_SIMD is False)"


def test_printed_as_sections(capsys):
    assert qk.show_config() is None
    out = capsys.readouterr().out
    for section in SECTIONS:
        assert f"\n{section}:\n" in f"\n{out}"
    assert f"  qkernels  {qk.__version__}" in out


def test_python_dash_m_qkernels_prints_it():
    done = subprocess.run([sys.executable, "-m", "qkernels"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("versions:\n") and "4-bit PQ fast scan" in done.stdout


def test_a_bad_mode_is_refused():
    with pytest.raises(ValueError, match="mode must be 'stdout' or 'dicts', got 'json'"):
        qk.show_config(mode="json")


@pytest.mark.parametrize(("name", "value", "error", "message"), [
    ("FASTSCAN_SIMD", "no", TypeError, "FASTSCAN_SIMD must be True or False, got 'no'"),
    ("SPLIT_DATABASE_MAX_QUERIES", 3.5, TypeError, "must be an integer, got 3.5"),
    ("SPLIT_DATABASE_MAX_QUERIES", -1, ValueError, "must be >= 0, got -1"),
    ("GPU_THREADS_PER_BLOCK", "x", TypeError, "must be an integer, got 'x'"),
    ("GPU_THREADS_PER_BLOCK", 48, ValueError, "a multiple of 32 in 32..1024, got 48"),
])
def test_a_bad_tunable_is_refused_where_it_is_read(monkeypatch, name, value, error, message):
    """A tunable is read, checked, at each call (the string "no" once switched the fast
    scan's SIMD on, a float threshold was compared as it was)."""
    monkeypatch.setattr(qk.config, name, value)
    with pytest.raises(error, match=message):
        qk.config.get(name)
    if name != "GPU_THREADS_PER_BLOCK":  # (read only by the GPU paths)
        x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
        index = qk.PQIndex(qk.ProductQuantizer(8, 4, 4).train(x)).add(x)
        with pytest.raises(error, match=message):
            index.search(x[:3], 5)


def test_the_tunables_read_as_set(monkeypatch):
    assert qk.config.get("SPLIT_DATABASE_MAX_QUERIES") == 16
    monkeypatch.setattr(qk.config, "SPLIT_DATABASE_MAX_QUERIES", np.int64(0))
    assert qk.config.get("SPLIT_DATABASE_MAX_QUERIES") == 0
    monkeypatch.setattr(qk.config, "FASTSCAN_SIMD", np.False_)
    assert qk.config.get("FASTSCAN_SIMD") is False
    with pytest.raises(KeyError, match="no tunable 'THREADS'"):
        qk.config.get("THREADS")
