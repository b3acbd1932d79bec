"""benchmarks/roofline.py: the measures compare.py reads a scan's speed against. Their kernels
must do the work they are timed for (a sum that skipped passes, or a chain the compiler folded,
would overstate the machine), and the reading of a scan's nearest limit must be the right one."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import roofline
from benchmarks.compare import bound


def test_the_bandwidth_sum_reads_every_word_in_every_pass_and_thread():
    words = np.arange(1, 1001, dtype=np.uint64)
    for threads, passes in ((1, 1), (2, 3), (3, 2)):
        expected = sum(int(w) ^ p for p in range(passes) for w in range(1, 1001)) * threads
        assert int(roofline._sum_words(words, threads, passes)) == expected % 2**64


def test_the_clock_chain_is_the_rotate_and_xor_it_times():
    x, c = 12345, 0x9E3779B97F4A7C15
    for _ in range(1000):
        x = (((x << 1) | (x >> 63)) & (2**64 - 1)) ^ c
    assert int(roofline._rotate_xor_chain(np.uint64(12345), 1000)) == x


def test_the_lookup_loop_sums_every_entry_of_every_row():
    rng = np.random.default_rng(1)
    tables = rng.integers(0, 8, size=(3, 8 * 256)).astype(np.float32)  # exact float sums
    words = rng.integers(0, 2**63, size=64, dtype=np.uint64)
    codes = words.view(np.uint8).reshape(64, 8)  # lowest byte first, on a little-endian host
    expected = sum(tables[t, m * 256 + int(codes[i, m])] for t in range(3) for i in range(64)
                   for m in range(8)) * 3
    assert roofline._lookups(tables, words, 3) == expected


def test_columns_and_the_nearest_limit():
    roof = roofline.Roofline(threads=2, clock=2e9, memory=10e9, lookups=1.0)
    # 1,000 items x 10 queries of 8 bytes in 1 ms: 80 MB/s; 2e9 x 2 x 1e-3 / 1e4 = 400 cycles
    assert roof.columns(1e-3, 1000, 10, 8, bandwidth=160e6) == ["0.1", "0.50", "400.00"]
    assert bound({"memory": 0.5, "look-ups": 0.9}) == "look-ups (0.90)"
    assert bound({"memory": 0.8}) == "memory (0.80)"
    assert bound({"memory": 0.2, "look-ups": 0.1}) == "instructions (nearest: memory 0.20)"


@pytest.mark.parametrize("threads", [1, 2])
def test_a_measured_bandwidth_is_a_rate_of_the_bytes_read(threads, monkeypatch):
    """read_bandwidth divides every byte the threads read by the best time: with the timer
    replaced, the rate is exact."""
    monkeypatch.setattr(roofline, "_best", lambda fn, repeat: (fn(), 0.5)[1])
    nbytes = 1 << 20
    passes = (256 << 20) // nbytes
    assert roofline.read_bandwidth(nbytes, threads) == nbytes * passes * threads / 0.5
