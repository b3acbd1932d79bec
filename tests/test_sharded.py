"""ShardedIndex under torch.distributed (2 gloo processes): every rank returns what one index
over the union of the shards returns, ties included; bad input is an error on every rank."""

from __future__ import annotations

import datetime
import json
import os
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import qkernels as qk
from qkernels.distributed import ShardedIndex
from tests import cupy_standin, emulation, reference

WORLD = 2
SIZES = (110, 190)  # uneven shards
NUM_BUCKETS, K = 8, 2
DIM = 4
NUM_QUERIES = 21
CHANGED_REMOVALS = (3, 5)  # local ids each rank removes after adding one item
TOPKS = (1, 16, 200, 400)  # 200: the whole table probes more than k buckets; 400 > all items


def _data():
    """The union's items and the queries; deterministic, so every process makes the same."""
    rng = np.random.default_rng(7)
    n = sum(SIZES)
    return {
        # small integers: many exactly equal distances, some across the two shards
        "emb": rng.integers(0, 3, (n, DIM)).astype(np.float32),
        "act": rng.standard_normal((n, NUM_BUCKETS)),
        "act1": rng.standard_normal((n, NUM_BUCKETS)),
        "act2": rng.standard_normal((n, NUM_BUCKETS)),
        "q_emb": rng.integers(0, 3, (NUM_QUERIES, DIM)).astype(np.float32),
        "q_act": rng.standard_normal((NUM_QUERIES, NUM_BUCKETS)),
        "q_act1": rng.standard_normal((NUM_QUERIES, NUM_BUCKETS)),
        "q_act2": rng.standard_normal((NUM_QUERIES, NUM_BUCKETS)),
        # excluded global ids, on both shards, with -1 padding
        "exclude": np.where(np.arange(3)[None, :] < 2 + np.arange(NUM_QUERIES)[:, None] % 2,
                            np.stack([rng.choice(n, 3, replace=False)
                                      for _ in range(NUM_QUERIES)]), -1),
        # PQ: rows repeated, so that whole codes (and distances) repeat
        "pq_x": rng.standard_normal((40, 8)).astype(np.float32)[rng.integers(0, 40, n)],
        "pq_q": rng.standard_normal((NUM_QUERIES, 8)).astype(np.float32),
        # binary: 12 bits, so Hamming distances tie a lot
        "bits": rng.integers(0, 2, (n, 12)).astype(np.uint8),
        "q_bits": rng.integers(0, 2, (NUM_QUERIES, 12)).astype(np.uint8),
        "feat": rng.integers(0, 3, (n, 3)).astype(np.float32),
        "q_feat": rng.integers(0, 3, (NUM_QUERIES, 3)).astype(np.float32),
        # a table's PQ storage of 9 bits (uint16 codes): integer codewords, equal distances
        "table_codebooks": rng.integers(-2, 3, (2, 512, 2)).astype(np.float32),
        # allowed global ids, on both shards: few (each shard searches them alone) and many
        # (each shard filters its items); a generator of their own keeps the data above
        **{f"include_{share}": np.random.default_rng(8).choice(n, size, replace=False)
           for share, size in (("few", 12), ("many", 180))},
    }


def _part(rank: int) -> slice:
    start = sum(SIZES[:rank])
    return slice(start, start + SIZES[rank])


def _indexes(d, rows, codebooks):
    """The four index types (five configurations) over the items ``rows``."""
    pq = qk.ProductQuantizer(8, 4, 4).set_codebooks(codebooks)
    return {
        "table": qk.SparseHashTable(NUM_BUCKETS, K).add(d["act"][rows], d["emb"][rows]),
        "table_ip": qk.SparseHashTable(NUM_BUCKETS, K, "ip").add(d["act"][rows],
                                                                 d["emb"][rows]),
        "hierarchical": qk.HierarchicalHashTable(NUM_BUCKETS, K).add(
            d["act1"][rows], d["act2"][rows], d["emb"][rows]),
        # compressed re-ranking: float16 rows (thirds, rounded) and 9-bit PQ codes
        "table_f16": qk.SparseHashTable(NUM_BUCKETS, K, storage="float16").add(
            d["act"][rows], d["emb"][rows] / 3),
        "table_pq": qk.SparseHashTable(NUM_BUCKETS, K, storage=qk.ProductQuantizer(
            DIM, 2, 9).set_codebooks(d["table_codebooks"])).add(d["act"][rows], d["emb"][rows]),
        "pq": qk.PQIndex(pq).add(d["pq_x"][rows]),
        "pq_ip": qk.PQIndex(pq, "ip").add(d["pq_x"][rows]),
        # the fast scan keeping topk by rounded sum (rerank=topk), or none (rerank=0); and the
        # exact scan of the same 4-bit codes
        "pq_rerank_topk": qk.PQIndex(pq).add(d["pq_x"][rows]),
        "pq_plain_ip": qk.PQIndex(pq, "ip").add(d["pq_x"][rows]),
        "pq_exact": qk.PQIndex(pq, fast_scan=False).add(d["pq_x"][rows]),
        "binary": qk.BinaryIndex(12).add(qk.pack_bits(d["bits"][rows])),
        "binary_features": qk.BinaryIndex(12).add(qk.pack_bits(d["bits"][rows]),
                                                  d["feat"][rows]),
    }


def _searches(d, name, topk, queries=slice(None)):
    """(args, kwargs) of the search of index ``name``."""
    if name in ("table", "table_ip"):
        return (d["q_act"][queries], d["q_emb"][queries], topk), {
            "exclude": d["exclude"][queries]}
    if name in ("table_f16", "table_pq"):
        return (d["q_act"][queries], d["q_emb"][queries] / (3 if name == "table_f16" else 1),
                topk), {"exclude": d["exclude"][queries]}
    if name == "hierarchical":
        return (d["q_act1"][queries], d["q_act2"][queries], d["q_emb"][queries], topk), {
            "exclude": d["exclude"][queries]}
    if name in ("pq", "pq_ip", "pq_exact"):
        return (d["pq_q"][queries], topk), {}
    if name in ("pq_rerank_topk", "pq_plain_ip"):
        return (d["pq_q"][queries], topk), {"rerank": topk if name == "pq_rerank_topk" else 0}
    if name == "binary":
        return (qk.pack_bits(d["q_bits"][queries]), topk), {}
    return (qk.pack_bits(d["q_bits"][queries]), topk), {"query_features": d["q_feat"][queries]}


INCLUDES = ("include_few", "include_many")


def _included(d, name, share):
    """(args, kwargs) of the search of index ``name`` with ``include`` (of ``share``) in place
    of any exclude."""
    args, kwargs = _searches(d, name, 16)
    kwargs = {key: value for key, value in kwargs.items() if key != "exclude"}
    return args, {**kwargs, "include": d[share]}


def _error(fn) -> str:
    try:
        fn()
    except Exception as error:  # recorded for the parent's assertions
        return f"{type(error).__name__}: {error}"
    return "no error"


def _own_queries(name: str) -> tuple[slice, slice]:
    """Each rank's own queries in the all_ranks_queries=False searches: rank 1 has none for the
    binary index and for the tables that exclude ids (an exclude of shape (0, m))."""
    if name in ("binary", "table_ip", "hierarchical"):
        return slice(0, 21), slice(0, 0)
    return slice(0, 5), slice(5, 21)


def _rank(rank, init_file, codebooks, out_dir, world=WORLD):
    """One rank of the scenarios. ``world=1``: a single process runs every search a rank runs
    (not the refusals, which need two ranks), so that the kernels it compiles are in Numba's and
    the emulation's caches before the two ranks start; else both would compile them at once."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=120))
    out: dict[str, np.ndarray] = {}
    errors: dict[str, str] = {}
    try:
        d = _data()
        shards = _indexes(d, _part(rank) if world > 1 else slice(None), codebooks)
        for name, shard in shards.items():
            index = ShardedIndex(shard)
            # every topk, then the include filters
            searches = [(topk, _searches(d, name, topk)) for topk in TOPKS]
            searches += [(share, _included(d, name, share)) for share in INCLUDES]
            for key, (args, kwargs) in searches:
                D, I = index.search(*args, **kwargs)
                out[f"{name}/{key}/D"], out[f"{name}/{key}/I"] = D, I
                if name in TABLES:
                    out[f"{name}/{key}/counts"] = index.candidate_counts
            # each rank its own queries, against all shards (rank 1 none for some)
            mine = _own_queries(name)
            args, kwargs = _searches(d, name, 16, mine[rank])
            D, I = index.search(*args, **kwargs, all_ranks_queries=False)
            out[f"{name}/own/D"], out[f"{name}/own/I"] = D, I
            if name == "table":
                out["table/own/counts"] = index.candidate_counts
            if name == "pq":  # symmetric distance and torch tensors
                D, I = index.search(torch.from_numpy(d["pq_q"]), 16, symmetric=True)
                assert isinstance(D, torch.Tensor) and isinstance(I, torch.Tensor)
                out["pq/sdc/D"], out["pq/sdc/I"] = D.numpy(), I.numpy()
            # save and load (saving warns of nothing)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                index.save(f"{out_dir}/saved-{name}")
            errors[f"{name}/save warnings"] = [str(w.message) for w in caught]
            loaded = ShardedIndex.load(f"{out_dir}/saved-{name}")
            args, kwargs = _searches(d, name, 16)
            D, I = loaded.search(*args, **kwargs)
            out[f"{name}/loaded/D"], out[f"{name}/loaded/I"] = D, I

        # GPU shards: cupy queries under the stand-in (the kernels emulated; gloo's exchange
        # staged through the host)
        if emulation.compiler() is not None:
            with cupy_standin.installed() as ledger:
                for name in GPU_NAMES:
                    args, kwargs = _on_standin(*_searches(d, name, 16))
                    D, I = ShardedIndex(shards[name]).search(*args, **kwargs)
                    assert isinstance(D, cupy_standin.ndarray), type(D)
                    out[f"{name}/gpu/D"], out[f"{name}/gpu/I"] = D.get(), I.get()
                errors["gpu kernels"] = sorted({launch.function for launch in ledger.launches})

        # several threads of each rank searching at once: their exchanges must not interleave
        from concurrent.futures import ThreadPoolExecutor

        threaded = ShardedIndex(shards["table"])
        args, kwargs = _searches(d, "table", 200)
        with ThreadPoolExecutor(4) as pool:
            found = list(pool.map(lambda _: threaded.search(*args, **kwargs), range(4)))
        out["threads/D"] = np.stack([D for D, _ in found])
        out["threads/I"] = np.stack([I for _, I in found])
        if world == 1:
            return

        # refusals: each must be an error on both ranks, never a hang
        table = shards["table"]
        # an empty shard takes part (rank 1 holds nothing)
        with_empty = ShardedIndex(table if rank == 0 else qk.SparseHashTable(NUM_BUCKETS, K))
        out["empty/D"], out["empty/I"] = with_empty.search(*_searches(d, "table", 16)[0],
                                                           **_searches(d, "table", 16)[1])
        # an empty shard of an index with tie-break features (rank 1's emptied by remove_ids)
        featured = shards["binary_features"]
        if rank == 1:
            featured.remove_ids(featured.ids)
        out["empty features/D"], out["empty features/I"] = ShardedIndex(featured).search(
            *_searches(d, "binary_features", 16)[0], **_searches(d, "binary_features", 16)[1])
        errors["k"] = _error(lambda: ShardedIndex(
            table if rank == 0 else qk.SparseHashTable(NUM_BUCKETS, 3).add(
                d["act"][_part(1)], d["emb"][_part(1)])))
        errors["type"] = _error(lambda: ShardedIndex(table if rank == 0 else shards["pq"]))
        errors["not an index"] = _error(lambda: ShardedIndex(table if rank == 0 else "table"))
        sharded = ShardedIndex(table)
        other = d["q_emb"] + (rank == 1)
        errors["queries differ"] = _error(lambda: sharded.search(d["q_act"], other, 4))
        errors["topk differs"] = _error(lambda: sharded.search(d["q_act"], d["q_emb"],
                                                               4 + rank))
        wrong = d["exclude"] if rank == 0 else d["exclude"][:3]
        errors["bad input on one rank"] = _error(lambda: sharded.search(
            d["q_act"], d["q_emb"], 4, exclude=wrong, all_ranks_queries=False))
        errors["dtypes differ"] = _error(lambda: sharded.search(
            d["q_act"], d["q_emb"].astype(np.float64 if rank else np.float32), 4,
            all_ranks_queries=False))
        # the shards change between searches: the next search agrees on them again
        table.add(d["act"][:1], d["emb"][:1])
        table.remove_ids(np.array(CHANGED_REMOVALS))
        out["changed/D"], out["changed/I"] = sharded.search(*_searches(d, "table", 16)[0],
                                                            **_searches(d, "table", 16)[1])
        out["changed/sizes"] = sharded.sizes
        errors["ids"] = _error(lambda: ShardedIndex(qk.SparseHashTable(NUM_BUCKETS, K).add(
            d["act"][_part(rank)], d["emb"][_part(rank)], ids=np.arange(SIZES[rank]) + 1000)))
        def with_ids(ids):
            return qk.SparseHashTable(NUM_BUCKETS, K).add(d["act"][_part(rank)],
                                                          d["emb"][_part(rank)], ids=ids)

        # overlapping ranges, every id once: the ids travel, and nothing repeats
        errors["global ids interleaved"] = _error(lambda: ShardedIndex(
            with_ids(np.arange(SIZES[rank]) * 2 + rank), ids="global"))
        errors["global ids repeat across shards"] = _error(lambda: ShardedIndex(
            with_ids(np.arange(SIZES[rank]) + 50 * rank), ids="global"))
        dist.barrier()
        if rank == 0:  # a manifest that says the default ids are global
            path = Path(out_dir, "saved-table", "manifest.json")
            manifest = json.loads(path.read_text())
            manifest["ids"] = "global"
            path.write_text(json.dumps(manifest))
        dist.barrier()
        errors["manifest says global"] = _error(lambda: ShardedIndex.load(
            f"{out_dir}/saved-table"))
        dist.barrier()
        if rank == 0:  # a shard file that is not the one the manifest lists
            path = Path(out_dir, "saved-table", "manifest.json")
            manifest = json.loads(path.read_text())
            manifest["ids"] = "offset"
            manifest["sha256"][1] = "0" * 64
            path.write_text(json.dumps(manifest))
        dist.barrier()
        errors["tampered"] = _error(lambda: ShardedIndex.load(f"{out_dir}/saved-table"))
    except Exception:
        errors["crash"] = traceback.format_exc()
    finally:
        _written(out_dir, "rank", "errors", rank, out, errors)
        dist.destroy_process_group()


GPU_NAMES = ("table", "hierarchical", "pq", "pq_exact", "binary")


def _on_standin(args, kwargs):
    """A search's arrays as cupy stand-in arrays."""
    def put(a):
        return cupy_standin.asarray(a) if isinstance(a, np.ndarray) else a

    return [put(a) for a in args], {key: put(value) for key, value in kwargs.items()}


@pytest.fixture(scope="module")
def codebooks():
    """The 4-bit quantizer's codebooks every scenario and its union share."""
    return np.asarray(qk.ProductQuantizer(8, 4, 4).train(_data()["pq_x"]).codebooks)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, codebooks):
    """Run the scenarios once on 2 processes; each rank's results and errors."""
    tmp = tmp_path_factory.mktemp("sharded")
    warm = tmp / "one rank"
    warm.mkdir()
    one = _spawned(_rank, (str(warm / "init"), codebooks, str(warm), 1), warm, "errors", "rank",
                   600, "the one-rank run did not finish in 10 minutes (a deadlock?)", world=1)
    assert set(one[0][0]) >= {f"{name}/{topk}/I" for name in NAMES for topk in TOPKS}
    return _spawned(_rank, (str(tmp / "init"), codebooks, str(tmp)), tmp, "errors", "rank",
                    600, "the sharded processes did not finish in 10 minutes (a deadlock?)")


def _written(out_dir, results_name, errors_name, rank, out, errors) -> None:
    """A rank's ``{results_name}{rank}.npz`` and ``{errors_name}{rank}.json``, as
    :func:`_spawned` reads them."""
    np.savez(f"{out_dir}/{results_name}{rank}.npz", **out)
    with open(f"{out_dir}/{errors_name}{rank}.json", "w") as f:
        json.dump(errors, f)


def _spawned(function, args, tmp, errors_name, results_name, seconds, hang, world=WORLD):
    """Run ``function(rank, *args)`` on ``world`` processes (failing the test after ``seconds``
    with ``hang``); each rank's ``{results_name}{rank}.npz`` and ``{errors_name}{rank}.json``."""
    context = mp.spawn(function, args=args, nprocs=world, join=False)
    deadline = time.monotonic() + seconds
    while not context.join(timeout=2):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(hang)
    results = []
    for rank in range(world):
        errors = json.loads((tmp / f"{errors_name}{rank}.json").read_text())
        assert "crash" not in errors, errors["crash"]
        with np.load(tmp / f"{results_name}{rank}.npz") as f:
            results.append(({key: f[key] for key in f.files}, errors))
    return results


@pytest.fixture(scope="module")
def whole(codebooks):
    """The same indexes over all items (the union, shards in rank order)."""
    d = _data()
    return d, _indexes(d, slice(None), codebooks)


TABLES = ("table", "table_ip", "hierarchical", "table_f16", "table_pq")
NAMES = (*TABLES, "pq", "pq_ip", "pq_rerank_topk", "pq_plain_ip", "pq_exact", "binary",
         "binary_features")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("topk", TOPKS)
def test_every_rank_returns_what_one_index_returns(ranks, whole, name, topk):
    d, indexes = whole
    args, kwargs = _searches(d, name, topk)
    D, I = indexes[name].search(*args, **kwargs)
    for out, _ in ranks:
        np.testing.assert_array_equal(out[f"{name}/{topk}/I"], I)
        np.testing.assert_array_equal(out[f"{name}/{topk}/D"], D)
        if name in TABLES:
            np.testing.assert_array_equal(out[f"{name}/{topk}/counts"],
                                          indexes[name].candidate_counts)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("share", INCLUDES)
def test_every_rank_returns_what_one_index_returns_with_include(ranks, whole, name, share):
    """``include`` of few global ids (each shard searches its own few alone) or of many (each
    shard filters its items), against one index with the same filter."""
    d, indexes = whole
    args, kwargs = _included(d, name, share)
    D, I = indexes[name].search(*args, **kwargs)
    assert (I >= 0).sum() > 0
    for out, _ in ranks:
        np.testing.assert_array_equal(out[f"{name}/{share}/I"], I)
        np.testing.assert_array_equal(out[f"{name}/{share}/D"], D)
        if name in TABLES:
            np.testing.assert_array_equal(out[f"{name}/{share}/counts"],
                                          indexes[name].candidate_counts)


def test_the_cases_hold_ties_and_expansion(whole):
    """The data makes the merge's tie-breaking and the table's expansion matter."""
    d, indexes = whole
    D, I = indexes["table"].search(*_searches(d, "table", 16)[0],
                                   **_searches(d, "table", 16)[1])
    across = (I[:, 1:] >= SIZES[0]) != (I[:, :-1] >= SIZES[0])
    ties = (D[:, 1:] == D[:, :-1]) & across
    assert ties.any(), "no tie between items of different shards"
    indexes["table"].search(*_searches(d, "table", 200)[0], **_searches(d, "table", 200)[1])
    counts = indexes["table"].candidate_counts
    shard = qk.SparseHashTable(NUM_BUCKETS, K).add(d["act"][_part(0)], d["emb"][_part(0)])
    shard.search(d["q_act"], d["q_emb"], 200)
    assert (shard.candidate_counts > counts * SIZES[0] / sum(SIZES) * 1.2).any(), \
        "a shard alone would probe as many buckets as the whole table"


@pytest.mark.parametrize("name", NAMES)
def test_each_rank_its_own_queries(ranks, whole, name):
    d, indexes = whole
    mine = _own_queries(name)
    for rank, (out, _) in enumerate(ranks):
        args, kwargs = _searches(d, name, 16, mine[rank])
        D, I = indexes[name].search(*args, **kwargs)
        np.testing.assert_array_equal(out[f"{name}/own/I"], I)
        np.testing.assert_array_equal(out[f"{name}/own/D"], D)
        if name == "table":
            np.testing.assert_array_equal(out["table/own/counts"],
                                          indexes[name].candidate_counts)


def test_symmetric_distance_and_torch_tensors(ranks, whole):
    d, indexes = whole
    D, I = indexes["pq"].search(d["pq_q"], 16, symmetric=True)
    for out, _ in ranks:
        np.testing.assert_array_equal(out["pq/sdc/I"], I)
        np.testing.assert_array_equal(out["pq/sdc/D"], D)


@pytest.mark.emulated
@pytest.mark.parametrize("name", GPU_NAMES)
def test_gpu_shards_return_what_one_index_returns(ranks, whole, name):
    """Each rank's shard searched with cupy queries (tests/cupy_standin.py): the exact PQ scan
    and the Hamming scan run on the device; the tables and the 4-bit fast scan, whose exact
    merge plans probes and candidates over all shards, run on host copies; the merge is gloo's
    on the host; the answer goes back to the queries' device and equals one index's."""
    if emulation.compiler() is None:
        pytest.skip("the cupy stand-in needs g++ for the CUDA emulation")
    d, indexes = whole
    args, kwargs = _searches(d, name, 16)
    D, I = indexes[name].search(*args, **kwargs)
    for out, errors in ranks:
        np.testing.assert_array_equal(out[f"{name}/gpu/I"], I)
        np.testing.assert_array_equal(out[f"{name}/gpu/D"], D)
        assert errors["gpu kernels"] == ["distance_tables", "scan_by_query_u8",
                                         "topk_by_query"]


def test_searches_from_several_threads_at_once(ranks, whole):
    d, indexes = whole
    args, kwargs = _searches(d, "table", 200)
    D, I = indexes["table"].search(*args, **kwargs)
    for out, _ in ranks:
        for t in range(4):
            np.testing.assert_array_equal(out["threads/I"][t], I)
            np.testing.assert_array_equal(out["threads/D"][t], D)


@pytest.mark.parametrize("name", NAMES)
def test_save_and_load(ranks, whole, name):
    d, indexes = whole
    D, I = indexes[name].search(*_searches(d, name, 16)[0], **_searches(d, name, 16)[1])
    for out, _ in ranks:
        np.testing.assert_array_equal(out[f"{name}/loaded/I"], I)
        np.testing.assert_array_equal(out[f"{name}/loaded/D"], D)


@pytest.mark.parametrize(("case", "expected"), [
    ("k", ("ValueError", "disagree on k: rank 0 has 2, rank 1 has 3")),
    ("type", ("TypeError", "rank 1 a PQIndex")),
    ("not an index", ("TypeError", "got str")),
    ("queries differ", ("ValueError", "all_ranks_queries=False")),
    ("topk differs", ("ValueError", "differ in topk")),
    ("bad input on one rank", ("ValueError", "exclude must be")),
    ("dtypes differ", ("ValueError", "float64")),
    ("ids", ("ValueError", "ids='global'")),
    ("global ids repeat across shards", ("ValueError", "id 50 is on rank 0 and rank 1")),
    ("manifest says global", ("ValueError", "id 0 is on rank 0 and rank 1")),
    ("tampered", ("ValueError", "sha256")),
])
def test_refusals_reach_every_rank(ranks, case, expected):
    kind, words = expected
    for _, errors in ranks:
        assert errors[case].startswith(kind + ":"), errors[case]
        assert words in errors[case], errors[case]
    if case in ("k", "bad input on one rank", "tampered"):
        assert "rank 1" in ranks[0][1][case]  # rank 0 says which rank failed


def test_an_empty_shard_takes_part(ranks, whole):
    d, _ = whole
    alone = qk.SparseHashTable(NUM_BUCKETS, K).add(d["act"][_part(0)], d["emb"][_part(0)])
    D, I = alone.search(*_searches(d, "table", 16)[0], **_searches(d, "table", 16)[1])
    for out, _ in ranks:
        np.testing.assert_array_equal(out["empty/I"], I)
        np.testing.assert_array_equal(out["empty/D"], D)


def test_an_empty_shard_of_a_featured_index_takes_part(ranks, whole):
    d, _ = whole
    alone = qk.BinaryIndex(12).add(qk.pack_bits(d["bits"][_part(0)]), d["feat"][_part(0)])
    args, kwargs = _searches(d, "binary_features", 16)
    D, I = alone.search(*args, **kwargs)
    for out, _ in ranks:
        np.testing.assert_array_equal(out["empty features/I"], I)
        np.testing.assert_array_equal(out["empty features/D"], D)


def test_shards_that_change_between_searches(ranks, whole):
    """Each rank adds an item and removes two of its own: one table over the union, changed
    alike (global ids: each rank's offset is the next id of the ranks before it)."""
    d, _ = whole
    union = qk.SparseHashTable(NUM_BUCKETS, K)
    removed = []
    for rank in range(WORLD):
        offset = union.next_id
        union.add(d["act"][_part(rank)], d["emb"][_part(rank)])
        union.add(d["act"][:1], d["emb"][:1])
        removed += [offset + i for i in CHANGED_REMOVALS]
    union.remove_ids(np.array(removed))
    D, I = union.search(*_searches(d, "table", 16)[0], **_searches(d, "table", 16)[1])
    for out, _ in ranks:
        np.testing.assert_array_equal(out["changed/I"], I)
        np.testing.assert_array_equal(out["changed/D"], D)
        assert out["changed/sizes"].tolist() == [s + 1 - 2 for s in SIZES]


def test_interleaved_global_ids_are_accepted(ranks):
    for _, errors in ranks:
        assert errors["global ids interleaved"] == "no error"


@pytest.mark.parametrize("name", NAMES)
def test_saving_warns_of_nothing(ranks, name):
    for _, errors in ranks:
        assert errors[f"{name}/save warnings"] == []


# ------------------------------------------------------------------------ a run of changes

CHANGE_STEPS = 14


def _change_plan(rank: int) -> list[tuple[str, int, float]]:
    """The changes rank ``rank`` applies to its shard, one a step: (what, items, share)."""
    rng = np.random.default_rng(11 + rank)
    plan = [("add", int(rng.integers(20, 60)), 0.0)]
    for _ in range(CHANGE_STEPS - 1):
        what = str(rng.choice(["add", "add", "remove", "merge", "reset", "none"],
                              p=[0.3, 0.1, 0.3, 0.15, 0.05, 0.1]))
        plan.append((what, int(rng.integers(0, 40)), float(rng.random())))
    return plan


def _apply_change(shard, make, model, rank, step, change):
    """One change to ``shard`` (a SparseHashTable or PQIndex, items made by ``make(rng, n)``)
    and alike to ``model`` (tests/reference.py's IndexModel), with rank ``rank``'s data."""
    what, n, share = change
    rng = np.random.default_rng(1000 * step + rank)
    if what == "add":
        payloads = make(rng, n)
        shard.add(*payloads)
        model.add(list(zip(*payloads, strict=True)))
    elif what == "remove":
        held = model.ids
        chosen = np.array(rng.choice(held, int(share * len(held)), replace=False)
                          if held else [], dtype=np.int64)
        assert shard.remove_ids(chosen) == model.remove(chosen)
    elif what == "merge":
        other_model = reference.IndexModel()
        payloads = make(rng, n)
        other = type(shard)(*_shape_of(shard)).add(*payloads)
        other_model.add(list(zip(*payloads, strict=True)))
        shard.merge_from(other)
        model.merge(other_model)
    elif what == "reset":
        shard.reset()
        model.reset()


def _shape_of(shard):
    if isinstance(shard, qk.SparseHashTable):
        return (shard.num_buckets, shard.k)
    return (shard.pq,)


def _change_kinds(d, codebooks):
    """Per kind: (an empty shard, how items are made, the search's arguments)."""
    pq = qk.ProductQuantizer(8, 4, 4).set_codebooks(codebooks)

    def table_items(rng, n):
        return (rng.standard_normal((n, NUM_BUCKETS)),
                rng.integers(0, 3, (n, DIM)).astype(np.float32))

    def pq_items(rng, n):
        return (d["pq_x"][rng.integers(0, d["pq_x"].shape[0], n)],)

    return {
        "table": (lambda: qk.SparseHashTable(NUM_BUCKETS, K), table_items,
                  ((d["q_act"], d["q_emb"], 12), {"exclude": d["exclude"] % 40})),
        "pq": (lambda: qk.PQIndex(pq), pq_items, ((d["pq_q"], 12), {})),
    }


def _changing_rank(rank, init_file, codebooks, out_dir):
    """Each rank changes its own shard step by step (the plan's changes, its own data) and
    searches the sharded index after each step."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=120))
    out: dict[str, np.ndarray] = {}
    errors: dict[str, str] = {}
    try:
        d = _data()
        for name, (empty, make, (args, kwargs)) in _change_kinds(d, codebooks).items():
            shard, model = empty(), reference.IndexModel()
            index = ShardedIndex(shard)
            for step, change in enumerate(_change_plan(rank)):
                _apply_change(shard, make, model, rank, step, change)
                D, I = index.search(*args, **kwargs)
                out[f"{name}/{step}/D"], out[f"{name}/{step}/I"] = D, I
                if name == "table":
                    out[f"{name}/{step}/counts"] = index.candidate_counts
    except Exception:
        errors["crash"] = traceback.format_exc()
    finally:
        _written(out_dir, "changed", "changed-errors", rank, out, errors)
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def changing(tmp_path_factory, codebooks):
    tmp = tmp_path_factory.mktemp("changing")
    return _spawned(_changing_rank, (str(tmp / "init"), codebooks, str(tmp)), tmp,
                    "changed-errors", "changed", 600,
                    "the changing shards did not finish in 10 minutes (a hang?)")


@pytest.mark.parametrize("name", ["table", "pq"])
def test_a_run_of_changes_to_every_shard(changing, codebooks, name):
    """After every step of adds, removals, merges and resets on both ranks, each rank's
    answer is that of one index over the union of the shards' items (global ids: the offset
    of the ranks before plus the local id; the union in rank order, ties alike)."""
    ranks = changing
    d = _data()
    empty, make, (args, kwargs) = _change_kinds(d, codebooks)[name]
    shards = [empty() for _ in range(WORLD)]
    models = [reference.IndexModel() for _ in range(WORLD)]
    steps_with_items = 0
    for step in range(CHANGE_STEPS):
        offset = 0
        union = empty()
        for rank in range(WORLD):
            _apply_change(shards[rank], make, models[rank], rank, step,
                          _change_plan(rank)[step])
            items = models[rank].items
            if items:
                union.add(*(np.stack(column) for column in zip(*(p for _, p in items),
                                                                 strict=True)),
                          ids=np.array([offset + i for i, _ in items]))
            offset += models[rank].next_id
        steps_with_items += union.ntotal > 0
        D, I = union.search(*args, **kwargs)
        for out, _ in ranks:
            np.testing.assert_array_equal(out[f"{name}/{step}/I"], I, err_msg=f"step {step}")
            np.testing.assert_array_equal(out[f"{name}/{step}/D"], D, err_msg=f"step {step}")
            if name == "table":
                np.testing.assert_array_equal(out[f"{name}/{step}/counts"],
                                              union.candidate_counts, err_msg=f"step {step}")
    assert steps_with_items >= CHANGE_STEPS // 2
    assert {what for rank in range(WORLD) for what, _, _ in _change_plan(rank)} >= {
        "add", "remove", "merge", "reset"}


# ------------------------------------------------------------------------ faults

FAULT_SECONDS = 30  # an error on the surviving rank within this, never a hang


def _failing_search(*args, **kwargs):
    raise RuntimeError("injected failure in the local search")


def _faulty_rank(rank, init_file, out_dir):
    """Rank 1 raises inside its local search, then passes queries of the wrong dimension, then
    exits in the middle of a search; after each recoverable fault both ranks search again."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=120))
    out: dict[str, np.ndarray] = {}
    errors: dict[str, object] = {}
    try:
        d = _data()
        table = qk.SparseHashTable(NUM_BUCKETS, K).add(d["act"][_part(rank)],
                                                       d["emb"][_part(rank)])
        index = ShardedIndex(table)
        args, kwargs = _searches(d, "table", 16)
        if rank == 1:  # an instance attribute shadows the method on this rank only
            table.search_probes = _failing_search
        errors["raises"] = _error(lambda: index.search(*args, **kwargs))
        if rank == 1:
            del table.search_probes
        out["after raising/D"], out["after raising/I"] = index.search(*args, **kwargs)
        emb = d["q_emb"] if rank == 0 else d["q_emb"][:, :3]
        errors["dimension"] = _error(lambda: index.search(d["q_act"], emb, 16,
                                                          all_ranks_queries=False))
        out["after dimension/D"], out["after dimension/I"] = index.search(*args, **kwargs)
        if rank == 1:
            _written(out_dir, "fault", "fault", rank, out, errors)
            table.search_probes = lambda *a, **k: os._exit(0)
        start = time.monotonic()
        errors["exit"] = _error(lambda: index.search(*args, **kwargs))
        errors["exit seconds"] = time.monotonic() - start
    except Exception:
        errors["crash"] = traceback.format_exc()
    _written(out_dir, "fault", "fault", rank, out, errors)
    os._exit(0)  # not destroy_process_group: its peer is gone


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    return _spawned(_faulty_rank, (str(tmp / "init"), str(tmp)), tmp, "fault", "fault", 300,
                    "the faulty ranks did not finish in 5 minutes (a hang)")


def test_a_rank_raising_in_its_search_is_an_error_everywhere(faults):
    (_, errors0), (_, errors1) = faults
    assert errors1["raises"] == "RuntimeError: injected failure in the local search"
    assert errors0["raises"] == "RuntimeError: rank 1: injected failure in the local search"


def test_a_wrong_query_dimension_on_one_rank_is_an_error_everywhere(faults):
    for _, errors in faults:  # found where the queries are exchanged, alike on both ranks
        assert errors["dimension"].startswith(
            "ValueError: query_embeddings differs between ranks: rank 0 has float32 rows of "
            "shape (4,), rank 1 float32 rows of shape (3,)"), errors["dimension"]


@pytest.mark.parametrize("after", ["after raising", "after dimension"])
def test_the_next_search_succeeds(faults, whole, after):
    d, indexes = whole
    args, kwargs = _searches(d, "table", 16)
    D, I = indexes["table"].search(*args, **kwargs)
    for out, _ in faults:
        np.testing.assert_array_equal(out[f"{after}/I"], I)
        np.testing.assert_array_equal(out[f"{after}/D"], D)


def test_a_rank_exiting_mid_search_is_an_error_on_the_other(faults):
    (_, errors0), (_, errors1) = faults
    assert "exit" not in errors1  # it never came back
    assert errors0["exit"].startswith(("RuntimeError:", "DistBackendError:")), errors0["exit"]
    assert errors0["exit seconds"] < FAULT_SECONDS


def test_needs_a_process_group():
    table = qk.SparseHashTable(4, 1).add(np.eye(4), np.eye(4))
    with pytest.raises(RuntimeError, match="init_process_group"):
        ShardedIndex(table)


# ------------------------------------------------------------------------ the shards' kernels
# (in this process: what a sharded search adds up or merges by, against tests/reference.py)

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 60), st.integers(1, 9), st.integers(1, 3),
       st.sampled_from(["none", "exclude", "include"]))
def test_candidate_counts_of_the_first_buckets(seed, n, buckets, k, filtering):
    """Against the reference; ``include`` allows few items (their own bucket lists) or many
    (a filter over every list)."""
    k = min(k, buckets)
    rng = np.random.default_rng(seed)
    # few distinct activation values: ties between buckets, broken by the lower index
    act = rng.integers(0, 3, (n, buckets)).astype(np.float64)
    table = qk.SparseHashTable(buckets, k).add(act, rng.standard_normal((n, 2)))
    queries = rng.integers(0, 3, (7, buckets)).astype(np.float64)
    probes = rng.integers(k, buckets + 1, 7) * (rng.random(7) < 0.8)  # 0: counts nothing
    exclude = (rng.integers(-1, max(n, 1), (7, 2)) if filtering == "exclude" and n else None)
    kept = np.sort(rng.choice(n, rng.integers(0, n + 1), replace=False))
    include = kept if filtering == "include" else None
    got = table.count_candidates(queries, probes, exclude=exclude, include=include)
    codes = np.argsort(-act, axis=1, kind="stable")[:, :k]
    if include is not None:
        codes = codes[kept]
    want = reference.table_candidates(codes, np.arange(n) if include is None else kept,
                                      queries, probes, exclude)
    np.testing.assert_array_equal(got, want)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 50), st.integers(1, 20))
def test_tiebreak_keys_are_the_kernels(seed, n, dim):
    rng = np.random.default_rng(seed)
    index = qk.BinaryIndex(6).add(qk.pack_bits(rng.integers(0, 2, (n, 6)).astype(np.uint8)),
                                  rng.standard_normal((n, dim)).astype(np.float32))
    features = rng.standard_normal((5, dim)).astype(np.float32)
    _, I = index.search(qk.pack_bits(rng.integers(0, 2, (5, 6)).astype(np.uint8)), n + 2,
                        features)
    keys = index.tiebreak_keys(features, I)
    for q in range(5):
        for t in range(n + 2):
            want = (np.inf if I[q, t] < 0 else
                    reference.lane_distance(features[q], index.features[I[q, t]], False))
            assert keys[q, t] == want


def test_the_merge_hooks_refuse_bad_arguments_clearly():
    """tiebreak_keys takes result ids (-1 where missing): one below -1, or a uint64 id beyond
    int64 (which a cast made -1-like), is refused; fastscan_width's ntotal must be a count."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 8)).astype(np.float32)
    index = qk.BinaryIndex(8).add(qk.pack_bits(x), x)
    for ids, bad in ((np.array([[0, -5]]), -5),
                     (np.array([[0, 2**63]], dtype=np.uint64), 2**63)):
        with pytest.raises(ValueError, match=f"ids holds {bad}: result ids are integers in "
                                             r"0\.\.2\*\*63 - 1, or -1"):
            index.tiebreak_keys(x[:1], ids)
    assert index.tiebreak_keys(x[:1], np.array([[0, -1]])).tolist() == [[0.0, np.inf]]
    pq = qk.PQIndex(qk.ProductQuantizer(8, 4, 4).train(
        rng.standard_normal((300, 8)).astype(np.float32)))
    with pytest.raises(ValueError, match="ntotal must be >= 0, got -3"):
        pq.fastscan_width(5, ntotal=-3)
    with pytest.raises(TypeError, match="ntotal must be an integer"):
        pq.fastscan_width(5, ntotal=1.5)
    assert pq.fastscan_width(5, ntotal=7) == 7
