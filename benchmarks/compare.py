"""Ours against the peers users run today, in one process, interleaved, as ratios.

    python benchmarks/compare.py SUITE [--repeat N] [--markdown PATH]
    SUITE: flow | table | pq | binary | hierarchical | compressed | lifecycle | sharded | gpu |
           all

``--markdown docs/performance.md`` also writes what it prints to that page of the docs,
headed by the command, the date, the machine and the libraries' versions.

Each row times every contestant on the same input, rotating their order in every round so that
drifting machine load hits all of them alike, and reports medians. Only ratios from one run are
worth comparing: machines are noisy. Every row also checks that ours returns what the peer
returns (the same optimum, the same ids), and says so in the table.

The scan suites (table, pq, binary) first measure the machine's limits (benchmarks/roofline.py:
read bandwidth, clock, look-ups a cycle) and give every scan a roofline table: what fraction of
the limit nearest to it the scan reaches.

OpenMP threads (faiss, torch) are told to sleep as soon as a parallel region ends
(OMP_WAIT_POLICY=PASSIVE, unless set otherwise): by default they spin for a while and would
take the cores from whichever contestant runs next, which skews short runs most.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before any OpenMP runtime is loaded

import argparse
import contextlib
import datetime
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import qkernels as qk
from benchmarks.common import (
    SCORE_SCALE,
    clustered_codes_data,
    dht_scores,
    gaussian_classes,
    hierarchical_codes_data,
    ortools_level2,
    ortools_sparse_codes,
)
from benchmarks.roofline import COLUMNS as ROOF_COLUMNS
from benchmarks.roofline import Roofline, read_rate
from qkernels.index import _table_cpu

SUITES: dict[str, Callable[[argparse.Namespace], None]] = {}


def suite(function):
    SUITES[function.__name__] = function
    return function


def interleaved(contestants: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median seconds of each contestant over ``repeat`` rounds, after one warm-up round."""
    names = list(contestants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:
        contestants[name]()
    for round_ in range(repeat):
        order = names[round_ % len(names):] + names[: round_ % len(names)]
        for name in order:
            start = time.perf_counter()
            contestants[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


_ROOF: list[Roofline] = []


def roofline() -> Roofline:
    """The machine's limits, measured once per run (benchmarks/roofline.py) and printed when
    first measured (main measures them before the scan suites run)."""
    if not _ROOF:
        _ROOF.append(Roofline.measure())
        print("### roofline: this machine's limits\n")
        print(_ROOF[0].describe() + "\n")
        print("Each scan below has a roofline table: the bytes of codes (or embeddings) its "
              "queries read per second, that as a fraction of the read bandwidth measured over "
              "a buffer the size of the scan's data (where that data lives: a million short "
              "codes stay in the last-level cache), and the cycles per item and query on all "
              "threads. Its nearest limit is memory (the fraction of that bandwidth) or, for "
              "the 8-bit PQ scan, look-ups (the measured look-ups a cycle over the look-ups an "
              "item needs, against the cycles it takes); below a third of both, the loop's own "
              "instructions (the heap, the arithmetic) bind. A fraction above 1 means the "
              "kernel reads less than every byte every query (it reuses what is in "
              "registers).\n")
    return _ROOF[0]


def bound(fractions: dict[str, float]) -> str:
    """Which limit a scan is nearest to, and how near: ``{"memory": 0.4, "look-ups": 0.8}``
    -> "look-ups (0.80)"; below a third of every limit, the loop's own instructions bind."""
    name = max(fractions, key=fractions.get)
    if fractions[name] < 1 / 3:
        return f"instructions (nearest: {name} {fractions[name]:.2f})"
    return f"{name} ({fractions[name]:.2f})"


def roof_row(name: str, seconds: float, items: float, queries: int, bytes_per_item: float,
             data_bytes: int, lookups_per_item: float | None = None) -> list[str]:
    """One row of a roofline table: the scan's read rate against the bandwidth at its data's
    size, cycles per item and query (all threads), and the limit it is nearest to."""
    roof = roofline()
    bandwidth = roof.at_size(data_bytes)
    columns = roof.columns(seconds, items, queries, bytes_per_item, bandwidth)
    fractions = {"memory": read_rate(seconds, items, queries, bytes_per_item) / bandwidth}
    if lookups_per_item:
        cycles = roof.cycles(seconds, items, queries)
        fractions["look-ups"] = lookups_per_item / roof.lookups / cycles
    return [name, f"{data_bytes / 2**20:,.0f} MiB, {bandwidth / 1e9:.0f} GB/s", *columns,
            bound(fractions)]


ROOF_HEADER = ["scan", "data, bandwidth at its size", *ROOF_COLUMNS, "nearest limit"]


def print_table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}" if seconds < 0.01 else f"{seconds * 1e3:.1f}"


@suite
def flow(args: argparse.Namespace) -> None:
    """solve_sparse_codes against OR-tools SimpleMinCostFlow (graph build included)."""
    import ortools

    print(f"### flow: exact k-sparse codes vs OR-tools {ortools.__version__}\n")
    print("Scores: class means of 2 L2-normalised N(0, 1) head outputs x 1e4, truncated "
          "(as the DHT reference code feeds OR-tools); penalty 1.0 x 1e4. Median of "
          f"{args.repeat} interleaved runs, one problem at a time.\n")
    penalty = 1e4
    rows = []
    # the grid of the speed targets: (64, 64, 1..4), (64, 512, 4),
    # (512, 512, 1..3)
    for n, d, k in [(64, 64, 1), (64, 64, 2), (64, 64, 3), (64, 64, 4), (64, 512, 4),
                    (512, 512, 1), (512, 512, 2), (512, 512, 3)]:
        scores = dht_scores(n, d, seed=n + d + k)
        medians = interleaved({
            "ortools": lambda s=scores, k=k: ortools_sparse_codes(s, k, penalty),
            "ours": lambda s=scores, k=k: qk.solve_sparse_codes(s, k, penalty),
        }, args.repeat)
        optimum, _ = ortools_sparse_codes(scores, k, penalty)
        ours = qk.sparse_code_objective(scores, qk.solve_sparse_codes(scores, k, penalty),
                                        penalty)
        rows.append([f"({n}, {d}, {k})", ms(medians["ortools"]), ms(medians["ours"]),
                     f"{medians['ortools'] / medians['ours']:.1f}x",
                     "yes" if ours == optimum else f"NO ({ours} vs {optimum})"])
    print_table(["(n, d, k)", "OR-tools ms", "qkernels ms", "speed-up", "same optimum"], rows)

    batch = 64
    n, d, k = 64, 64, 4
    scores = dht_scores(n, d, batch=batch, seed=1)
    medians = interleaved({
        "ortools": lambda: [ortools_sparse_codes(s, k, penalty) for s in scores],
        "ours": lambda: qk.solve_sparse_codes(scores, k, penalty),
    }, max(3, args.repeat // 3))
    print(f"Batched: B = {batch} problems of ({n}, {d}, {k}), ours in parallel over "
          f"{os.cpu_count()} cores: OR-tools {ms(medians['ortools'])} ms, qkernels "
          f"{ms(medians['ours'])} ms, {medians['ortools'] / medians['ours']:.1f}x.\n")


def _torch_exhaustive(xb, xq, topk, batch=100):
    """Exhaustive squared-L2 search with torch: ||x||^2 - 2 q.x, then topk, by query batches."""
    import torch

    xb_t = torch.from_numpy(xb)
    norms = (xb_t * xb_t).sum(1)
    out = []
    for start in range(0, xq.shape[0], batch):
        q = torch.from_numpy(xq[start : start + batch])
        dist = norms[None, :] - 2 * (q @ xb_t.T)
        out.append(torch.topk(dist, topk, dim=1, largest=False).indices)
    return torch.cat(out).numpy()


@suite
def table(args: argparse.Namespace) -> None:
    """SparseHashTable against exhaustive scans and faiss IVFFlat over the same bucket lists."""
    import faiss
    import torch
    from faiss.contrib.ivf_tools import add_preassigned, search_preassigned

    n, num_buckets, dim, num_queries, topk = args.table_size, 512, 64, 1000, 16
    print(f"### table: SparseHashTable, N = {n:,}, d = {num_buckets} buckets, {dim}-d, "
          f"{num_queries} queries, top-{topk}\n")
    print("Data: 1,000 Gaussian classes; activations favour 4 buckets per class (boost 3 over "
          f"unit noise). torch {torch.__version__} and faiss {faiss.__version__} use "
          f"{torch.get_num_threads()} and {faiss.omp_get_max_threads()} threads, qkernels "
          f"{numba.get_num_threads()}. Median of "
          f"{args.repeat} interleaved runs of the whole query set.\n")
    chunks = list(clustered_codes_data(n + num_queries, num_buckets, dim=dim, seed=4))
    act = np.concatenate([c[1] for c in chunks])
    emb = np.concatenate([c[2] for c in chunks])
    xq_act, xq = act[n:], emb[n:]
    act, emb = act[:n], emb[:n]
    del chunks

    flat = faiss.IndexFlatL2(dim)
    flat.add(emb)
    truth = _torch_exhaustive(emb, xq, topk)

    # build every table first (timed on a quiet machine), then compare the searches
    warm = qk.SparseHashTable(num_buckets, 2).add(act[:1000], emb[:1000])
    warm.search(xq_act[:2], xq[:2], topk)  # load the compiled kernels before timing
    indexes, build_rows, first_buckets = {}, [], None
    for k in (1, 2, 3, 4):
        start = time.perf_counter()
        codes = np.empty((n, k), dtype=np.int32)
        # the private kernel timed alone: the top-k selection that add() runs before the build
        # (with add()'s types, so that the warm-up above has compiled it)
        _table_cpu.topk_rows(act, k, codes)
        select_seconds = time.perf_counter() - start
        if k == 1:
            first_buckets = codes[:, 0].astype(np.int64)  # (faiss takes int64 lists)
        start = time.perf_counter()
        indexes[k] = qk.SparseHashTable(num_buckets, k).add_codes(codes, emb)
        indexes[k].search(xq_act[:1], xq[:1], topk)  # builds the table
        build_seconds = time.perf_counter() - start
        build_rows.append([str(k), f"{select_seconds:.2f}", f"{build_seconds:.2f}"])
    del act

    rows, roof_rows = [], []
    for k, index in indexes.items():
        contestants = {
            "ours": lambda index=index: index.search(xq_act, xq, topk),
            "torch": lambda: _torch_exhaustive(emb, xq, topk),
            "flat": lambda: flat.search(xq, topk),
        }
        ivf = None
        if k == 1:
            quantizer = faiss.IndexFlatL2(dim)
            quantizer.add(np.zeros((num_buckets, dim), dtype=np.float32))
            ivf = faiss.IndexIVFFlat(quantizer, dim, num_buckets)
            ivf.is_trained = True
            # the ids held in a name: add_preassigned rebinds its argument to a bare pointer,
            # so a temporary array would be freed before faiss reads it (garbage ids)
            ivf_ids = np.arange(n, dtype=np.int64)
            add_preassigned(ivf, emb, first_buckets, ids=ivf_ids)
            ivf.nprobe = 1
            assign = np.argmax(xq_act, axis=1)[:, None].astype(np.int64)
            contestants["ivf"] = lambda ivf=ivf, assign=assign: search_preassigned(
                ivf, xq, topk, assign)
        medians = interleaved(contestants, args.repeat)
        _, I = index.search(xq_act, xq, topk)
        suf = qk.metrics.search_speedup(index.candidate_counts, n)
        recall = np.mean([len(set(I[q]) & set(truth[q])) / topk for q in range(num_queries)])
        best_scan = min(medians["torch"], medians["flat"])
        row = [str(k), f"{suf:.0f}", f"{recall:.3f}",
               f"{num_queries / medians['ours']:,.0f}", f"{num_queries / medians['torch']:,.0f}",
               f"{num_queries / medians['flat']:,.0f}",
               f"{best_scan / medians['ours']:.0f}x", f"{suf / 2:.0f}x"]
        if ivf is not None:
            same = np.array_equal(search_preassigned(ivf, xq, topk, assign)[1], I)
            row.append(f"{num_queries / medians['ivf']:,.0f} q/s, ours "
                       f"{medians['ivf'] / medians['ours']:.2f}x"
                       + ("" if same else " (ids differ)"))
        else:
            row.append("")
        rows.append(row)
        # the candidates' embeddings, which a query reads from buckets scattered over them
        per_query = float(np.mean(index.candidate_counts))
        roof_rows.append(roof_row(f"qkernels, k = {k}", medians["ours"], per_query,
                                  num_queries, dim * 4, emb.nbytes))
        if ivf is not None:
            roof_rows.append(roof_row("faiss IVFFlat, k = 1", medians["ivf"], per_query,
                                      num_queries, dim * 4, emb.nbytes))
    table_header = ["k", "SUF", "recall@16 vs exhaustive", "ours q/s", "torch q/s",
                    "faiss Flat q/s", "speed-up over best scan", "target SUF/2",
                    "faiss IVFFlat, same lists"]
    print_table(table_header, rows)
    print("Roofline: a query reads its candidates' float32 embeddings (items = candidates a "
          "query).\n")
    print_table(ROOF_HEADER, roof_rows)
    print(f"Build of {n:,} items (seconds): top-k selection of the activations, then "
          "the table (sort by codes, CSR by counting sort; includes copying the embeddings):\n")
    print_table(["k", "top-k select s", "table build s"], build_rows)


@suite
def pq(args: argparse.Namespace) -> None:
    """PQIndex against faiss IndexPQ with the same codebooks and codes."""
    import faiss

    n, dim, num_queries, topk, m, nbits = args.table_size, 64, 1000, 10, 8, 8
    print(f"### pq: PQIndex vs faiss {faiss.__version__} IndexPQ, N = {n:,}, {dim}-d, M = {m}, "
          f"{nbits} bits, {num_queries} queries, top-{topk}\n")
    data = gaussian_classes(n + num_queries, dim, seed=5)
    xb, xq = data[:n], data[n:]
    start = time.perf_counter()
    quantizer = qk.ProductQuantizer(dim, m, nbits, seed=0).train(xb[:65_536])
    train_seconds = time.perf_counter() - start
    index = qk.PQIndex(quantizer).add(xb)
    peer = faiss.IndexPQ(dim, m, nbits)
    faiss.copy_array_to_vector(quantizer.codebooks.ravel(), peer.pq.centroids)
    peer.is_trained = True
    peer.add(xb)
    same_codes = np.array_equal(faiss.vector_to_array(peer.codes).reshape(n, m), index.codes)
    fastscan = faiss.IndexPQFastScan(dim, 16, 4)
    fastscan.train(xb[:65_536])
    fastscan.add(xb)
    index.search(xq[:5], topk)
    medians = interleaved({
        "ours": lambda: index.search(xq, topk),
        "faiss": lambda: peer.search(xq, topk),
        "fastscan": lambda: fastscan.search(xq, topk),
    }, args.repeat)
    _, I = index.search(xq, topk)
    _, If = peer.search(xq, topk)
    rows = [
        ["qkernels PQIndex (ADC)", f"{num_queries / medians['ours']:,.0f}",
         f"{medians['faiss'] / medians['ours']:.2f}x",
         f"{(I == If).all(axis=1).mean():.3f} of queries identical"],
        ["faiss IndexPQ, same codebooks", f"{num_queries / medians['faiss']:,.0f}", "1.00x",
         "codes identical" if same_codes else "CODES DIFFER"],
        ["faiss IndexPQFastScan 16x4 bits (reference line, own codebooks)",
         f"{num_queries / medians['fastscan']:,.0f}",
         f"{medians['faiss'] / medians['fastscan']:.2f}x", ""],
    ]
    print_table(["index", "q/s", "vs IndexPQ", "results"], rows)
    print(f"Roofline: every query reads the {n:,} codes of {m} bytes. faiss makes {m} table "
          f"look-ups an item and query; qkernels one vector load per code that brings the "
          f"entries of sixteen queries ({m}/16 loads an item and query, from tables of "
          f"{m * 256 * 16 * 4 // 1024} KiB).\n")
    print_table(ROOF_HEADER, [
        roof_row(name, medians[key], n, num_queries, m, n * m, lookups_per_item=lookups)
        for name, key, lookups in (("qkernels PQIndex (ADC)", "ours", m / 16),
                                   ("faiss IndexPQ", "faiss", m))])
    print(f"Training the quantizer on 65,536 points: {train_seconds:.1f} s (k-means++ and 25 "
          "Lloyd iterations per subspace, first call includes compilation).\n")
    _fastscan(args, xb, xq, fastscan)


def _fastscan(args: argparse.Namespace, xb: np.ndarray, xq: np.ndarray, peer) -> None:
    """The 4-bit rows: PQIndex's fast scan with faiss IndexPQFastScan's own codebooks (the
    same codes), against it, with recall@10 against the exact L2 neighbours."""
    import faiss

    n, dim = xb.shape
    num_queries, topk, m = len(xq), 10, peer.pq.M
    kernel = ("AVX-512 VBMI/VNNI" if qk._simd.has_byte_dots() else "AVX-512BW"
              if qk._simd.has_avx512bw() else "AVX2" if qk._simd.has_avx2() else "scalar")
    print(f"#### pq 4-bit: PQIndex fast scan vs faiss IndexPQFastScan, N = {n:,}, {dim}-d, "
          f"M = {m}, 4 bits, {num_queries} queries, top-{topk}, {faiss.omp_get_max_threads()} "
          f"threads, {kernel} kernel\n")
    codebooks = faiss.vector_to_array(peer.pq.centroids).reshape(m, 16, dim // m)
    quantizer = qk.ProductQuantizer(dim, m, 4).set_codebooks(codebooks)
    ours = qk.PQIndex(quantizer).add(xb)
    exact_adc = qk.PQIndex(quantizer, fast_scan=False).add_codes(ours.codes)
    flat = faiss.IndexFlatL2(dim)
    flat.add(xb)
    _, truth = flat.search(xq, topk)
    ours.search(xq[:5], topk)
    medians = interleaved({
        "reranked": lambda: ours.search(xq, topk),
        "plain": lambda: ours.search(xq, topk, rerank=0),
        "faiss": lambda: peer.search(xq, topk),
    }, args.repeat)
    exact_s = min(interleaved({"adc": lambda: exact_adc.search(xq, topk)}, 1).values())

    def recall(I) -> str:
        hits = sum(len(set(a) & set(b)) for a, b in zip(I, truth, strict=True))
        return f"{hits / truth.size:.4f}"

    _, If = peer.search(xq, topk)
    _, Ir = ours.search(xq, topk)
    _, Ip = ours.search(xq, topk, rerank=0)
    _, Ie = exact_adc.search(xq, topk)
    rows = [
        ["qkernels PQIndex fast scan, rerank 4 x topk by exact ADC (default)",
         f"{num_queries / medians['reranked']:,.0f}",
         f"{medians['faiss'] / medians['reranked']:.2f}x", recall(Ir),
         f"{(Ir == Ie).all(axis=1).mean():.3f} of queries = exact ADC ranking"],
        ["qkernels PQIndex fast scan, rerank=0 (rounded sums only)",
         f"{num_queries / medians['plain']:,.0f}",
         f"{medians['faiss'] / medians['plain']:.2f}x", recall(Ip),
         f"{(Ip == If).all(axis=1).mean():.3f} of queries = faiss' ids"],
        ["faiss IndexPQFastScan (same codebooks and codes)",
         f"{num_queries / medians['faiss']:,.0f}", "1.00x", recall(If), ""],
        ["qkernels PQIndex, exact ADC of the same codes (fast_scan=False; one run)",
         f"{num_queries / exact_s:,.0f}", f"{medians['faiss'] / exact_s:.2f}x", recall(Ie), ""],
    ]
    print_table(["index", "q/s", "vs FastScan", "recall@10", "results"], rows)
    print(f"Roofline: every query reads the {n:,} codes of {m // 2} bytes (look-ups are "
          "in-register shuffles).\n")
    print_table(ROOF_HEADER, [
        roof_row(name, medians[key], n, num_queries, m / 2, n * m // 2)
        for name, key in (("qkernels fast scan, rerank=0", "plain"),
                          ("faiss IndexPQFastScan", "faiss"))])


@suite
def binary(args: argparse.Namespace) -> None:
    """hamming_topk against faiss IndexBinaryFlat."""
    import faiss

    n, num_queries, topk = args.table_size, 1000, 10
    print(f"### binary: hamming_topk vs faiss {faiss.__version__} IndexBinaryFlat, N = {n:,}, "
          f"{num_queries} queries, top-{topk}\n")
    rows, roof_rows = [], []
    for nbits in (64, 128):
        data = gaussian_classes(n + num_queries, nbits, seed=nbits)
        codes = qk.pack_bits(data)
        db, queries = codes[:n], codes[n:]
        ours = qk.BinaryIndex(nbits).add(db)
        peer = faiss.IndexBinaryFlat(nbits)
        peer.add(db)
        ours.search(queries[:5], topk)
        medians = interleaved({
            "ours": lambda ours=ours, queries=queries: ours.search(queries, topk),
            "faiss": lambda peer=peer, queries=queries: peer.search(queries, topk),
        }, args.repeat)
        D, I = ours.search(queries, topk)
        Df, If = peer.search(queries, topk)
        rows.append([str(nbits), f"{num_queries / medians['ours']:,.0f}",
                     f"{num_queries / medians['faiss']:,.0f}",
                     f"{medians['faiss'] / medians['ours']:.2f}x",
                     "identical" if np.array_equal(D, Df) else "DIFFER",
                     f"{(I == If).mean():.3f}"])
        roof_rows += [roof_row(f"{name}, {nbits} bits", medians[key], n, num_queries,
                               nbits // 8, n * nbits // 8)
                      for name, key in (("qkernels", "ours"), ("faiss", "faiss"))]
    print_table(["bits", "ours q/s", "faiss q/s", "speed-up", "distances",
                 "ids equal (ties may order differently)"], rows)
    print("Roofline: every query reads every code.\n")
    print_table(ROOF_HEADER, roof_rows)


@suite
def hierarchical(args: argparse.Namespace) -> None:
    """Cascaded codes: the hierarchical solver against OR-tools, and the compound table."""
    import ortools

    n, sibling, glob = 64, 100.0 * SCORE_SCALE, 1.0 * SCORE_SCALE
    print(f"### hierarchical: solve_hierarchical_codes vs OR-tools {ortools.__version__} (both "
          "levels, graph build included)\n")
    print(f"n = {n} classes; DHT-like scores per level (x 1e4, integers); penalties 100 and 1 "
          f"(x 1e4). Median of {args.repeat} interleaved runs.\n")

    def peer(s1, s2, k):
        _, level1 = ortools_sparse_codes(s1, 1, glob)
        return ortools_level2(s2, level1[:, 0], k, sibling, glob)

    rows = []
    for d in (32, 64):
        for k in (1, 2, 3, 4):
            s1 = dht_scores(n, d, seed=d + k)
            s2 = dht_scores(n, d, seed=d + k + 100)
            medians = interleaved({
                "ortools": lambda s1=s1, s2=s2, k=k: peer(s1, s2, k),
                "ours": lambda s1=s1, s2=s2, k=k: qk.solve_hierarchical_codes(s1, s2, k,
                                                                              sibling, glob),
            }, args.repeat)
            level1, level2 = qk.solve_hierarchical_codes(s1, s2, k, sibling, glob)
            ours = qk.hierarchical_code_objective(s1, s2, level1, level2, sibling, glob)[1]
            same = ours == ortools_level2(s2, level1, k, sibling, glob)
            rows.append([f"({n}, {d}, {k})", ms(medians["ortools"]), ms(medians["ours"]),
                         f"{medians['ortools'] / medians['ours']:.1f}x",
                         "yes" if same else "NO"])
    print_table(["(n, d per level, k2)", "OR-tools ms", "qkernels ms", "speed-up",
                 "same optimum"], rows)

    size, d, num_queries, topk = args.table_size, 64, 1000, 16
    chunks = list(hierarchical_codes_data(size + num_queries, d, seed=8))
    level1 = np.concatenate([c[1] for c in chunks])
    level2 = np.concatenate([c[2] for c in chunks])
    emb = np.concatenate([c[3] for c in chunks])
    del chunks
    print(f"Tables over {size:,} items ({d} buckets per level, k = 2, top-{topk}, "
          f"{num_queries} queries; classes favour one parent and 4 children):\n")
    compound = qk.HierarchicalHashTable(d, 2).add(level1[:size], level2[:size], emb[:size])
    flat = qk.SparseHashTable(d, 2).add(level2[:size], emb[:size])
    q1, q2, qe = level1[size:], level2[size:], emb[size:]
    compound.search(q1[:2], q2[:2], qe[:2], topk)
    flat.search(q2[:2], qe[:2], topk)
    medians = interleaved({
        "compound": lambda: compound.search(q1, q2, qe, topk),
        "flat": lambda: flat.search(q2, qe, topk),
    }, max(3, args.repeat // 3))
    table_rows = []
    for name, index, run in (("hierarchical (64 x 64)", compound, medians["compound"]),
                             ("flat DHT (64)", flat, medians["flat"])):
        if name.startswith("hierarchical"):
            index.search(q1, q2, qe, topk)
        else:
            index.search(q2, qe, topk)
        table_rows.append([name, f"{qk.metrics.search_speedup(index.candidate_counts, size):.0f}",
                           f"{num_queries / run:,.0f}"])
    print_table(["table", "SUF", "q/s"], table_rows)


def _sharded_rank(rank: int, init_file: str, args: argparse.Namespace, out: str) -> None:
    """One of two processes of the sharded suite: rank 0 times the single index (2 threads,
    while rank 1 waits) against the ShardedIndex (both ranks, 1 thread each), interleaved."""
    import datetime as dt
    import json

    import torch.distributed as dist

    from qkernels.distributed import ShardedIndex

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=2, timeout=dt.timedelta(minutes=30))
    n, num_queries = args.sharded_size, 1000
    half = slice(0, n // 2) if rank == 0 else slice(n // 2, n)
    rows = []
    try:
        cases = {}
        # PQ, 64-d, M = 8 x 8 bits, top-10
        data = gaussian_classes(n + num_queries, 64, seed=5)
        quantizer = qk.ProductQuantizer(64, 8, 8, seed=0).train(data[:65_536])
        codes = quantizer.encode(data[:n])
        pq_q = data[n:]
        del data
        whole = qk.PQIndex(quantizer).add_codes(codes) if rank == 0 else None
        cases["PQIndex, 8 x 8 bits, top-10"] = (
            whole, qk.PQIndex(quantizer).add_codes(codes[half]), (pq_q, 10))
        # SparseHashTable, d = 512 buckets, k = 2, 64-d, top-16
        tables = [qk.SparseHashTable(512, 2), qk.SparseHashTable(512, 2)]
        start = 0
        for _, act, emb in clustered_codes_data(n + num_queries, 512, seed=4):
            stop = start + act.shape[0]
            base = min(stop, n) - start
            if base > 0:
                if rank == 0:
                    tables[0].add(act[:base], emb[:base])
                rows_here = slice(max(half.start, start) - start, min(half.stop, stop) - start)
                if rows_here.stop > rows_here.start:
                    tables[1].add(act[rows_here], emb[rows_here])
            if stop > n:
                table_q = (act[base:], emb[base:])
            start = stop
        cases["SparseHashTable, 512 buckets, k = 2, top-16"] = (
            tables[0] if rank == 0 else None, tables[1], (*table_q, 16))
        for name, (single, shard, query_args) in cases.items():
            sharded = ShardedIndex(shard)
            contestants = {"sharded": lambda s=sharded, a=query_args: s.search(*a)}
            if rank == 0:
                contestants["single"] = lambda s=single, a=query_args: s.search(*a)
            times = {"single": [], "sharded": []}
            shares = []
            for round_ in range(args.repeat + 1):
                order = ["single", "sharded"] if round_ % 2 else ["sharded", "single"]
                for who in order:
                    dist.barrier()
                    numba.set_num_threads(2 if who == "single" else 1)
                    start = time.perf_counter()
                    if who == "sharded" or rank == 0:
                        contestants[who]()
                    seconds = time.perf_counter() - start
                    dist.barrier()
                    if round_:  # the first round warms up
                        times[who].append(seconds)
                        if who == "sharded":
                            t = sharded.timings
                            shares.append((t["merge"] / t["total"], t["plan"] / t["total"]))
            numba.set_num_threads(2)
            D, I = sharded.search(*query_args)
            if rank == 0:
                Ds, Is = single.search(*query_args)
                single_s = statistics.median(times["single"])
                sharded_s = statistics.median(times["sharded"])
                rows.append([name, f"{num_queries / single_s:,.0f}",
                             f"{num_queries / sharded_s:,.0f}", f"{single_s / sharded_s:.2f}x",
                             f"{statistics.median(s[0] for s in shares):.1%}",
                             f"{statistics.median(s[1] for s in shares):.1%}",
                             "identical" if np.array_equal(I, Is) and np.array_equal(D, Ds)
                             else "RESULTS DIFFER"])
        if rank == 0:
            Path(out).write_text(json.dumps(rows))
    finally:
        dist.destroy_process_group()


@suite
def compressed(args: argparse.Namespace) -> None:
    """SparseHashTable with float32, float16 and PQ re-ranking against faiss IndexIVFPQ over
    the same bucket lists (k = 1: one bucket per item, the nearest of the coarse centroids)."""
    import faiss
    import torch
    from faiss.contrib.ivf_tools import add_preassigned, search_preassigned

    n, dim, nlist, num_queries, topk, m = args.compressed_size, 64, 1024, 1000, 16, 8
    print(f"### compressed: SparseHashTable storages vs faiss {faiss.__version__} IndexIVFPQ "
          f"over the same lists, N = {n:,}, {dim}-d, {nlist} buckets, k = 1, "
          f"{num_queries} queries, top-{topk}\n")
    x = gaussian_classes(n, dim, seed=21)
    xq = gaussian_classes(num_queries, dim, seed=22)
    coarse = faiss.Kmeans(dim, nlist, niter=10, seed=1)
    coarse.train(x[: 50 * nlist])
    quantizer = faiss.IndexFlatL2(dim)
    quantizer.add(coarse.centroids)
    buckets = np.empty(n, dtype=np.int64)
    for start in range(0, n, 1_000_000):
        buckets[start : start + 1_000_000] = quantizer.search(
            x[start : start + 1_000_000], 1)[1][:, 0]
    centroids = torch.from_numpy(coarse.centroids)
    q_act = -torch.cdist(torch.from_numpy(xq), centroids).square().numpy()  # nearest first
    assign = np.argmax(q_act, axis=1)[:, None].astype(np.int64)
    truth = _torch_exhaustive(x, xq, topk)
    pq = qk.ProductQuantizer(dim, m, 8).train(x[:65_536])
    print(f"Data: 1,000 Gaussian classes; buckets: the nearest of {nlist} k-means centroids "
          f"(the IVF lists); the queries probe their nearest bucket (and more while they have "
          f"fewer than {topk} candidates). PQ: {m} x 8 bits, the table's codebooks trained on "
          "65,536 raw vectors, faiss' on residuals (its default) or on the vectors "
          f"(by_residual=False). recall@{topk} against the exact neighbours; bytes per item "
          "of the index's arrays (ids included); median of "
          f"{args.repeat} interleaved runs of the whole query set, 2 threads.\n")

    def recall(I) -> float:
        return float(np.mean([len(set(a) & set(b)) / topk for a, b in zip(I, truth,
                                                                            strict=True)]))

    rows, contestants = [], {}
    tables = {"SparseHashTable, float32": "float32", "SparseHashTable, float16": "float16",
              f"SparseHashTable, PQ {m} x 8 bits": pq}
    built = {}
    for name, storage in tables.items():
        table = qk.SparseHashTable(nlist, 1, storage=storage).add_codes(buckets[:, None], x)
        table.search(q_act[:2], xq[:2], topk)  # builds the lists
        built[name] = table
        contestants[name] = lambda t=table: t.search(q_act, xq, topk)
    ivfs = {}
    for name, residual in (("faiss IndexIVFPQ, same lists", True),
                           ("faiss IndexIVFPQ, same lists, by_residual=False", False)):
        ivf = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8)
        ivf.by_residual = residual
        ivf.train(x[:65_536])
        add_preassigned(ivf, x, buckets)
        ivfs[name] = ivf
        contestants[name] = lambda ivf=ivf: search_preassigned(ivf, xq, topk, assign)
    medians = interleaved(contestants, args.repeat)
    reference = medians[f"SparseHashTable, PQ {m} x 8 bits"]
    for name, table in built.items():
        _, I = table.search(q_act, xq, topk)
        suf = qk.metrics.search_speedup(table.candidate_counts, n)
        rows.append([name, f"{table.nbytes / n:.1f}", f"{recall(I):.3f}",
                     f"{num_queries / medians[name]:,.0f}", f"{suf:.0f}",
                     f"{medians[name] / reference:.2f}x"])
    for name, ivf in ivfs.items():
        _, I = search_preassigned(ivf, xq, topk, assign)
        invlists = ivf.invlists
        size = sum(invlists.list_size(i) for i in range(nlist)) * (ivf.code_size + 8)
        rows.append([name, f"{size / n:.1f}", f"{recall(I):.3f}",
                     f"{num_queries / medians[name]:,.0f}", "",
                     f"{medians[name] / reference:.2f}x"])
    print_table(["index", "bytes / item", f"recall@{topk}", "q/s", "SUF",
                 "time vs the PQ table"], rows)


@suite
def lifecycle(args: argparse.Namespace) -> None:
    """What each index's changes cost: add, remove_ids, the first search after a removal,
    merge_from, reset, to_bytes, and a filtered search against an unfiltered one."""
    n = min(args.table_size, 1_000_000)
    dim, num_queries, topk = 64, 1000, 10
    print(f"### lifecycle: the operations of the index protocol, N = {n:,}, {dim}-d, "
          f"{num_queries} queries, top-{topk}\n")
    print("Seconds of one call, median of "
          f"{max(3, args.repeat // 3)} (each on a fresh copy where the call changes the "
          "index); q/s of the whole query set. A removal copies the index without the removed "
          "items (a new snapshot: searches running meanwhile keep the old one); a table's "
          "next search then rebuilds its bucket lists (counting sorts). A filter is applied "
          "inside the scans: include = 10% of the ids or 1,000 of them, exclude = 10% of them.\n")
    rng = np.random.default_rng(11)
    x = gaussian_classes(n, dim, seed=12)
    xq = gaussian_classes(num_queries, dim, seed=13)
    act = x[:, :32] @ rng.standard_normal((32, 256)).astype(np.float32)
    q_act = xq[:, :32] @ rng.standard_normal((32, 256)).astype(np.float32)
    pq8 = qk.ProductQuantizer(dim, 8, 8).train(x[:65_536])
    pq4 = qk.ProductQuantizer(dim, 16, 4).train(x[:65_536])
    codes = qk.pack_bits(x)
    kinds = {
        "SparseHashTable (256 buckets, k = 2)": (
            lambda rows: qk.SparseHashTable(256, 2).add(act[rows], x[rows]),
            lambda index, **f: index.search(q_act, xq, topk, **f)),
        "PQIndex 8 x 8 bits": (lambda rows: qk.PQIndex(pq8).add(x[rows]),
                               lambda index, **f: index.search(xq, topk, **f)),
        "PQIndex 16 x 4 bits (fast scan)": (lambda rows: qk.PQIndex(pq4).add(x[rows]),
                                            lambda index, **f: index.search(xq, topk, **f)),
        "BinaryIndex 64 bits": (lambda rows: qk.BinaryIndex(dim).add(codes[rows]),
                                lambda index, **f: index.search(codes[:num_queries], topk,
                                                                **f)),
    }
    repeat = max(3, args.repeat // 3)
    removed = rng.choice(n, n // 100, replace=False)
    subset = np.sort(rng.choice(n, n // 10, replace=False))
    few = np.sort(rng.choice(n, 1000, replace=False))
    header = ["operation", *kinds]
    rows = {op: [op] for op in ("add N items", "remove_ids (1% of N)",
                                "first search after the removal", "merge_from (10% of N)",
                                "reset", "to_bytes", "bytes per item (to_bytes)",
                                "search q/s, no filter", "search q/s, include 10%",
                                "search q/s, include 1,000 ids", "search q/s, exclude 10%")}

    for make, search in kinds.values():
        for op, value in _lifecycle_column(make, search, n, removed, subset, few, num_queries,
                                           repeat).items():
            rows[op].append(value)
    print_table(header, list(rows.values()))


def _removed(index, ids):
    index.remove_ids(ids)
    return index


def _lifecycle_column(make, search, n, removed, subset, few, num_queries, repeat
                      ) -> dict[str, str]:
    """One index kind's column of the lifecycle table."""
    def seconds(fn, fresh=None):
        times = []
        for _ in range(repeat):
            target = fresh() if fresh is not None else None
            start = time.perf_counter()
            fn(target)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    everything, other = slice(None), slice(0, n // 10)
    index = make(everything)
    search(index)  # compile and build
    blob = index.to_bytes()
    medians = interleaved({
        "none": lambda: search(index),
        "include": lambda: search(index, include=subset),
        "few": lambda: search(index, include=few),
        "exclude": lambda: search(index, exclude=subset),
    }, repeat)
    add = seconds(lambda _: make(everything))
    remove = seconds(lambda i: i.remove_ids(removed), lambda: make(everything))
    after = seconds(search, lambda: _removed(make(everything), removed))
    merge = seconds(lambda pair: pair[0].merge_from(pair[1]),
                    lambda: (make(everything), make(other)))
    reset = seconds(lambda i: i.reset(), lambda: make(everything))
    to_bytes = seconds(lambda _: index.to_bytes())
    return {
        "add N items": f"{add:.2f}",
        "remove_ids (1% of N)": f"{remove:.3f}",
        "first search after the removal": f"{after:.3f}",
        "merge_from (10% of N)": f"{merge:.3f}",
        "reset": f"{reset:.4f}",
        "to_bytes": f"{to_bytes:.2f}",
        "bytes per item (to_bytes)": f"{len(blob) / n:.1f}",
        "search q/s, no filter": f"{num_queries / medians['none']:,.0f}",
        "search q/s, include 10%": f"{num_queries / medians['include']:,.0f}",
        "search q/s, include 1,000 ids": f"{num_queries / medians['few']:,.0f}",
        "search q/s, exclude 10%": f"{num_queries / medians['exclude']:,.0f}",
    }


@suite
def sharded(args: argparse.Namespace) -> None:
    """ShardedIndex over 2 gloo processes on this machine against one index in one process."""
    import json
    import tempfile

    import torch.multiprocessing as mp

    n = args.sharded_size
    print(f"### sharded: ShardedIndex, 2 processes (gloo, one machine) vs one index in one "
          f"process, N = {n:,}, 1000 queries\n")
    print("The single index searches with 2 threads; each of the 2 shards (N / 2 items) with 1. "
          f"Median of {args.repeat} interleaved runs of the whole query set, timed on rank 0; "
          "the merge share is the all_gather of every rank's top-K plus the exact merge, the "
          "plan share the table's probe planning (all_reduce rounds), both of the sharded "
          "search's time.\n")
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "rows.json")
        mp.spawn(_sharded_rank, args=(str(Path(folder) / "init"), args, out), nprocs=2,
                 join=True)
        rows = json.loads(Path(out).read_text())
    print_table(["index", "1 process q/s", "2 processes q/s", "speed-up", "merge share",
                 "plan share", "results"], rows)


def _cuda_seconds(fn, repeat: int) -> float:
    """Median of ``repeat`` synchronised runs of ``fn`` (after a warm-up)."""
    import torch

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@suite
def gpu(args: argparse.Namespace) -> None:
    """GPU kernels against their CPU twins and against torch CUDA exhaustive search."""
    import torch

    from qkernels import _gpu

    if not (_gpu.available() and torch.cuda.is_available()):
        print("### gpu: skipped (needs an NVIDIA GPU, cupy and a CUDA torch)\n")
        return
    print(f"### gpu: {torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    rows = []
    for n, d, k in ((64, 64, 4), (64, 512, 4)):
        scores = dht_scores(n, d, batch=256, seed=d)
        on_gpu = torch.from_numpy(scores).cuda()
        gpu_s = _cuda_seconds(lambda on_gpu=on_gpu, k=k: qk.solve_sparse_codes(on_gpu, k, 1e4),
                              args.repeat)
        cpu_s = interleaved({"cpu": lambda s=scores, k=k: qk.solve_sparse_codes(s, k, 1e4)},
                            max(3, args.repeat // 3))["cpu"]
        same = np.array_equal(
            qk.sparse_code_objective(scores, qk.solve_sparse_codes(on_gpu, k, 1e4).cpu().numpy(),
                                     1e4),
            qk.sparse_code_objective(scores, qk.solve_sparse_codes(scores, k, 1e4), 1e4))
        rows.append([f"solve_sparse_codes B=256 ({n}, {d}, {k})", f"{256 / cpu_s:,.0f}/s CPU",
                     f"{256 / gpu_s:,.0f}/s", f"{cpu_s / gpu_s:.1f}x",
                     "same objective" if same else "OBJECTIVE DIFFERS"])

    n, dim, num_queries, topk = 10_000_000, 64, 1000, 16
    xb = torch.from_numpy(gaussian_classes(n, dim, seed=11)).cuda()
    xq = torch.from_numpy(gaussian_classes(num_queries, dim, seed=12)).cuda()
    norms = (xb * xb).sum(1)

    def exhaustive():
        for start in range(0, num_queries, 100):
            torch.topk(norms[None] - 2 * xq[start:start + 100] @ xb.T, topk, dim=1,
                       largest=False)

    exhaustive_s = _cuda_seconds(exhaustive, max(3, args.repeat // 3))
    pq = qk.ProductQuantizer(dim, 8, 8).train(xb[:65_536].cpu().numpy())
    index = qk.PQIndex(pq).add(xb.cpu().numpy())
    pq_s = _cuda_seconds(lambda: index.search(xq, 10), max(3, args.repeat // 3))
    rows.append([f"PQIndex N = {n:,}", f"{num_queries / exhaustive_s:,.0f} q/s torch exhaustive",
                 f"{num_queries / pq_s:,.0f} q/s", f"{exhaustive_s / pq_s:.1f}x", "target 2x"])
    signs_db = torch.from_numpy(qk.pack_bits(xb.cpu().numpy())).cuda()
    signs_q = torch.from_numpy(qk.pack_bits(xq.cpu().numpy())).cuda()
    pm_db = torch.where(xb > 0, 1.0, -1.0).half()
    pm_q = torch.where(xq > 0, 1.0, -1.0).half()

    def pm_exhaustive():
        for start in range(0, num_queries, 100):
            torch.topk(pm_q[start:start + 100] @ pm_db.T, 10, dim=1)

    pm_s = _cuda_seconds(pm_exhaustive, max(3, args.repeat // 3))
    ham_s = _cuda_seconds(lambda: qk.hamming_topk(signs_q, signs_db, 10),
                          max(3, args.repeat // 3))
    rows.append([f"hamming_topk 64 bits N = {n:,}",
                 f"{num_queries / pm_s:,.0f} q/s torch +-1 matmul",
                 f"{num_queries / ham_s:,.0f} q/s", f"{pm_s / ham_s:.1f}x", "target 2x"])
    chunks = list(clustered_codes_data(n + num_queries, 512, dim=dim, seed=13))
    act = np.concatenate([c[1] for c in chunks])
    emb = np.concatenate([c[2] for c in chunks])
    del chunks
    table = qk.SparseHashTable(512, 2).add(act[:n], emb[:n])
    q_act, q_emb = torch.from_numpy(act[n:]).cuda(), torch.from_numpy(emb[n:]).cuda()
    xb_table = torch.from_numpy(emb[:n]).cuda()
    table_norms = (xb_table * xb_table).sum(1)

    def table_exhaustive():
        for start in range(0, num_queries, 100):
            torch.topk(table_norms[None] - 2 * q_emb[start:start + 100] @ xb_table.T, topk,
                       dim=1, largest=False)

    table_s = _cuda_seconds(lambda: table.search(q_act, q_emb, topk), max(3, args.repeat // 3))
    scan_s = _cuda_seconds(table_exhaustive, max(3, args.repeat // 3))
    suf = qk.metrics.search_speedup(table.candidate_counts.cpu().numpy(), n)
    rows.append([f"SparseHashTable k = 2 N = {n:,}",
                 f"{num_queries / scan_s:,.0f} q/s torch exhaustive",
                 f"{num_queries / table_s:,.0f} q/s", f"{scan_s / table_s:.1f}x",
                 f"target SUF/2 = {suf / 2:.0f}x"])
    # the cascade: 32 x 32 compound buckets over the same embeddings, its GPU probe
    rng = np.random.default_rng(14)
    labels = rng.integers(0, 2000, n + num_queries)
    centres = rng.standard_normal((2, 2000, 32)).astype(np.float32) * 3
    levels = [centres[i][labels] + rng.standard_normal((len(labels), 32), dtype=np.float32)
              for i in range(2)]
    cascade = qk.HierarchicalHashTable(32, 2).add(levels[0][:n], levels[1][:n], emb[:n])
    q_levels = [torch.from_numpy(level[n:]).cuda() for level in levels]
    cascade_s = _cuda_seconds(lambda: cascade.search(*q_levels, q_emb, topk),
                              max(3, args.repeat // 3))
    suf = qk.metrics.search_speedup(cascade.candidate_counts.cpu().numpy(), n)
    rows.append([f"HierarchicalHashTable 32 x 32, k = 2 N = {n:,}",
                 f"{num_queries / scan_s:,.0f} q/s torch exhaustive",
                 f"{num_queries / cascade_s:,.0f} q/s", f"{scan_s / cascade_s:.1f}x",
                 f"target SUF/2 = {suf / 2:.0f}x"])
    print_table(["kernel", "baseline", "ours", "ratio", "check"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=[*SUITES, "all"])
    parser.add_argument("--repeat", type=int, default=15, help="rounds per row (default 15)")
    parser.add_argument("--table-size", type=int, default=1_000_000,
                        help="database size of the table, pq and binary suites "
                             "(default 1,000,000)")
    parser.add_argument("--compressed-size", type=int, default=10_000_000,
                        help="database size of the compressed suite (default 10,000,000)")
    parser.add_argument("--sharded-size", type=int, default=2_000_000,
                        help="database size of the sharded suite (default 2,000,000)")
    parser.add_argument("--markdown", type=Path, metavar="PATH",
                        help="also write the tables to PATH (the docs' performance page)")
    args = parser.parse_args()
    print(f"qkernels {qk.__version__} on {machine()}, {datetime.date.today().isoformat()}\n")
    page = None if args.markdown is None else _Page(args.markdown, sys.argv[1:])
    with contextlib.redirect_stdout(page) if page else contextlib.nullcontext():
        if args.suite in ("all", "table", "pq", "binary"):
            roofline()  # measured first, on a machine no suite has loaded yet
        for name, run in SUITES.items():
            if args.suite in (name, "all"):
                run(args)
    if page:
        page.close()


class _Page:
    """What compare.py prints, to the terminal and to a Markdown page of the docs (written
    whole at the end, so that an interrupted run leaves the old page)."""

    def __init__(self, path: Path, argv: list[str]):
        self.path, self.terminal, self.parts = path, sys.stdout, []
        import faiss
        import ortools
        import torch

        command = " ".join(["python benchmarks/compare.py", *argv])
        self.parts.append(
            "# Performance\n\n"
            "Ours against the libraries people use for the same work, in one process: each row "
            "times every contestant on the same input, in rotating order, and reports medians; "
            "every row also checks that ours returns what the peer returns. Only ratios from "
            "one run are worth comparing. This page is written by\n\n"
            f"```\n{command}\n```\n\n"
            f"Run on {datetime.date.today().isoformat()}, {machine()}; numba "
            f"{numba.__version__}, numpy {np.__version__}, torch {torch.__version__}, faiss "
            f"{faiss.__version__}, OR-tools {ortools.__version__}. Numba compiled for "
            f"{_simd_summary()}.\n\n")

    def write(self, text: str) -> int:
        self.parts.append(text)
        return self.terminal.write(text)

    def flush(self) -> None:
        self.terminal.flush()

    def close(self) -> None:
        text = "".join(self.parts)
        # the headings of the suites are one level below the page's title
        text = text.replace("\n### ", "\n## ").replace("\n#### ", "\n### ")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(text.rstrip() + "\n")


def _simd_summary() -> str:
    from qkernels import _simd

    name, _ = _simd.numba_target()
    features = _simd.target_features()
    kind = ("AVX-512 with VBMI and VNNI" if _simd.has_byte_dots() else "AVX-512BW"
            if features["avx512bw"] else "AVX2" if features["avx2"] else "no AVX2")
    return f"{name} ({kind})"


if __name__ == "__main__":
    main()
