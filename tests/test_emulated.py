"""Every CUDA kernel against its CPU twin, run on the CPU under tests/emulation.py.

The GPU twins' own launch code runs (qkernels/index/_*_gpu.py, flow/_flat_gpu.py) with numpy
arrays and ``_gpu.launch`` replaced by the emulated launcher: the same grid, block, dynamic
shared memory and arguments as on a device. Results must be bit for bit the CPU's (the flow
kernel too: the same codes). Thread counts of 32 and 256, several blocks, partial last blocks,
top-K at its cap, ties, empty buckets, missing results.
"""

from __future__ import annotations

import numpy as np
import pytest

import qkernels as qk
from qkernels import _gpu, config
from qkernels._filter import NO_MASK
from qkernels.flow import _flat_cpu, _flat_gpu
from qkernels.index import _hamming_cpu, _hamming_gpu, _pq_cpu, _pq_gpu, _table_gpu
from qkernels.index.binary import _word_columns, _words
from tests import emulation

pytestmark = [
    pytest.mark.emulated,
    pytest.mark.skipif(emulation.compiler() is None, reason="the CUDA emulation needs g++"),
]


@pytest.fixture(params=[32, 256], ids=["32-threads", "256-threads"])
def emulated(request, monkeypatch):
    """The emulated launcher in place of the GPU's, at the given threads per block."""
    monkeypatch.setattr(_gpu, "launch", emulation.launch)
    monkeypatch.setattr(config, "GPU_THREADS_PER_BLOCK", request.param)
    return request.param


def test_every_kernel_of_every_source_is_tested():
    """A kernel added to a .cu file must get a parity test here."""
    tested = {"pq": {"distance_tables", "scan_by_query_u8", "scan_by_query_u16"},
              "hamming": {"topk_by_query"}, "table": {"probe"}, "flow": {"solve_batch"}}
    assert {s: set(emulation.kernels(s)) for s in emulation.sources()} == tested


# ------------------------------------------------------------------------------ pq.cu


def _pq_case(seed, num_queries, n, m, nbits, dsub, duplicates):
    rng = np.random.default_rng(seed)
    k = 1 << nbits
    queries = rng.standard_normal((num_queries, m * dsub)).astype(np.float32)
    codebooks = rng.standard_normal((m, k, dsub)).astype(np.float32)
    dtype = np.uint8 if nbits <= 8 else np.uint16
    codes = rng.integers(0, k, (n, m)).astype(dtype)
    if duplicates and n:  # whole codes repeat: equal distances, ties broken by the lower item
        codes = codes[rng.integers(0, max(1, n // 4), n)]
    return queries, codebooks, codes


@pytest.mark.parametrize("inner_product", [False, True], ids=["l2", "ip"])
@pytest.mark.parametrize(("num_queries", "n", "m", "nbits", "dsub", "topk", "duplicates"), [
    (3, 500, 4, 8, 4, 10, True),     # several blocks of distance_tables, ties
    (2, 40, 8, 4, 3, 128, False),    # topk at its cap (128), more than the items: missing
    (1, 1, 2, 2, 1, 1, False),       # one item, one query
    (4, 300, 3, 9, 2, 16, True),     # 9 bits: uint16 codes (scan_by_query_u16)
    (5, 257, 1, 8, 8, 7, True),      # one subspace; n one more than a block of 256
])
def test_pq_search_is_the_cpus(emulated, num_queries, n, m, nbits, dsub, topk, duplicates,
                               inner_product):
    queries, codebooks, codes = _pq_case(n + m, num_queries, n, m, nbits, dsub, duplicates)
    D, I = _pq_gpu.search(queries, codebooks, codes, topk, inner_product)
    tables = np.empty((num_queries, m, 1 << nbits), dtype=np.float32)
    _pq_cpu.distance_tables(queries, codebooks, inner_product, tables)
    work = min(topk, n)
    want_d = np.empty((num_queries, work), dtype=np.float32)
    want_i = np.empty((num_queries, work), dtype=np.int64)
    _pq_cpu.scan_by_query(tables, codes, work, inner_product, want_d, want_i, NO_MASK,
                          np.empty((num_queries, 0), dtype=np.int64))
    missing = -np.inf if inner_product else np.inf
    np.testing.assert_array_equal(D[:, :work], want_d)
    np.testing.assert_array_equal(I[:, :work], want_i)
    assert (D[:, work:] == missing).all() and (I[:, work:] == -1).all()


def test_pq_distance_tables_are_the_cpus_bit_for_bit(emulated):
    rng = np.random.default_rng(1)
    queries = (rng.standard_normal((7, 60)) * 1e3).astype(np.float32)
    codebooks = (rng.standard_normal((5, 32, 12)) * 1e3).astype(np.float32)
    for inner_product in (False, True):
        got = np.empty((7, 5, 32), dtype=np.float32)
        threads = _gpu.block_size()
        emulation.launch("pq", "distance_tables", -(-got.size // threads), threads,
                         (queries, codebooks, np.int32(7), np.int32(5), np.int32(32),
                          np.int32(12), np.int32(inner_product), got))
        want = np.empty_like(got)
        _pq_cpu.distance_tables(queries, codebooks, inner_product, want)
        np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------------ hamming.cu


@pytest.mark.parametrize(("num_queries", "n", "nbits", "topk"), [
    (3, 700, 12, 10),     # few bits: many ties, broken by the lower item
    (2, 1500, 64, 1024),  # topk at its cap
    (2, 5, 130, 16),      # fewer items than topk: missing results; 3 words
    (1, 1, 8, 1),
    (4, 333, 1024, 33),   # the longest codes the kernel takes
])
def test_hamming_topk_is_the_cpus(emulated, num_queries, n, nbits, topk):
    rng = np.random.default_rng(n + nbits)
    db = qk.pack_bits(rng.integers(0, 2, (n, nbits)).astype(np.uint8))
    queries = qk.pack_bits(rng.integers(0, 2, (num_queries, nbits)).astype(np.uint8))
    D, I = _hamming_gpu.topk_by_query(queries, _hamming_gpu.word_columns(db), topk)
    np.testing.assert_array_equal(_hamming_gpu.word_columns(db), _word_columns(db))
    work = min(topk, n)
    want_d = np.empty((num_queries, work), dtype=np.int32)
    want_i = np.empty((num_queries, work), dtype=np.int64)
    _hamming_cpu.topk_by_query(_words(queries), _word_columns(db), work, 1024, 8, want_d, want_i,
                               NO_MASK, np.empty((num_queries, 0), dtype=np.int64))
    np.testing.assert_array_equal(D[:, :work], want_d)
    np.testing.assert_array_equal(I[:, :work], want_i)
    assert (D[:, work:] == np.iinfo(np.int32).max).all() and (I[:, work:] == -1).all()


# ------------------------------------------------------------------------------ table.cu


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize(("n", "num_buckets", "k", "topk", "excluding"), [
    (400, 16, 2, 16, True),    # expansion past k buckets for some queries, exclusions
    (300, 64, 1, 64, False),   # topk at its cap; 64 buckets for 300 items: some empty
    (200, 8, 3, 40, True),     # items in 3 buckets: met again in later buckets
    (30, 200, 2, 50, False),   # mostly empty buckets; fewer items than topk: missing
])
def test_table_probe_is_the_cpus(emulated, n, num_buckets, k, topk, excluding, metric):
    rng = np.random.default_rng(n + num_buckets + k)
    act = rng.standard_normal((n, num_buckets)).astype(np.float32)
    emb = rng.integers(0, 3, (n, 5)).astype(np.float32)  # ties in distance everywhere
    ids = rng.permutation(10 * n)[:n]
    table = qk.SparseHashTable(num_buckets, k, metric).add(act, emb, ids=ids)
    q_act = np.round(rng.standard_normal((6, num_buckets)), 1).astype(np.float32)  # ties
    q_emb = rng.integers(0, 3, (6, 5)).astype(np.float32)
    exclude = ids[rng.integers(0, n, (6, 3))] if excluding else None
    D, I = table.search(q_act, q_emb, topk, exclude=exclude)
    want_counts = table.candidate_counts

    state = table._built(table._state)
    arrays = table._probe_arrays(state)
    positions = table._filter(state, None, exclude, 6)[1]
    dist, items, counts = _table_gpu.probe(q_act, q_emb, k, topk, arrays[:-1], positions,
                                           metric == "ip")
    got_ids = np.where(items >= 0, arrays[-1][np.maximum(items, 0)], -1)
    np.testing.assert_array_equal(dist, D)
    np.testing.assert_array_equal(got_ids, I)
    np.testing.assert_array_equal(counts, want_counts)


# ------------------------------------------------------------------------------ flow.cu


@pytest.mark.parametrize(("batch", "n", "d", "k", "penalty", "integers"), [
    (3, 8, 6, 2, 1.0, True),     # classes crowd the buckets: units move along shortest paths
    (2, 5, 40, 3, 0.5, True),    # more buckets than threads at 32
    (1, 1, 1, 1, 1.0, True),
    (2, 12, 4, 4, 2.0, True),    # k = d: every class in every bucket
    (2, 32, 16, 2, 0.3, False),  # DHT-like float scores, small penalty: long paths
    (1, 24, 20, 17, 1.0, True),  # k > 16: the CPU's stable-sort branch of the greedy start
    (2, 40, 8, 1, 5.0, True),    # the penalty dominates: paths through the sink
    # DHT's training regime: class means of unit vectors x 1e4, truncated, penalty 1e4; the
    # deficit buckets raise their potentials before the searches
    (2, 64, 64, 3, 1e4, "dht"),
])
def test_flow_returns_the_cpus_codes(emulated, batch, n, d, k, penalty, integers):
    rng = np.random.default_rng(batch * 100 + n * 10 + d)
    if integers == "dht":
        out = rng.standard_normal((batch, n, 2, d))
        out /= np.linalg.norm(out, axis=-1, keepdims=True)
        scores = np.trunc(out.mean(axis=2) * 1e4)
    elif integers:  # small integers: ties everywhere, exact sums
        scores = rng.integers(-4, 4, (batch, n, d)).astype(np.float64)
    else:
        scores = rng.standard_normal((batch, n, d))
    incr = penalty * np.arange(n, dtype=np.float64)
    codes = np.empty((batch, n, k), dtype=np.int64)
    _flat_gpu.solve_batch(scores, k, incr, codes)
    want = np.empty_like(codes)
    _flat_cpu.solve_batch(scores, k, incr, want)
    np.testing.assert_array_equal(codes, want)
    for b in range(batch):
        assert qk.sparse_code_objective(scores[b], codes[b], penalty) == \
            qk.sparse_code_objective(scores[b], want[b], penalty)


# ------------------------------------------------------------------------------ the harness


def test_a_barrier_that_not_every_thread_reaches_is_a_failure(monkeypatch):
    """One thread returns before the others' __syncthreads(): a Deadlock after the timeout,
    not a hang (a tiny kernel compiled like the real ones)."""
    monkeypatch.setattr(emulation, "TIMEOUT_S", 1.0)
    lib = emulation.custom_library("""
        extern "C" __global__ void early_return(int* out) {
            if (threadIdx.x == 0) return;
            __syncthreads();
            out[threadIdx.x] = 1;
        }""", ["early_return"])
    out = np.zeros(32, dtype=np.int32)
    with pytest.raises(emulation.Deadlock):
        emulation.launch_library(lib, "early_return", 1, 32, (out,))


def test_a_launch_with_the_wrong_argument_types_is_refused():
    with pytest.raises(emulation.LaunchError, match="argument 2 must be int32"):
        emulation.launch("pq", "distance_tables", 1, 32, (
            np.zeros((1, 4), np.float32), np.zeros((1, 2, 4), np.float32), np.int64(1),
            np.int32(1), np.int32(2), np.int32(4), np.int32(0), np.zeros(2, np.float32)))
    with pytest.raises(emulation.LaunchError, match="must be float32"):
        emulation.launch("pq", "distance_tables", 1, 32, (
            np.zeros((1, 4), np.float64), np.zeros((1, 2, 4), np.float32), np.int32(1),
            np.int32(1), np.int32(2), np.int32(4), np.int32(0), np.zeros(2, np.float32)))


def test_an_endless_loop_fails_the_launch_instead_of_hanging(tmp_path):
    """A thread that never ends: the launch fails; run in a child process, which takes the
    left-over thread with it when it exits."""
    import subprocess
    import sys

    script = '''
import numpy as np
from tests import emulation
emulation.TIMEOUT_S = 0.5
lib = emulation.custom_library("""
    extern "C" __global__ void spin(volatile int* flag) {
        if (threadIdx.x == 0) while (flag[0] == 0) {}
    }""", ["spin"])
try:
    emulation.launch_library(lib, "spin", 1, 4, (np.zeros(1, np.int32),))
except emulation.LaunchError as error:
    print("refused:", error)
'''
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=emulation.HEADER.parents[2])
    assert "refused:" in done.stdout and "endless loop" in done.stdout, done.stderr[-2000:]


# ------------------------------------------------------------------------------ under TSan

_TSAN_SCRIPT = '''
import functools
import numpy as np
import qkernels as qk
from qkernels import _gpu, config
from tests import emulation, test_emulated as cases

_gpu.launch = functools.partial(emulation.launch, sanitize="thread")
for threads in (32, 256):
    config.GPU_THREADS_PER_BLOCK = threads
    cases.test_pq_search_is_the_cpus(threads, 3, 300, 4, 8, 4, 10, True, False)
    cases.test_pq_search_is_the_cpus(threads, 2, 40, 8, 4, 3, 128, False, True)
    cases.test_pq_search_is_the_cpus(threads, 2, 100, 3, 9, 2, 16, True, False)
    cases.test_hamming_topk_is_the_cpus(threads, 2, 700, 12, 10)
    cases.test_table_probe_is_the_cpus(threads, 400, 16, 2, 16, True, "l2")
    cases.test_table_probe_is_the_cpus(threads, 200, 8, 3, 40, True, "ip")
    cases.test_flow_returns_the_cpus_codes(threads, 2, 8, 6, 2, 1.0, True)
    cases.test_flow_returns_the_cpus_codes(threads, 1, 16, 8, 2, 0.3, False)
print("every kernel ran under ThreadSanitizer")
'''


@pytest.mark.slow
def test_no_kernel_races_under_thread_sanitizer():
    """The kernels' shared memory, barriers and atomics under ThreadSanitizer: a race that a
    GPU's lock-step warps would hide is a report here (each kernel compiled with
    -fsanitize=thread, run in a child process with libtsan preloaded). TSan judges the
    interleavings it sees: a race between two barriers can hide behind the barrier mutex's
    happens-before edges when threads run one after another, so a clean run is evidence, not
    proof."""
    import subprocess
    import sys

    tsan = subprocess.run([emulation.compiler(), "-print-file-name=libtsan.so"],
                          capture_output=True, text=True).stdout.strip()
    if not tsan.startswith("/"):
        pytest.skip("g++ has no libtsan")
    env = dict(__import__("os").environ, LD_PRELOAD=tsan,
               TSAN_OPTIONS="halt_on_error=1 exitcode=66 report_signal_unsafe=0",
               NUMBA_NUM_THREADS="1")
    # TSan maps its shadow memory at fixed addresses; with address-space randomisation a
    # library can land there first and the child dies at start-up ("ThreadSanitizer failed to
    # allocate ...", seen once in a fresh-clone run): run it with randomisation off
    import platform
    import shutil

    setarch = shutil.which("setarch")
    prefix = [setarch, platform.machine(), "-R"] if setarch else []
    done = subprocess.run([*prefix, sys.executable, "-c", _TSAN_SCRIPT], capture_output=True,
                          text=True, timeout=1800, cwd=emulation.HEADER.parents[2], env=env)
    assert done.returncode == 0 and "ThreadSanitizer" not in done.stderr, done.stderr[-6000:]
    assert "every kernel ran under ThreadSanitizer" in done.stdout
    # and the sanitizer is awake: a kernel with a shared-memory race is reported
    racy = subprocess.run([*prefix, sys.executable, "-c", _RACY_SCRIPT], capture_output=True,
                          text=True, timeout=300, cwd=emulation.HEADER.parents[2], env=env)
    assert racy.returncode == 66 and "data race" in racy.stderr, racy.stderr[-3000:]


_RACY_SCRIPT = '''
import numpy as np
from tests import emulation
# every thread adds to one int without an atomic or a barrier between the writes (a race
# between barriers can hide behind the happens-before edges of the barrier's mutex when the
# threads happen to run one after another, so the check would be flaky). The threads first
# wait at an atomic gate until all have started: on a loaded machine a thread could otherwise
# end before the next one is created, and the launcher's own synchronisation (the thread's
# exit, the creation of the next) would order the two writes. After the gate nothing does.
lib = emulation.custom_library("""
    extern "C" __global__ void racy(int* out) {
        atomicAdd(out + 1, 1);
        while (atomicAdd(out + 1, 0) < (int)blockDim.x) {
        }
        out[0] += 1;
    }""", ["racy"], sanitize="thread")
emulation.launch_library(lib, "racy", 1, 32, (np.zeros(2, np.int32),))
'''
