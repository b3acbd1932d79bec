"""The machine's own limits, measured in the benchmark's process, against which a scan's speed is
read (a roofline: Williams, Waterman and Patterson, CACM 2009).

- **Read bandwidth** at a given size: a sum of 64-bit words over a buffer of that many bytes
  (as STREAM's kernels, reading only) by the threads the kernels use, every thread reading
  the whole buffer as a scan parallel over queries does; best of a few timings. Over a buffer
  far larger than the last-level cache it is the memory's bandwidth; over a buffer the size of
  a scan's data it is the bandwidth of wherever that data lives (a million 8-byte codes fit in
  the L3 of a server CPU).
- **Clock**: a chain of dependent rotate-and-xor steps, one cycle each on every x86-64 core
  (two a step), timed on one thread; the clock the core runs at under load, not the nominal one.
- **Look-ups**: float32 table entries at data-dependent addresses in L1-resident tables, each
  added to one of eight running sums (the PQ scan's inner work, ``table[m, code]``, without
  its heap), per cycle and core.

``Roofline.columns`` turns one scan's time into the columns compare.py prints: the bytes of codes
(or embeddings) read per second, that as a fraction of the bandwidth at the data's size, and
cycles per item and query.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numba as nb
import numpy as np


@nb.njit(cache=True)
def _sum_range(words, start, stop, r):
    """The sum of ``words[start:stop] ^ r``, over a slice: indices from 0 up need no
    wraparound check, so the compiler vectorizes the loop (over ``range(start, stop)`` it
    does not, and a core sums a quarter as fast)."""
    part = words[start:stop]
    total = np.uint64(0)
    for i in range(part.shape[0]):
        total += part[i] ^ r
    return total


@nb.njit(parallel=True, cache=True)
def _sum_words(words, threads, passes):
    """Every one of ``threads`` threads sums all of ``words`` (uint64) ``passes`` times, each
    from its own starting point (as a scan parallel over queries reads all the codes in every
    thread); the xor with the pass keeps the compiler from summing once."""
    n = words.shape[0]
    partial = np.zeros(threads, dtype=np.uint64)
    for t in nb.prange(threads):
        total = np.uint64(0)
        start = t * (n // threads)
        for rep in range(passes):
            r = np.uint64(rep)
            total += _sum_range(words, start, n, r) + _sum_range(words, 0, start, r)
        partial[t] = total
    return partial.sum()


@nb.njit(cache=True)
def _rotate_xor_chain(x, steps):
    """``steps`` dependent steps of rotate-left by one then xor with a constant: two one-cycle
    instructions a step, none of which can start before the last ends."""
    c = np.uint64(0x9E3779B97F4A7C15)
    one, back = np.uint64(1), np.uint64(63)
    for _ in range(steps):
        x = ((x << one) | (x >> back)) ^ c
    return x


@nb.njit(cache=True)
def _lookups(tables, words, rounds):
    """``rounds`` passes over ``words`` (uint64, (n,), n a multiple of 4: the 8-bit codes of 8
    subspaces, lowest byte first), each code looked up in each of three flat tables
    (``tables[t, m * 256 + code]``): four items and three tables at a time, twelve sums in
    flight, as the PQ scan's inner loop (``_scan_triple_words``) without its heap."""
    low = np.uint64(255)
    fa = tables[0]
    fb = tables[1]
    fc = tables[2]
    total = np.float32(0)
    for _ in range(rounds):
        for i in range(0, words.shape[0], 4):
            w0 = words[i]
            w1 = words[i + 1]
            w2 = words[i + 2]
            w3 = words[i + 3]
            a0 = fa[w0 & low]
            a1 = fa[w1 & low]
            a2 = fa[w2 & low]
            a3 = fa[w3 & low]
            b0 = fb[w0 & low]
            b1 = fb[w1 & low]
            b2 = fb[w2 & low]
            b3 = fb[w3 & low]
            d0 = fc[w0 & low]
            d1 = fc[w1 & low]
            d2 = fc[w2 & low]
            d3 = fc[w3 & low]
            for b in range(1, 8):
                shift = np.uint64(8 * b)
                row = np.uint64(256 * b)
                c0 = ((w0 >> shift) & low) + row
                c1 = ((w1 >> shift) & low) + row
                c2 = ((w2 >> shift) & low) + row
                c3 = ((w3 >> shift) & low) + row
                a0 += fa[c0]
                a1 += fa[c1]
                a2 += fa[c2]
                a3 += fa[c3]
                b0 += fb[c0]
                b1 += fb[c1]
                b2 += fb[c2]
                b3 += fb[c3]
                d0 += fc[c0]
                d1 += fc[c1]
                d2 += fc[c2]
                d3 += fc[c3]
            total += (((a0 + a1) + (a2 + a3)) + ((b0 + b1) + (b2 + b3))
                      + ((d0 + d1) + (d2 + d3)))
    return total


def _best(fn, repeat: int) -> float:
    fn()  # compiled and warm
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def read_bandwidth(nbytes: int, threads: int, repeat: int = 3) -> float:
    """Bytes read per second by ``threads`` threads, each reading a whole buffer of ``nbytes``
    (at least 256 MiB read per thread and timing)."""
    words = np.ones(max(nbytes // 8, 64), dtype=np.uint64)
    passes = max(1, (256 << 20) // words.nbytes)
    previous = nb.get_num_threads()
    nb.set_num_threads(threads)
    try:
        seconds = _best(lambda: _sum_words(words, threads, passes), repeat)
    finally:
        nb.set_num_threads(previous)
    return words.nbytes * passes * threads / seconds


def clock_hz(steps: int = 200_000_000) -> float:
    """Cycles per second of one core under load: two cycles a step of the chain."""
    seconds = _best(lambda: _rotate_xor_chain(np.uint64(1), steps), 3)
    return 2 * steps / seconds


def lookups_per_cycle(clock: float) -> float:
    """Table look-ups one core completes per cycle, each a float32 entry at a data-dependent
    address added to a sum (three tables of 8 subspaces x 256 entries, 24 KiB: L1-resident;
    128 KiB of codes, L2-resident)."""
    rng = np.random.default_rng(0)
    tables = rng.random((3, 8 * 256), dtype=np.float32)
    words = rng.integers(0, 2**63, size=16_384, dtype=np.uint64)
    rounds = 100
    seconds = _best(lambda: _lookups(tables, words, rounds), 3)
    return tables.shape[0] * 8 * words.size * rounds / (seconds * clock)


@dataclass(frozen=True)
class Roofline:
    """The machine's limits, measured once per compare.py run."""

    threads: int
    clock: float  # Hz, one core under load
    memory: float  # bytes/s over a buffer far larger than the last-level cache
    lookups: float  # independent L1 look-ups per cycle and core
    _sizes: dict[int, float] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def measure(cls, threads: int | None = None) -> Roofline:
        threads = threads or nb.get_num_threads()
        clock = clock_hz()
        return cls(threads, clock, read_bandwidth(1 << 30, threads),
                   lookups_per_cycle(clock))

    def describe(self) -> str:
        return (f"Roofline of this machine (measured in this run, {self.threads} threads): "
                f"clock {self.clock / 1e9:.2f} GHz under load; read bandwidth "
                f"{self.memory / 1e9:.1f} GB/s from memory (1 GiB buffer); "
                f"{self.lookups:.2f} independent L1 look-ups a cycle and core.")

    def at_size(self, nbytes: int) -> float:
        """Read bandwidth over a buffer of ``nbytes`` (where a scan's data of that size lives)."""
        if nbytes not in self._sizes:
            self._sizes[nbytes] = read_bandwidth(nbytes, self.threads)
        return self._sizes[nbytes]

    def cycles(self, seconds: float, items: float, queries: int) -> float:
        """Cycles per item and query, on all threads."""
        return seconds * self.clock * self.threads / (items * queries)

    def columns(self, seconds: float, items: float, queries: int, bytes_per_item: float,
                bandwidth: float) -> list[str]:
        """GB/s of data read (each query reading every item's bytes once), that as a
        fraction of ``bandwidth``, and cycles per item and query on all threads."""
        rate = read_rate(seconds, items, queries, bytes_per_item)
        return [f"{rate / 1e9:.1f}", f"{rate / bandwidth:.2f}",
                f"{self.cycles(seconds, items, queries):.2f}"]


def read_rate(seconds: float, items: float, queries: int, bytes_per_item: float) -> float:
    """Bytes per second a scan reads when every query reads every item's bytes once."""
    return items * queries * bytes_per_item / seconds


COLUMNS = ["GB/s read", "of bandwidth at size", "cycles / item-query"]
