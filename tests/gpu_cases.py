"""The GPU entry points' cases, shared by the stand-in tests (tests/test_standin.py: cupy
replaced by tests/cupy_standin.py, the kernels under the CUDA emulation) and the device tests
(tests/test_gpu.py: a real GPU, torch CUDA tensors in and out).

Each case is a function of a :class:`Device` that puts host arrays on the device, runs one
public entry point there and asserts that the answer equals the CPU twin's (the same call on
numpy arrays). Under the stand-in, ``dev.watch(htod=..., dtoh=...)`` also asserts the copies
between host and device inside the call: ``htod`` host-to-device copies and ``dtoh``
device-to-host ones, each of the latter a scalar (a validation's answer or a kernel's
consistency check) unless ``dtoh_bytes`` allows more; on a device they are not counted. The
stand-in also checks the stream of every launch.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import numpy as np

import qkernels as qk

CASES: dict[str, Callable] = {}


def case(function: Callable) -> Callable:
    CASES[function.__name__.removeprefix("case_")] = function
    return function


class Device:
    """What a case needs of a device: put, get, is_device, stream, watch."""

    name: str

    def put(self, a: np.ndarray):
        raise NotImplementedError

    def get(self, x) -> np.ndarray:
        raise NotImplementedError

    def is_device(self, x) -> bool:
        raise NotImplementedError

    def stream(self):
        """A context in which a new stream is current (the caller's stream)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def watch(self, *, htod: int | None, dtoh: int | None, dtoh_bytes: int = 0, stream=None,
              kernels: tuple[str, ...] | None = None):
        """Inside: ``htod``/``dtoh`` copies (None: not counted), every launch on ``stream``
        when given, exactly the kernels named in ``kernels`` when given."""
        yield


def _same(dev: Device, got, want) -> None:
    assert dev.is_device(got), f"the result is not on the device: {type(got)}"
    np.testing.assert_array_equal(dev.get(got), want)


# ------------------------------------------------------------------ code solvers


@case
def case_flat_solver_batch(dev: Device) -> None:
    rng = np.random.default_rng(1)
    scores = rng.integers(-20, 21, (6, 24, 12)).astype(np.float64)
    on_device = dev.put(scores)
    # in: the bucket-cost schedule; out: the finiteness check and the solver's own check
    with dev.watch(htod=1, dtoh=2):
        codes = qk.solve_sparse_codes(on_device, 3, 7.0)
    _same(dev, codes, qk.solve_sparse_codes(scores, 3, 7.0))


@case
def case_flat_solver_single_float32(dev: Device) -> None:
    rng = np.random.default_rng(2)
    scores = rng.standard_normal((20, 16)).astype(np.float32)
    on_device = dev.put(scores)
    with dev.watch(htod=1, dtoh=2):
        codes = qk.solve_sparse_codes(on_device, 2, 0.5)
    _same(dev, codes, qk.solve_sparse_codes(scores, 2, 0.5))


@case
def case_hierarchical_solver(dev: Device) -> None:
    """No GPU kernel: the level-2 flow runs on host copies, the codes go back (2 + 2)."""
    rng = np.random.default_rng(3)
    s1 = rng.integers(-9, 10, (30, 6)).astype(np.float64)
    s2 = rng.integers(-9, 10, (30, 8)).astype(np.float64)
    d1, d2 = dev.put(s1), dev.put(s2)
    with dev.watch(htod=2, dtoh=2, dtoh_bytes=s1.nbytes + s2.nbytes):
        level1, level2 = qk.solve_hierarchical_codes(d1, d2, 2, 100.0, 1.0)
    want1, want2 = qk.solve_hierarchical_codes(s1, s2, 2, 100.0, 1.0)
    _same(dev, level1, want1)
    _same(dev, level2, want2)


# ------------------------------------------------------------------ binary codes


@case
def case_pack_bits(dev: Device) -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((50, 100)).astype(np.float32)
    x[0, :3] = [np.inf, -np.inf, 0.0]
    on_device = dev.put(x)
    with dev.watch(htod=0, dtoh=1):  # the NaN check
        codes = qk.pack_bits(on_device)
    _same(dev, codes, qk.pack_bits(x))


def _binary_data(nbits: int, n: int = 3000, queries: int = 12):
    rng = np.random.default_rng(nbits)
    centres = rng.standard_normal((5, nbits))
    db = qk.pack_bits(centres[rng.integers(0, 5, n)] + 0.4 * rng.standard_normal((n, nbits)))
    return db, qk.pack_bits(rng.standard_normal((queries, nbits)))


@case
def case_hamming_topk(dev: Device) -> None:
    for nbits in (64, 100, 256):
        db, queries = _binary_data(nbits)
        d_db, d_q = dev.put(db), dev.put(queries)
        for topk in (1, 10, 100):
            with dev.watch(htod=0, dtoh=0):
                D, I = qk.hamming_topk(d_q, d_db, topk)
            want_d, want_i = qk.hamming_topk(queries, db, topk)
            _same(dev, D, want_d)
            _same(dev, I, want_i)


@case
def case_hamming_topk_short_database(dev: Device) -> None:
    db, _ = _binary_data(64, n=5)
    d_q, d_db = dev.put(db[:2]), dev.put(db)
    with dev.watch(htod=0, dtoh=0):
        D, I = qk.hamming_topk(d_q, d_db, 8)
    want_d, want_i = qk.hamming_topk(db[:2], db, 8)
    _same(dev, D, want_d)
    _same(dev, I, want_i)


@case
def case_binary_index(dev: Device) -> None:
    db, queries = _binary_data(128)
    ids = np.random.default_rng(5).permutation(10**6)[: len(db)]
    index = qk.BinaryIndex(128).add(db, ids=ids)
    d_q = dev.put(queries)
    with dev.watch(htod=2, dtoh=0):  # the first search mirrors the codes and the ids
        D, I = index.search(d_q, 10)
    with dev.watch(htod=0, dtoh=0):  # a second search copies nothing
        D2, I2 = index.search(d_q, 10)
    want_d, want_i = index.search(queries, 10)
    for got_d, got_i in ((D, I), (D2, I2)):
        _same(dev, got_d, want_d)
        _same(dev, got_i, want_i)
    index.remove_ids(ids[:100])  # a new snapshot: mirrored again, once
    with dev.watch(htod=2, dtoh=0):
        D, I = index.search(d_q, 10)
    want_d, want_i = index.search(queries, 10)
    _same(dev, D, want_d)
    _same(dev, I, want_i)


@case
def case_binary_index_filtered(dev: Device) -> None:
    """The GPU kernels take no filter: the search runs on host copies (queries and the
    filter down, the two results up)."""
    db, queries = _binary_data(64)
    index = qk.BinaryIndex(64).add(db)
    include = np.arange(0, len(db), 3)
    exclude = np.arange(0, len(db), 2)
    d_q, d_include, d_exclude = dev.put(queries), dev.put(include), dev.put(exclude)
    for name, given, host in (("include", d_include, include),
                              ("exclude", d_exclude, exclude)):
        with dev.watch(htod=2, dtoh=2, dtoh_bytes=queries.nbytes + host.nbytes):
            D, I = index.search(d_q, 10, **{name: given})
        want_d, want_i = index.search(queries, 10, **{name: host})
        _same(dev, D, want_d)
        _same(dev, I, want_i)


@case
def case_binary_index_add_from_device(dev: Device) -> None:
    """An index lives on the host: codes added from a device come down once."""
    db, queries = _binary_data(64, n=500)
    index = qk.BinaryIndex(64)
    on_device = dev.put(db)
    with dev.watch(htod=0, dtoh=1, dtoh_bytes=db.nbytes):
        index.add(on_device)
    np.testing.assert_array_equal(index.search(queries, 5)[1],
                                  qk.BinaryIndex(64).add(db).search(queries, 5)[1])


# ------------------------------------------------------------------ quantizers


def _embeddings(seed: int, n: int, dim: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, dim)) + 3 * rng.standard_normal((20, dim))[
        rng.integers(0, 20, n)]).astype(np.float32)


@case
def case_itq(dev: Device) -> None:
    x = _embeddings(6, 600, 24)
    itq = qk.ITQ(16, iterations=10).fit(x)
    on_device = dev.put(x)
    with dev.watch(htod=2, dtoh=1):  # the mean and projection once; the finiteness check
        codes = itq.encode(on_device)
    with dev.watch(htod=0, dtoh=1):
        again = itq.encode(on_device)
    _same(dev, codes, itq.encode(x))
    _same(dev, again, itq.encode(x))
    with dev.watch(htod=0, dtoh=3):  # finiteness of x; of the projection, and its range
        projected = itq.transform(on_device)
    assert dev.is_device(projected)
    np.testing.assert_allclose(dev.get(projected), itq.transform(x), rtol=1e-6, atol=1e-6)


@case
def case_householder(dev: Device) -> None:
    x = _embeddings(7, 400, 16)
    quantizer = qk.HouseholderQuantizer(16).fit(x, epochs=2, seed=0)
    on_device = dev.put(x)
    with dev.watch(htod=1, dtoh=1):  # U once; the finiteness check
        codes = quantizer.encode(on_device)
    with dev.watch(htod=0, dtoh=1):
        again = quantizer.encode(on_device)
    _same(dev, codes, quantizer.encode(x))
    _same(dev, again, quantizer.encode(x))
    with dev.watch(htod=0, dtoh=1):
        z = quantizer.transform(on_device)
    assert dev.is_device(z)
    np.testing.assert_allclose(dev.get(z), quantizer.transform(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ PQ


@functools.cache
def _trained(nbits: int) -> qk.ProductQuantizer:
    return qk.ProductQuantizer(32, 8, nbits, iterations=5).train(_embeddings(8, 3000, 32))


def _pq_index(nbits: int, metric: str, fast_scan=None):
    x = _embeddings(8, 3000, 32)
    pq = _trained(nbits)
    ids = np.random.default_rng(9).permutation(10**6)[: len(x)]
    return qk.PQIndex(pq, metric=metric, fast_scan=fast_scan).add(x, ids=ids), x, ids


@case
def case_pq_index(dev: Device) -> None:
    for metric in ("l2", "ip"):
        index, x, _ = _pq_index(8, metric)
        queries = x[:4] + 0.1
        d_q = dev.put(queries)
        with dev.watch(htod=3, dtoh=1):  # codebooks, codes, ids once; the finiteness check
            D, I = index.search(d_q, 10)
        for topk in (1, 16):  # (topk at the kernels' caps: tests/test_emulated.py)
            with dev.watch(htod=0, dtoh=1):
                D, I = index.search(d_q, topk)
            want_d, want_i = index.search(queries, topk)
            _same(dev, D, want_d)
            _same(dev, I, want_i)


@case
def case_pq_index_fast_scan_is_the_exact_scan_on_a_gpu(dev: Device) -> None:
    """A 4-bit index searches a GPU's queries with pq.cu's exact scan: the answer of the
    same index with ``fast_scan=False`` on the CPU."""
    index, x, ids = _pq_index(4, "l2")
    assert index.fast_scan
    exact = qk.PQIndex(index.pq, fast_scan=False).add(x, ids=ids)
    queries = x[100:112] + 0.05
    D, I = index.search(dev.put(queries), 20)
    want_d, want_i = exact.search(queries, 20)
    _same(dev, D, want_d)
    _same(dev, I, want_i)


@case
def case_pq_index_zeros_of_both_signs_tie(dev: Device) -> None:
    """Asymmetric inner products of -0.0 and +0.0 (sums of table entries -2 + 2 and -0.0 +
    -0.0) are equal: the tie goes to the item added first, on the GPU as on the CPU."""
    words = np.array([[1, -1], [1, 1], [-1, -1], [5, 5]], dtype=np.float32)
    pq = qk.ProductQuantizer(4, 2, 2).set_codebooks(np.stack([words, words]))
    # item 0 scores -2 + 2 = +0.0, item 1 -0.0 + -0.0 = -0.0, item 2 -0.0 + -2, item 3 -10 -10
    index = qk.PQIndex(pq, "ip").add_codes(np.array([[1, 2], [0, 0], [0, 1], [3, 3]]))
    queries = np.ones((1, 4), dtype=np.float32)
    D, I = index.search(dev.put(queries), 4)
    want_d, want_i = index.search(queries, 4)
    assert want_i.tolist() == [[3, 2, 0, 1]]
    _same(dev, D, want_d)
    _same(dev, I, want_i)


@case
def case_pq_index_filtered(dev: Device) -> None:
    """Filters run on host copies, as for the binary index."""
    index, x, ids = _pq_index(8, "l2")
    queries = x[:12]
    include = ids[::4]
    d_q, d_include = dev.put(queries), dev.put(include)
    with dev.watch(htod=2, dtoh=2, dtoh_bytes=queries.nbytes + include.nbytes):
        D, I = index.search(d_q, 10, include=d_include)
    want_d, want_i = index.search(queries, 10, include=include)
    _same(dev, D, want_d)
    _same(dev, I, want_i)


@case
def case_pq_index_add_from_device(dev: Device) -> None:
    index, x, _ = _pq_index(8, "l2")
    fresh = qk.PQIndex(index.pq)
    on_device = dev.put(x[:500])
    with dev.watch(htod=0, dtoh=1, dtoh_bytes=x[:500].nbytes):  # encoded on the host
        fresh.add(on_device)
    np.testing.assert_array_equal(fresh.search(x[:5], 3)[1],
                                  qk.PQIndex(index.pq).add(x[:500]).search(x[:5], 3)[1])


# ------------------------------------------------------------------ hash tables


def _table_data(k: int, n: int = 4000, buckets: int = 32):
    rng = np.random.default_rng(k)
    labels = rng.integers(0, 6, n)
    act = rng.standard_normal((6, buckets))[labels] * 2 + rng.standard_normal((n, buckets))
    emb = (rng.standard_normal((6, 16))[labels] * 3 + rng.standard_normal((n, 16))).astype(
        np.float32)
    ids = rng.permutation(100_000)[:n]
    return act, emb, ids


@case
def case_sparse_hash_table(dev: Device) -> None:
    for k in (1, 3):
        act, emb, ids = _table_data(k)
        table = qk.SparseHashTable(32, k).add(act, emb, ids=ids)
        rows = np.random.default_rng(k).choice(len(act), 12, replace=False)
        q_act, q_emb = act[rows], emb[rows]
        exclude = np.stack([ids[rows], np.full(12, -1), ids[rows[::-1]]], axis=1)
        d_act, d_emb, d_exclude = dev.put(q_act), dev.put(q_emb), dev.put(exclude)
        # the first search mirrors the table (7 arrays) and, with exclude, its sorted ids (2);
        # out: the finiteness of the two query arrays, that the float64 activations fit
        # float32, and exclude's smallest id
        with dev.watch(htod=9, dtoh=4):
            D, I = table.search(d_act, d_emb, 16, exclude=d_exclude)
        counts = table.candidate_counts
        want_d, want_i = table.search(q_act, q_emb, 16, exclude=exclude)
        _same(dev, D, want_d)
        _same(dev, I, want_i)
        _same(dev, counts, table.candidate_counts)
        with dev.watch(htod=0, dtoh=3):
            D, I = table.search(d_act, d_emb, 64)
        counts = table.candidate_counts
        want_d, want_i = table.search(q_act, q_emb, 64)
        _same(dev, D, want_d)
        _same(dev, I, want_i)
        _same(dev, counts, table.candidate_counts)


@case
def case_sparse_hash_table_with_host_exclude_rows(dev: Device) -> None:
    """GPU queries with ``exclude`` rows on the host: the rows go over once."""
    act, emb, ids = _table_data(2, n=1000)
    table = qk.SparseHashTable(32, 2).add(act, emb, ids=ids)
    exclude = ids[:8, None]
    d_act, d_emb = dev.put(act[:8]), dev.put(emb[:8])
    table.search(d_act, d_emb, 4)  # the mirror
    with dev.watch(htod=3, dtoh=4):  # the rows and the sorted ids; 4 validation scalars
        D, I = table.search(d_act, d_emb, 4, exclude=exclude)
    want_d, want_i = table.search(act[:8], emb[:8], 4, exclude=exclude)
    _same(dev, D, want_d)
    _same(dev, I, want_i)
    assert not (dev.get(I) == ids[:8, None]).any()


@case
def case_sparse_hash_table_expands_like_the_cpu(dev: Device) -> None:
    act = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    emb = np.arange(4, dtype=np.float32)[:, None]
    table = qk.SparseHashTable(2, 1).add(act, emb)
    _, I = table.search(dev.put(np.array([[1.0, 0.5]])), dev.put(np.array([[0.0]], np.float32)),
                        3)
    assert dev.get(I).tolist() == [[0, 1, 2]]
    assert dev.get(table.candidate_counts).tolist() == [4]


@case
def case_sparse_hash_table_filtered_and_float16(dev: Device) -> None:
    """What the probe kernel does not take (include, one exclude for every query, float16
    storage, topk above 64) runs on host copies and equals the CPU."""
    act, emb, ids = _table_data(2, n=2000)
    table = qk.SparseHashTable(32, 2).add(act, emb, ids=ids)
    half = qk.SparseHashTable(32, 2, storage="float16").add(act, emb, ids=ids)
    q_act, q_emb = act[:12], emb[:12]
    d_act, d_emb = dev.put(q_act), dev.put(q_emb)
    for index, topk, kwargs in ((table, 10, {"include": ids[::2]}),
                                (table, 10, {"exclude": ids[::3]}),
                                (table, 100, {}), (half, 10, {})):
        device_kwargs = {name: dev.put(value) for name, value in kwargs.items()}
        D, I = index.search(d_act, d_emb, topk, **device_kwargs)
        want_d, want_i = index.search(q_act, q_emb, topk, **kwargs)
        _same(dev, D, want_d)
        _same(dev, I, want_i)


@case
def case_hash_tables_add_from_device(dev: Device) -> None:
    """Both tables are built on the host: device input comes down once per array."""
    act, emb, ids = _table_data(1, n=600)
    level2 = act[:, ::-1].copy()
    d_act, d_level2, d_emb, d_ids = (dev.put(a) for a in (act, level2, emb, ids))
    table, cascade = qk.SparseHashTable(32, 2), qk.HierarchicalHashTable(32, 2)
    with dev.watch(htod=0, dtoh=3, dtoh_bytes=act.nbytes + emb.nbytes + ids.nbytes):
        table.add(d_act, d_emb, ids=d_ids)
    with dev.watch(htod=0, dtoh=3, dtoh_bytes=act.nbytes + level2.nbytes + emb.nbytes):
        cascade.add(d_act, d_level2, d_emb)
    host_table = qk.SparseHashTable(32, 2).add(act, emb, ids=ids)
    host_cascade = qk.HierarchicalHashTable(32, 2).add(act, level2, emb)
    for got, want in ((table.search(act[:5], emb[:5], 4), host_table.search(act[:5], emb[:5], 4)),
                      (cascade.search(act[:5], level2[:5], emb[:5], 4),
                       host_cascade.search(act[:5], level2[:5], emb[:5], 4))):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


@case
def case_hierarchical_hash_table(dev: Device) -> None:
    rng = np.random.default_rng(10)
    labels = rng.integers(0, 8, 3000)
    level1 = rng.standard_normal((8, 12))[labels] * 2 + rng.standard_normal((3000, 12))
    level2 = rng.standard_normal((8, 12))[labels] * 2 + rng.standard_normal((3000, 12))
    emb = rng.standard_normal((3000, 8)).astype(np.float32)
    table = qk.HierarchicalHashTable(12, 2).add(level1, level2, emb)
    q1, q2, qe = level1[:12], level2[:12], emb[:12]
    exclude = np.arange(12)[:, None]
    d1, d2, de, dx = dev.put(q1), dev.put(q2), dev.put(qe), dev.put(exclude)
    # the compound scores are made on the device; the table mirrored once (7 + 2 sorted ids);
    # out: finiteness of the three query arrays and of the compound scores (the compound
    # table's own check), exclude's smallest id
    with dev.watch(htod=9, dtoh=5, kernels=("probe",)):
        D, I = table.search(d1, d2, de, 10, exclude=dx)
    counts = table.candidate_counts
    want_d, want_i = table.search(q1, q2, qe, 10, exclude=exclude)
    _same(dev, D, want_d)
    _same(dev, I, want_i)
    _same(dev, counts, table.candidate_counts)


# ------------------------------------------------------------------ streams


@case
def case_every_launch_on_the_callers_stream(dev: Device) -> None:
    rng = np.random.default_rng(11)
    scores = rng.integers(-9, 10, (8, 24, 16)).astype(np.float64)
    db, queries = _binary_data(64, n=500)
    index, x, _ = _pq_index(8, "l2")
    act, emb, _ = _table_data(2, n=1000)
    table = qk.SparseHashTable(32, 2).add(act, emb)
    on_device = [dev.put(a) for a in (scores, db, queries, x[:8], act[:8], emb[:8])]
    with dev.stream() as stream, dev.watch(htod=None, dtoh=None, stream=stream):
        codes = qk.solve_sparse_codes(on_device[0], 2, 3.0)
        D, I = qk.hamming_topk(on_device[2], on_device[1], 5)
        pD, pI = index.search(on_device[3], 5)
        tD, tI = table.search(on_device[4], on_device[5], 5)
    _same(dev, codes, qk.solve_sparse_codes(scores, 2, 3.0))
    for (got_d, got_i), want in (((D, I), qk.hamming_topk(queries, db, 5)),
                                 ((pD, pI), index.search(x[:8], 5)),
                                 ((tD, tI), table.search(act[:8], emb[:8], 5))):
        _same(dev, got_d, want[0])
        _same(dev, got_i, want[1])
