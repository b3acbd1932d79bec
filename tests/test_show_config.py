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
