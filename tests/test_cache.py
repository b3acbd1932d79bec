"""Numba's on-disk cache serves every search kernel: a second process compiles none of them.

A kernel that takes a function as an argument (or passes one on as a value) is typed by that
function object's identity, which no other process shares: Numba then compiles it again in
every process (1-4 s before a PQ index's first search) and adds a file to the cache each time.
The kernels choose their inner loops by argument types or run-time flags instead."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SEARCHES = """
import json
import numpy as np
import numba
import qkernels as qk
from qkernels import _heap
from qkernels.index import _fastscan_cpu, _hamming_cpu, _pq_cpu
from qkernels.quantize import ProductQuantizer

rng = np.random.default_rng(0)
x = rng.standard_normal((600, 16)).astype(np.float32)
for nbits, m in ((8, 8), (8, 4), (4, 4)):  # the word scan, the byte scan, the fast scan
    pq = ProductQuantizer(16, m, nbits, iterations=1).train(x)
    index = qk.PQIndex(pq).add(x)
    for num_queries in (1, 40):  # split over the database, then over queries
        index.search(x[:num_queries], 5)
codes = rng.integers(0, 256, (600, 8), dtype=np.uint8)
binary = qk.BinaryIndex(64).add(codes)
for num_queries in (1, 40):
    binary.search(codes[:num_queries], 5)

misses = {}
for module in (_heap, _pq_cpu, _fastscan_cpu, _hamming_cpu):
    for name, value in vars(module).items():
        dispatcher = getattr(value, "dispatcher", value)
        if isinstance(dispatcher, numba.core.registry.CPUDispatcher):
            missed = dispatcher.stats.cache_misses
            if missed:
                misses[f"{module.__name__}.{name}"] = [str(sig) for sig in missed]
print(json.dumps(misses))
"""


def _misses() -> dict[str, list[str]]:
    done = subprocess.run([sys.executable, "-c", SEARCHES], capture_output=True, text=True,
                          timeout=600)
    if done.returncode:
        pytest.fail(f"the search script failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_second_process_compiles_no_search_kernel():
    _misses()  # fills the cache where an earlier test has not
    assert _misses() == {}
