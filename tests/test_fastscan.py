"""The 4-bit PQ fast scan (PQIndex over a nbits=4 quantizer) against the loop reference, its
AVX2 (and, where the CPU has it, AVX-512) block against the scalar one, and its recall against
faiss IndexPQFastScan."""

import numba as nb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qkernels as qk
from qkernels import _simd
from qkernels.index import _fastscan_cpu
from tests import reference as ref

needs_avx2 = pytest.mark.skipif(not _simd.has_avx2(), reason="the CPU has no AVX2")


@pytest.fixture(params=["simd", "scalar"])
def kernel(request, monkeypatch):
    """Each search runs once with the AVX2 block and once with the scalar one."""
    if request.param == "simd" and not _simd.has_avx2():
        pytest.skip("the CPU has no AVX2")
    monkeypatch.setattr(qk.config, "FASTSCAN_SIMD", request.param == "simd")
    return request.param


def _case(seed, n, dim, m, duplicates):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((6, dim)) * 2
    x = (centres[rng.integers(0, 6, n + 40)] + rng.standard_normal((n + 40, dim)))
    x = x.astype(np.float32)
    pq = qk.ProductQuantizer(dim, m, 4, iterations=3, seed=seed % 997).train(x[:max(n, 16)]
                                                                            if n >= 16 else x)
    codes = pq.encode(x[:n])
    if duplicates:  # many equal codes: equal sums and equal distances, ties by the lower id
        codes = codes[rng.integers(0, max(1, n // 5), n)]
    return pq, codes, x[n:]


# the kernel fixture only sets a tunable, the same for every example
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1),
       shape=st.sampled_from([(8, 1), (8, 2), (12, 3), (16, 8), (10, 5), (36, 9), (32, 16)]),
       n=st.sampled_from([1, 5, 31, 32, 33, 64, 100, 257]),
       num_queries=st.sampled_from([1, 3, 17, 20]),
       topk=st.integers(1, 12), rerank=st.sampled_from([None, 0, "topk", 40]),
       metric=st.sampled_from(["l2", "ip"]), duplicates=st.booleans())
def test_search_equals_the_reference(kernel, seed, shape, n, num_queries, topk, rerank,
                                     metric, duplicates):
    dim, m = shape
    pq, codes, queries = _case(seed, n, dim, m, duplicates)
    index = qk.PQIndex(pq, metric=metric).add_codes(codes)
    assert index.fast_scan
    rerank = topk if rerank == "topk" else rerank
    D, I = index.search(queries[:num_queries], topk, rerank=rerank)
    rD, rI = ref.pq_fastscan_search(queries[:num_queries], codes, pq.codebooks, topk, metric,
                                    rerank)
    np.testing.assert_array_equal(I, rI)
    np.testing.assert_array_equal(D, np.array(rD, dtype=np.float32))


def _extreme_case(seed, extreme, dim, m, n, num_queries):
    """Codebooks, codes and queries at a numeric extreme of the fast scan's rounding:
    - tiny: magnitudes 2**-64 (tables near 2**-128, where ``255 / span`` overflows float32);
    - huge: at the largest magnitude the quantizer accepts (distances near float32's largest);
    - dominant: one sub-quantizer's distances 1e6 times the others' (their levels round to 0);
    - saturated: every table entry 0 or its maximum, so that an item's sum reaches 255 x M
      (65,280 at 256 sub-quantizers, the uint16 limit the scan is allowed)."""
    rng = np.random.default_rng(seed)
    dsub = dim // m
    codebooks = rng.standard_normal((m, 16, dsub))
    queries = rng.standard_normal((num_queries, dim))
    codes = rng.integers(0, 16, (n, m), dtype=np.uint8)
    if extreme == "tiny":
        codebooks, queries = codebooks * 2.0**-64, queries * 2.0**-64
    elif extreme == "huge":
        bound = np.sqrt(np.finfo(np.float32).max / (4.0 * dim)) * (1 - 1e-6)
        largest = max(np.abs(codebooks).max(), np.abs(queries).max())
        codebooks, queries = codebooks * (bound / largest), queries * (bound / largest)
    elif extreme == "dominant":
        codebooks[0] *= 1e3  # distances scale with the square
        queries[:, :dsub] *= 1e3
    elif extreme == "saturated":
        codebooks = np.zeros((m, 16, dsub))
        codebooks[:, 8:, 0] = 1.0  # entries 0 (codes 0..7) or dsub-independent 1 (8..15)
        queries = np.zeros((num_queries, dim))
        codes[: n // 2] = 15  # half the items take the maximum in every sub-quantizer
    pq = qk.ProductQuantizer(dim, m, 4).set_codebooks(codebooks.astype(np.float32))
    return pq, codes, queries.astype(np.float32)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1),
       extreme=st.sampled_from(["tiny", "huge", "dominant", "saturated"]),
       shape=st.sampled_from([(8, 2), (16, 8), (36, 9), (256, 256)]),
       n=st.sampled_from([1, 33, 100]), topk=st.integers(1, 12),
       rerank=st.sampled_from([None, 0, 40]), metric=st.sampled_from(["l2", "ip"]))
def test_search_equals_the_reference_at_numeric_extremes(kernel, seed, extreme, shape, n,
                                                         topk, rerank, metric):
    dim, m = shape
    pq, codes, queries = _extreme_case(seed, extreme, dim, m, n, 3)
    index = qk.PQIndex(pq, metric=metric).add_codes(codes)
    D, I = index.search(queries, topk, rerank=rerank)
    rD, rI = ref.pq_fastscan_search(queries, codes, pq.codebooks, topk, metric, rerank)
    np.testing.assert_array_equal(I, rI)
    np.testing.assert_array_equal(D, np.array(rD, dtype=np.float32))
    if extreme == "saturated" and metric == "l2" and rerank == 0 and m == 256:
        # the worst items' sums are exactly 255 x 256 = 65,280: still ranked last, not wrapped
        _, worst = index.search(queries, n, rerank=0)
        assert set(worst[0, n - n // 2:].tolist()) == set(range(n // 2))


def test_tiny_magnitudes_rank_as_the_exact_scan_does(kernel):
    """At 2**-64 the tables span about 2**-128 and ``255 / span`` overflows float32; the
    rounding must still rank as it does at magnitude 1 (it once collapsed the levels to
    {0, 255}, and the ids agreed with the exact scan on 14% of results)."""
    rng = np.random.default_rng(0)
    codebooks = rng.standard_normal((8, 16, 4)).astype(np.float32)
    codes = rng.integers(0, 16, (2000, 8), dtype=np.uint8)
    queries = rng.standard_normal((50, 32)).astype(np.float32)
    agreement = {}
    for scale in (1.0, 2.0**-64):
        pq = qk.ProductQuantizer(32, 8, 4).set_codebooks(codebooks * np.float32(scale))
        q = queries * np.float32(scale)
        _, I = qk.PQIndex(pq).add_codes(codes).search(q, 10)
        _, exact = qk.PQIndex(pq, fast_scan=False).add_codes(codes).search(q, 10)
        agreement[scale] = (I == exact).mean()
    assert agreement[1.0] > 0.99
    assert agreement[2.0**-64] >= agreement[1.0] - 0.01, agreement


def test_codebooks_whose_distances_overflow_are_refused(tmp_path):
    """``train`` refuses data whose squared distances overflow float32; so do given codebooks,
    and so does a file holding them (every search would return D = inf and ids 0..k-1)."""
    rng = np.random.default_rng(0)
    big = rng.standard_normal((8, 16, 4)) * 1e19
    with pytest.raises(ValueError, match=r"codebooks holds a value of magnitude .*32-d vectors"):
        qk.ProductQuantizer(32, 8, 4).set_codebooks(big)
    pq = qk.ProductQuantizer(32, 8, 4).set_codebooks(rng.standard_normal((8, 16, 4)))
    qk.PQIndex(pq).add_codes(rng.integers(0, 16, (10, 8))).save(tmp_path / "index.npz")
    with np.load(tmp_path / "index.npz") as f:
        arrays = {k: f[k] for k in f.files}
    arrays["codebooks"] = big.astype(np.float32)
    np.savez(tmp_path / "big.npz", **arrays)
    with pytest.raises(ValueError, match=r"corrupted PQIndex file \(codebooks holds a value"):
        qk.PQIndex.load(tmp_path / "big.npz")


def test_reranked_distances_are_the_exact_adc_distances(kernel):
    pq, codes, queries = _case(3, 3000, 32, 16, False)
    fast = qk.PQIndex(pq).add_codes(codes)
    exact = qk.PQIndex(pq, fast_scan=False).add_codes(codes)
    D, I = fast.search(queries, 10, rerank=200)
    _, eI = exact.search(queries, 10)
    # the exact distances of the returned ids, and nearly always the exact ids
    table = np.empty((len(queries), 16, 16), dtype=np.float32)
    qk.index._pq_cpu.distance_tables(queries, pq.codebooks, False, table)
    for q in range(len(queries)):
        want = [table[q, np.arange(16), codes[i]].cumsum(dtype=np.float32)[-1] for i in I[q]]
        np.testing.assert_allclose(D[q], want, rtol=1e-6)
    assert (I == eI).mean() > 0.95
    assert (np.diff(D, axis=1) >= 0).all()


@needs_avx2
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), pairs=st.sampled_from([1, 2, 3, 8, 64, 128]),
       start=st.integers(0, 40), extreme=st.booleans())
def test_simd_block_equals_the_scalar_block_and_the_reference(seed, pairs, start, extreme):
    rng = np.random.default_rng(seed)
    packed = rng.integers(0, 256, start + pairs * 32, dtype=np.uint8)
    lut = (np.full(pairs * 32, 255, dtype=np.uint8) if extreme  # the largest sums: 65280
           else rng.integers(0, 256, pairs * 32, dtype=np.uint8))
    want = ref.fastscan_block(packed, start, lut)
    for threshold in (0, int(np.median(want)), max(want), max(want) + 1, 65535):
        got = {}
        for name, block in (("simd", _fastscan_cpu.block_simd),
                            ("scalar", _fastscan_cpu.block_scalar)):
            out = np.zeros(32, dtype=np.uint16)
            mask = _call_block(block, packed, start, lut, threshold, out)
            got[name] = mask
            np.testing.assert_array_equal(out, want)
        assert got["simd"] == got["scalar"] == sum(1 << v for v in range(32)
                                                   if want[v] < threshold)
    # GROUP queries at once (3 with AVX2, 4 with AVX-512), each with its own tables and
    # threshold
    group_size = _fastscan_cpu.GROUP
    luts = np.stack([lut] + [rng.integers(0, 256, pairs * 32, dtype=np.uint8)
                             for _ in range(group_size - 1)])
    sums = [want] + [ref.fastscan_block(packed, start, t) for t in luts[1:]]
    thresholds = np.array([int(np.median(want))] + [max(t) + 1 for t in sums[1:]],
                          dtype=np.int64)
    for group in (_fastscan_cpu.group_simd, _fastscan_cpu.group_scalar):
        out = np.zeros((group_size, 32), dtype=np.uint16)
        masks = np.zeros(group_size, dtype=np.int64)
        union = _call_group(group, packed, start, luts, thresholds, out, masks)
        np.testing.assert_array_equal(out, sums)
        expected = [sum(1 << v for v in range(32) if s[v] < t)
                    for s, t in zip(sums, thresholds, strict=True)]
        assert masks.tolist() == expected
        assert union == np.bitwise_or.reduce(np.array(expected, dtype=np.int64))


@nb.njit
def _call_block(block, packed, start, lut, threshold, out):
    """A block kernel (inlined into its callers) called from Python."""
    return block(packed, start, lut, threshold, out)


@nb.njit
def _call_group(group, packed, start, luts, thresholds, out, masks):
    return group(packed, start, luts, thresholds, out, masks)


_OTHER_TARGET = """
import sys
import numpy as np
from qkernels import _simd
from qkernels.index import _fastscan_cpu
from tests import reference as ref
from tests.test_fastscan import _call_block, _call_group
avx512, group = sys.argv[1] == "avx512bw", int(sys.argv[2])
assert _simd.has_avx2() and _simd.has_avx512bw() == avx512 and not _simd.has_byte_dots()
assert _fastscan_cpu.GROUP == group
rng = np.random.default_rng(0)
for pairs in (1, 2, 3, 5, 8):
    for extreme in (False, True):
        packed = rng.integers(0, 256, 7 + pairs * 32, dtype=np.uint8)
        luts = rng.integers(0, 256, (group, pairs * 32), dtype=np.uint8)
        if extreme:
            luts[0] = 255
        want = [ref.fastscan_block(packed, 7, lut) for lut in luts]
        out = np.zeros(32, dtype=np.uint16)
        threshold = int(np.median(want[0]))
        mask = _call_block(_fastscan_cpu.block_simd, packed, 7, luts[0], threshold, out)
        assert (out == want[0]).all(), pairs
        assert mask == sum(1 << v for v in range(32) if want[0][v] < threshold)
        outs = np.zeros((group, 32), dtype=np.uint16)
        thresholds = np.array([threshold, 65535, 0, 1][:group])
        masks = np.zeros(group, dtype=np.int64)
        _call_group(_fastscan_cpu.group_simd, packed, 7, luts, thresholds, outs, masks)
        assert (outs == want).all(), pairs
        assert masks.tolist() == [sum(1 << v for v in range(32) if w[v] < t)
                                  for w, t in zip(want, thresholds)]
print("ok")
"""


@pytest.mark.parametrize(("name", "features", "needs", "group"), [
    ("haswell", "+avx,+avx2,+bmi,+bmi2,+f16c,+fma,+popcnt,+sse4.2", "avx2", 3),
    ("skylake-avx512", "", "avx512bw", 4),
])
def test_kernels_of_other_cpus_equal_the_reference(tmp_path, name, features, needs, group):
    """The fast scan has three vector paths, chosen when it is compiled: 256-bit shuffles
    (AVX2), two pairs per 512-bit shuffle (AVX-512BW), and whole-register look-ups with byte
    dot products (AVX-512 VBMI and VNNI). The tests above check the host's path; a child
    process compiling for Haswell (AVX2 only) or Skylake-X (AVX-512BW without VBMI and VNNI)
    checks the others on any host that can run them."""
    import os
    import subprocess
    import sys

    if not _simd.target_features()[needs]:
        pytest.skip(f"the CPU has no {needs}")
    env = dict(os.environ, NUMBA_CPU_NAME=name, NUMBA_CACHE_DIR=str(tmp_path),
               NUMBA_CPU_FEATURES=features)
    done = subprocess.run([sys.executable, "-c", _OTHER_TARGET, needs, str(group)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_layout_of_the_codes():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, (70, 5), dtype=np.uint8)
    packed = np.zeros(3 * 3 * 32, dtype=np.uint8)
    _fastscan_cpu.pack_codes(codes, 3, packed)
    for v in range(70):
        for m in range(5):
            byte = packed[(v // 32) * 96 + (m // 2) * 32 + (m % 2) * 16 + v % 16]
            assert (byte >> 4 if v % 32 >= 16 else byte & 15) == codes[v, m]
    assert not packed[2 * 96 + 2 * 32 + 16:2 * 96 + 3 * 32].any()  # sub-quantizer 5: none
    # vectors 70..95 of the last block: nothing
    for m in range(5):
        base = 2 * 96 + (m // 2) * 32 + (m % 2) * 16
        assert not (packed[base + 6:base + 16] & 15).any()
        assert not (packed[base:base + 16] >> 4).any()


def test_recall_within_002_of_faiss_fastscan():
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(7)
    dim, n = 32, 20_000
    centres = rng.standard_normal((100, dim)).astype(np.float32) * 2
    x = centres[rng.integers(0, 100, n + 200)] + rng.standard_normal((n + 200, dim),
                                                                     dtype=np.float32)
    xb, xq = x[:n], x[n:]
    exact = faiss.IndexFlatL2(dim)
    exact.add(xb)
    _, truth = exact.search(xq, 10)
    peer = faiss.IndexPQFastScan(dim, 16, 4)
    peer.train(xb)
    peer.add(xb)
    ours = qk.PQIndex(qk.ProductQuantizer(dim, 16, 4, seed=0).train(xb)).add(xb)

    def recall(I):
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, truth, strict=True)])

    r_peer = recall(peer.search(xq, 10)[1])
    r_ours = recall(ours.search(xq, 10)[1])
    r_plain = recall(ours.search(xq, 10, rerank=0)[1])
    assert r_ours >= r_peer - 0.02, (r_ours, r_peer)
    assert r_plain >= r_peer - 0.02, (r_plain, r_peer)


def test_save_load_keeps_the_scan(tmp_path):
    pq, codes, queries = _case(1, 500, 16, 4, False)
    for fast_scan in (True, False):
        index = qk.PQIndex(pq, "ip", fast_scan=fast_scan).add_codes(codes)
        index.save(tmp_path / "i.npz")
        loaded = qk.PQIndex.load(tmp_path / "i.npz")
        assert loaded.fast_scan is fast_scan and loaded.metric == "ip"
        for a, b in zip(index.search(queries, 7), loaded.search(queries, 7), strict=True):
            np.testing.assert_array_equal(a, b)
    # a file of an earlier release has no "fast_scan": the default for its quantizer
    with np.load(tmp_path / "i.npz") as f:
        arrays = {k: f[k] for k in f.files if k != "fast_scan"}
    np.savez(tmp_path / "old.npz", **arrays)
    assert qk.PQIndex.load(tmp_path / "old.npz").fast_scan is True
    arrays["fast_scan"] = np.array([1, 0])
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=r"corrupted PQIndex file.*'fast_scan' has dtype int64"):
        qk.PQIndex.load(tmp_path / "bad.npz")


def test_bad_arguments_are_refused():
    pq, codes, queries = _case(2, 100, 8, 2, False)
    pq8 = qk.ProductQuantizer(8, 2, 8).train(np.random.default_rng(0).standard_normal(
        (300, 8)).astype(np.float32))
    index = qk.PQIndex(pq).add_codes(codes)
    with pytest.raises(ValueError, match=r"fast_scan=True needs a 4-bit quantizer.*nbits=8"):
        qk.PQIndex(pq8, fast_scan=True)
    with pytest.raises(TypeError, match="fast_scan must be True, False or None, got 'yes'"):
        qk.PQIndex(pq, fast_scan="yes")
    with pytest.raises(ValueError, match=r"rerank applies to the 4-bit fast scan.*nbits=8"):
        qk.PQIndex(pq8).search(queries, 3, rerank=10)
    with pytest.raises(ValueError, match=r"this search is exact \(symmetric=True\)"):
        index.search(queries, 3, symmetric=True, rerank=10)
    with pytest.raises(ValueError, match="rerank must be 0 \\(off\\) or at least topk = 5"):
        index.search(queries, 5, rerank=3)
    with pytest.raises(ValueError, match="rerank must be"):
        index.search(queries, 5, rerank=-1)
    assert not qk.PQIndex(pq8).fast_scan
    wide = qk.ProductQuantizer(257, 257, 4).train(np.random.default_rng(1).standard_normal(
        (16, 257)).astype(np.float32))  # 257 x 255 overflows the uint16 sums
    assert not qk.PQIndex(wide).fast_scan
    with pytest.raises(ValueError, match=r"at most 256 sub-quantizers.*num_subspaces=257"):
        qk.PQIndex(wide, fast_scan=True)
    assert not qk.PQIndex(pq, fast_scan=False).fast_scan


def test_few_and_many_queries_and_an_add_give_the_same_results():
    pq, codes, queries = _case(4, 2000, 16, 8, True)
    index = qk.PQIndex(pq).add_codes(codes[:1500])
    first = index.search(queries, 9)
    index.add_codes(codes[1500:])  # the layout is remade
    both = index.search(queries, 9)
    one_by_one = [index.search(queries[i:i + 1], 9) for i in range(len(queries))]
    np.testing.assert_array_equal(both[1], np.concatenate([o[1] for o in one_by_one]))
    np.testing.assert_array_equal(both[0], np.concatenate([o[0] for o in one_by_one]))
    rD, rI = ref.pq_fastscan_search(queries, codes, pq.codebooks, 9)
    np.testing.assert_array_equal(both[1], rI)
    np.testing.assert_array_equal(both[0], np.array(rD, dtype=np.float32))
    assert not np.array_equal(first[1], both[1])
    D, I = qk.PQIndex(pq).search(queries, 3)  # an empty index: nothing found
    assert (I == -1).all() and np.isinf(D).all() and D.shape == (len(queries), 3)
