"""Safe to share: every index searched from many threads at once right after add or load gives
what one thread gives; byte order and alignment never change an answer; Numba's workqueue
threading layer never aborts the process."""

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import qkernels as qk

THREADS = 4


def _data(seed=0, n=6000, d=48, dim=16):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 40, n)
    act = rng.standard_normal((40, d))[labels] * 2 + rng.standard_normal((n, d))
    emb = (rng.standard_normal((40, dim))[labels] * 3 + rng.standard_normal((n, dim)))
    return act, emb.astype(np.float32)


def _indexes(tmp_path):
    """Each index type freshly added and freshly loaded, with a search function per index."""
    act, emb = _data()
    act2, _ = _data(seed=1)
    q = slice(0, 200)
    fresh = []

    def table():
        return qk.SparseHashTable(act.shape[1], 2).add(act, emb)

    def hierarchical():
        return qk.HierarchicalHashTable(act.shape[1], 2).add(act, act2, emb)

    pq = qk.ProductQuantizer(emb.shape[1], 4, 6).train(emb)

    def pq_index():
        return qk.PQIndex(pq).add(emb)

    pq4 = qk.ProductQuantizer(emb.shape[1], 4, 4).train(emb)

    def fastscan_index():  # the fast-scan layout is built lazily, under the lock
        return qk.PQIndex(pq4).add(emb)

    codes = qk.pack_bits(act)

    def binary():
        return qk.BinaryIndex(act.shape[1]).add(codes, emb)

    searches = {
        "SparseHashTable": (table, lambda t: t.search(act[q], emb[q], 12,
                                                      exclude=np.arange(200)[:, None])),
        "HierarchicalHashTable": (hierarchical, lambda t: t.search(act[q], act2[q], emb[q], 12)),
        "PQIndex": (pq_index, lambda t: t.search(emb[q], 12)),
        "PQIndex-symmetric": (pq_index, lambda t: t.search(emb[q], 12, symmetric=True)),
        "PQIndex-fastscan": (fastscan_index, lambda t: t.search(emb[q], 12)),
        "BinaryIndex": (binary, lambda t: t.search(codes[q], 12)),
        "BinaryIndex-tiebreak": (binary, lambda t: t.search(codes[q], 12, emb[q])),
    }
    for name, (make, search) in searches.items():
        fresh.append((name, "added", make, search))

        def loaded(make=make, name=name):
            path = tmp_path / f"{name}.npz"
            make().save(path)
            return type(make()).load(path)

        fresh.append((name, "loaded", loaded, search))
    return fresh


def _concurrently(search, index):
    barrier = threading.Barrier(THREADS)
    results = [None] * THREADS
    errors = []

    def run(i):
        try:
            barrier.wait()  # the threads really start together, all finding the index unbuilt
            results[i] = search(index)
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_first_searches_from_many_threads_equal_one_thread(tmp_path):
    for name, how, make, search in _indexes(tmp_path):
        expected = search(make())
        for _trial in range(3):
            index = make()
            for D, I in _concurrently(search, index):
                np.testing.assert_array_equal(I, expected[1], err_msg=f"{name} {how}")
                np.testing.assert_array_equal(D, expected[0], err_msg=f"{name} {how}")
            D, I = search(index)  # and the index is not corrupted for later searches
            np.testing.assert_array_equal(I, expected[1], err_msg=f"{name} {how}, later")


def _swapped(x):
    return x.astype(x.dtype.newbyteorder(">" if sys.byteorder == "little" else "<"))


def _unaligned(x):
    buffer = bytearray(x.nbytes + 1)
    out = np.frombuffer(buffer, dtype=x.dtype, offset=1).reshape(x.shape)
    out[...] = x
    assert not out.flags.aligned or x.dtype.itemsize == 1
    return out


@pytest.mark.parametrize("convert", [_swapped, _unaligned], ids=["byteswapped", "unaligned"])
def test_byte_order_and_alignment_never_change_an_answer(convert):
    act, emb = _data(n=800)
    act = act.astype(np.float32)
    rng = np.random.default_rng(3)
    scores = rng.standard_normal((2, 12, 10))
    pq_codebooks = rng.standard_normal((4, 256, 4)).astype(np.float32)

    def calls(f):
        pq = qk.ProductQuantizer(16, 4, 4).train(f(emb))
        pq8 = qk.ProductQuantizer(16, 4, 8).set_codebooks(f(pq_codebooks))
        codes = qk.pack_bits(f(act))

        def removed(index, ids):
            assert index.remove_ids(ids) == ids.shape[0]
            return index
        return {
            "solve_sparse_codes": qk.solve_sparse_codes(f(scores), 2),
            "solve_sparse_codes-2d": qk.solve_sparse_codes(f(scores[0]), 3),
            "sparse_code_objective": qk.sparse_code_objective(
                f(scores[0]), f(qk.solve_sparse_codes(scores[0], 3))),
            "solve_hierarchical_codes": qk.solve_hierarchical_codes(
                f(scores), f(scores[::-1].copy()), 2),
            "table.add+search": qk.SparseHashTable(48, 2).add(f(act), f(emb)).search(
                f(act[:50]), f(emb[:50]), 5, exclude=f(np.arange(50)[:, None])),
            "table.add_codes": qk.SparseHashTable(48, 2).add_codes(
                f(np.stack([np.arange(800) % 48, (np.arange(800) + 1) % 48], 1)), f(emb)
            ).search(f(act[:50]), f(emb[:50]), 5),
            "hierarchical": qk.HierarchicalHashTable(48, 2).add(f(act), f(act[::-1].copy()),
                                                                f(emb)).search(
                f(act[:50]), f(act[:50]), f(emb[:50]), 5),
            "pq.encode": pq.encode(f(emb)),
            "pq.decode": pq.decode(f(pq.encode(emb).astype(np.int64))),
            "PQIndex": qk.PQIndex(pq).add(f(emb)).search(f(emb[:20]), 5),
            "pack_bits": codes,
            "hamming_topk": qk.hamming_topk(f(codes[:30]), f(codes), 5,
                                            tiebreak=(f(emb[:30]), f(emb))),
            "BinaryIndex": qk.BinaryIndex(48).add(f(codes)).search(f(codes[:30]), 5),
            "ITQ": qk.ITQ(8).fit(f(emb)).encode(f(emb)),
            "BinaryIndex features, ids, include": qk.BinaryIndex(48).add(
                f(codes), f(emb), ids=f(np.arange(800) * 3)).search(
                f(codes[:30]), 5, f(emb[:30]), include=f(np.arange(0, 2400, 6))),
            "table float16, ids, remove_ids": removed(
                qk.SparseHashTable(48, 2, storage="float16").add(
                    f(act), f(emb), ids=f(np.arange(800) + 10**12)),
                f(np.arange(0, 800, 7) + 10**12)).search(f(act[:50]), f(emb[:50]), 5),
            "table PQ storage": qk.SparseHashTable(48, 2, storage=pq8).add(f(act), f(emb)).search(
                f(act[:50]), f(emb[:50]), 5, include=f(np.arange(0, 800, 2))),
            "PQIndex 8 bits, add_codes": qk.PQIndex(pq8, "ip").add_codes(
                f(pq8.encode(emb).astype(np.uint16))).search(f(emb[:20]), 5,
                                                            exclude=f(np.arange(20)[:, None])),
            "metrics.precision_at_k": qk.metrics.precision_at_k(
                f(np.arange(40).reshape(10, 4)), f(np.arange(40) % 3), f(np.arange(10) % 3), 4),
        }

    clean, other = calls(lambda x: x), calls(convert)
    for name, value in clean.items():
        for a, b in zip(np.atleast_1d(value) if not isinstance(value, tuple) else value,
                        other[name] if isinstance(other[name], tuple) else
                        np.atleast_1d(other[name]), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("kind", ["fast scan", "binary"])
def test_a_short_include_search_takes_no_lock(kind):
    """A search allowing few items reads a snapshot of them of its own, whose layouts (the fast
    scan's blocks, the Hamming scan's word columns) it builds without the index's lock: it
    finishes while another thread holds that lock (as a first search building the index's
    layouts does), and answers as the filter over every item does."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2000, 16)).astype(np.float32)
    if kind == "fast scan":
        index = qk.PQIndex(qk.ProductQuantizer(16, 8, 4).train(x)).add(x)
        queries = x[:8]
    else:
        index = qk.BinaryIndex(16).add(qk.pack_bits(x > 0))
        queries = qk.pack_bits(x[:8] > 0)
    few = rng.choice(2000, 10, replace=False)
    # what the index's snapshot keeps (its layouts, its ids in order), built before the lock
    # is taken; the first search of few items builds its own snapshot's layouts
    index.search(queries, 5, include=few[:1])
    held, release = threading.Event(), threading.Event()

    def hold():
        with index._lock:
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    found = {}
    searcher = threading.Thread(
        target=lambda: found.update(result=index.search(queries, 5, include=few)))
    try:
        searcher.start()
        searcher.join(10)
        assert not searcher.is_alive(), "the search waited for the index's lock"
    finally:
        release.set()
        holder.join()
        searcher.join()
    # the filter over every item (allowing all but the refused ones) gives the same answer
    refused = np.setdiff1d(np.arange(2000), few)
    D, I = index.search(queries[:1], 5, exclude=refused)
    np.testing.assert_array_equal(found["result"][1][:1], I)
    np.testing.assert_array_equal(found["result"][0][:1], D)


def test_workqueue_threading_layer_serialises_instead_of_aborting():
    script = textwrap.dedent("""
        import threading, numba, numpy as np, qkernels as qk
        rng = np.random.default_rng(0)
        x = rng.standard_normal((4000, 16)).astype(np.float32)
        idx = qk.PQIndex(qk.ProductQuantizer(16, 4, 6).train(x)).add(x)
        table = qk.SparseHashTable(16, 2).add(x, x)
        codes = qk.pack_bits(x)
        expected = [idx.search(x[:100], 5), table.search(x[:100], x[:100], 5),
                    qk.hamming_topk(codes[:100], codes, 5)]
        barrier, wrong = threading.Barrier(4), []
        def run():
            barrier.wait()
            for _ in range(3):
                got = [idx.search(x[:100], 5), table.search(x[:100], x[:100], 5),
                       qk.hamming_topk(codes[:100], codes, 5)]
                wrong.extend(not np.array_equal(g[1], e[1]) for g, e in zip(got, expected))
        threads = [threading.Thread(target=run) for _ in range(4)]
        [t.start() for t in threads]; [t.join() for t in threads]
        print(numba.threading_layer(), sum(wrong))
    """)
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["workqueue", "0"]


def test_indexes_copy_and_pickle_with_their_own_lock(tmp_path):
    import copy
    import pickle

    for name, _how, make, search in _indexes(tmp_path)[::2]:
        index = make()
        expected = search(index)
        for clone in (copy.deepcopy(index), pickle.loads(pickle.dumps(index))):
            inner = getattr(index, "_table", index)  # a HierarchicalHashTable's own table
            assert getattr(clone, "_table", clone)._lock is not inner._lock, name
            # a copy's snapshot is read-only as the original's (each kernel compiled once)
            arrays = getattr(clone, "_table", clone)._state.arrays
            assert not [key for key, a in arrays.items()
                        if isinstance(a, np.ndarray) and a.flags.writeable], name
            np.testing.assert_array_equal(search(clone)[1], expected[1], err_msg=name)


@pytest.fixture
def fake_cupy(monkeypatch):
    """A stand-in for cupy that only says which device is current: enough to exercise the
    keying of device mirrors (LazyState._device_mirror) without a GPU."""
    import types

    current = types.SimpleNamespace(id=0)
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(Device=lambda: types.SimpleNamespace(id=current.id))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    return current


@pytest.mark.parametrize("kind", ["SparseHashTable", "PQIndex", "BinaryIndex"])
def test_device_mirrors_are_remade_after_an_add_and_kept_per_device(kind, fake_cupy):
    act, emb = _data(n=500)
    index = {"SparseHashTable": lambda: qk.SparseHashTable(act.shape[1], 2).add(act, emb),
             "PQIndex": lambda: qk.PQIndex(qk.ProductQuantizer(16, 4, 4).train(emb)).add(emb),
             "BinaryIndex": lambda: qk.BinaryIndex(act.shape[1]).add(qk.pack_bits(act))}[kind]()
    builds = []

    def mirror():
        return index._device_mirror(lambda: builds.append(len(builds)) or len(builds))

    assert mirror() == mirror() == 1
    fake_cupy.id = 1
    assert mirror() == 2
    fake_cupy.id = 0
    assert mirror() == 1  # the first device's mirror is kept
    if kind == "SparseHashTable":
        index.add(act[:5], emb[:5])
    elif kind == "PQIndex":
        index.add(emb[:5])
    else:
        index.add(qk.pack_bits(act[:5]))
    assert mirror() == 3  # never the mirror of the data before the add
    fake_cupy.id = 1
    assert mirror() == 4


def test_device_mirror_is_built_once_under_many_threads(fake_cupy):
    act, _ = _data(n=500)
    index = qk.BinaryIndex(act.shape[1]).add(qk.pack_bits(act))
    builds, start = [], threading.Barrier(THREADS)

    def build():
        builds.append(1)
        return object()

    def search():
        start.wait()
        return index._device_mirror(build)

    threads_out = []
    workers = [threading.Thread(target=lambda: threads_out.append(search()))
               for _ in range(THREADS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(builds) == 1 and len({id(m) for m in threads_out}) == 1


def test_pq_mirrors_and_tables_follow_the_codebooks(fake_cupy):
    """A quantizer whose codebooks change (set_codebooks, train) is never served stale: the
    symmetric tables and the device mirror key on codebooks_version, not on the array's id,
    and set_codebooks copies, so the caller writing into its array later changes nothing."""
    _, emb = _data(n=800)
    pq = qk.ProductQuantizer(16, 4, 4).train(emb)
    index = qk.PQIndex(pq).add(emb)
    versions = {pq.codebooks_version}
    codebooks = pq.codebooks.copy()
    before = index.search(emb[:50], 10, symmetric=True)
    keys = []
    index._device_mirror(lambda: keys.append(pq.codebooks_version), (pq.codebooks_version,))
    codebooks[:, :, :] = codebooks[:, ::-1, :]  # the same array, other contents
    pq.set_codebooks(codebooks)
    codebooks[:] = 0  # after the call: not seen
    assert pq.codebooks.any()
    versions.add(pq.codebooks_version)
    fresh = qk.PQIndex(qk.ProductQuantizer(16, 4, 4).set_codebooks(pq.codebooks))
    fresh.add_codes(index.codes)  # the same stored codes, tables from the new codebooks
    got = index.search(emb[:50], 10, symmetric=True)
    want = fresh.search(emb[:50], 10, symmetric=True)
    np.testing.assert_array_equal(got[1], want[1])
    assert not np.array_equal(got[0], before[0])
    index._device_mirror(lambda: keys.append(pq.codebooks_version), (pq.codebooks_version,))
    assert len(keys) == 2  # remade for the new codebooks
    pq.train(emb[::-1])
    versions.add(pq.codebooks_version)
    other = qk.ProductQuantizer(16, 4, 4).train(emb)  # versions are unique across quantizers
    assert len(versions | {other.codebooks_version}) == 4


# ------------------------------------------------------------------ searches during changes

def _changing(tmp_path):
    """Per index kind: (make an index, a search, the changes that may run meanwhile)."""
    act, emb = _data(n=3000)
    extra_act, extra_emb = _data(seed=5, n=400)
    q = slice(0, 120)
    pq4 = qk.ProductQuantizer(emb.shape[1], 4, 4).train(emb)
    pq6 = qk.ProductQuantizer(emb.shape[1], 4, 6).train(emb)
    codes, extra_codes = qk.pack_bits(act), qk.pack_bits(extra_act)

    def changes(index, add, make_other):
        return {
            "add": lambda: add(index),
            "remove": lambda: index.remove_ids(np.arange(0, 3000, 3)),
            "reset": index.reset,
            "merge": lambda: index.merge_from(make_other()),
        }

    kinds = {
        "SparseHashTable": (
            lambda: qk.SparseHashTable(act.shape[1], 2).add(act, emb),
            lambda t: t.search(act[q], emb[q], 12, exclude=np.arange(120)[:, None]),
            lambda t: t.add(extra_act, extra_emb),
            lambda: qk.SparseHashTable(act.shape[1], 2).add(extra_act, extra_emb)),
        "SparseHashTable-float16": (  # (the build gathers float16 rows as their bits)
            lambda: qk.SparseHashTable(act.shape[1], 2, storage="float16").add(act, emb),
            lambda t: t.search(act[q], emb[q], 12, include=np.arange(0, 3400, 2)),
            lambda t: t.add(extra_act, extra_emb),
            lambda: qk.SparseHashTable(act.shape[1], 2, storage="float16").add(extra_act,
                                                                               extra_emb)),
        "PQIndex": (
            lambda: qk.PQIndex(pq6).add(emb),
            lambda t: t.search(emb[q], 12, include=np.arange(0, 3400, 2)),
            lambda t: t.add(extra_emb),
            lambda: qk.PQIndex(pq6).add(extra_emb)),
        "PQIndex-fastscan": (
            lambda: qk.PQIndex(pq4).add(emb),
            lambda t: t.search(emb[q], 12),
            lambda t: t.add(extra_emb),
            lambda: qk.PQIndex(pq4).add(extra_emb)),
        "BinaryIndex": (
            lambda: qk.BinaryIndex(act.shape[1]).add(codes),
            lambda t: t.search(codes[q], 12, exclude=np.arange(0, 3000, 7)),
            lambda t: t.add(extra_codes),
            lambda: qk.BinaryIndex(act.shape[1]).add(extra_codes)),
        "BinaryIndex-features": (
            lambda: qk.BinaryIndex(act.shape[1]).add(codes, emb),
            lambda t: t.search(codes[q], 12, emb[q]),
            lambda t: t.add(extra_codes, extra_emb),
            lambda: qk.BinaryIndex(act.shape[1]).add(extra_codes, extra_emb)),
    }
    for name, (make, search, add, make_other) in kinds.items():
        for change in ("add", "remove", "reset", "merge"):
            yield name, change, make, search, lambda i, c=change, a=add, m=make_other: (
                changes(i, a, m)[c]())


def test_a_search_during_a_change_sees_the_index_before_or_after_it(tmp_path):
    """Threads search while one thread changes the index: every result is the answer of the
    index before the change or after it (each search reads one snapshot), never a mix."""
    for name, change, make, search, apply in _changing(tmp_path):
        before = make()
        after = make()
        apply(after)
        answers = [search(before), search(after)]
        for _trial in range(2):
            index = make()
            search(index)  # built: the change races with searches, not with the first build
            barrier = threading.Barrier(THREADS + 1)
            results, errors = [], []

            def searcher(index=index, barrier=barrier, results=results, errors=errors,
                         search=search):
                try:
                    barrier.wait()
                    for _ in range(6):
                        results.append(search(index))
                except Exception as error:  # surfaced below
                    errors.append(error)

            def writer(index=index, barrier=barrier, errors=errors, apply=apply):
                try:
                    barrier.wait()
                    apply(index)
                except Exception as error:  # surfaced below
                    errors.append(error)

            threads = [threading.Thread(target=searcher) for _ in range(THREADS)]
            threads.append(threading.Thread(target=writer))
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors, errors
            seen = set()
            for D, I in results:
                which = [a for a, (aD, aI) in enumerate(answers)
                         if np.array_equal(I, aI) and np.array_equal(D, aD)]
                assert which, f"{name} {change}: a search saw neither state"
                seen.add(which[0])
            final = search(index)
            np.testing.assert_array_equal(final[1], answers[1][1], err_msg=f"{name} {change}")
