"""GPU kernels against their CPU twins (marked gpu; the whole module skips without a device).

Run on a machine with an NVIDIA GPU and cupy: ``PYTHONPATH=. python3 -m pytest -m gpu``
(benchmarks/gpu_check.sh runs it with the GPU benchmarks). The shared cases of
tests/gpu_cases.py run here with torch CUDA tensors in and out (the DLPack exchange that the
stand-in cannot model), and again with cupy arrays.
"""

import contextlib

import numpy as np
import pytest
import torch

import qkernels as qk
from qkernels import _gpu
from tests import gpu_cases

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _gpu.available(), reason="needs an NVIDIA GPU with cupy"),
]


@pytest.fixture(params=[256, 32], ids=["threads256", "threads32"])
def block_size(request):
    """Also run with 32 threads per block, so that small inputs span several threads' ranges
    and the block-wide merges see many partial lists."""
    qk.config.GPU_THREADS_PER_BLOCK = request.param
    yield request.param
    qk.config.reset()


def cuda(a):
    return torch.from_numpy(np.ascontiguousarray(a)).cuda()


class TorchDevice(gpu_cases.Device):
    name = "torch"

    def put(self, a):
        return cuda(a)

    def get(self, x):
        torch.cuda.synchronize()
        return x.cpu().numpy()

    def is_device(self, x) -> bool:
        return isinstance(x, torch.Tensor) and x.is_cuda

    @contextlib.contextmanager
    def stream(self):
        with torch.cuda.stream(torch.cuda.Stream()) as stream:
            yield stream


class CupyDevice(gpu_cases.Device):
    name = "cupy"

    def put(self, a):
        import cupy

        return cupy.asarray(a)

    def get(self, x):
        import cupy

        return cupy.asnumpy(x)

    def is_device(self, x) -> bool:
        import cupy

        return isinstance(x, cupy.ndarray)

    def stream(self):
        import cupy

        return cupy.cuda.Stream()


@pytest.mark.parametrize("device", [TorchDevice(), CupyDevice()], ids=["torch", "cupy"])
@pytest.mark.parametrize("name", sorted(gpu_cases.CASES))
def test_gpu_entry_point(device, name):
    gpu_cases.CASES[name](device)


# ------------------------------------------------------------------ flow


@pytest.mark.parametrize(("n", "d", "k"), [(16, 8, 1), (40, 12, 3), (64, 64, 4), (30, 90, 2)])
def test_batched_solver_returns_the_cpu_codes(block_size, n, d, k):
    rng = np.random.default_rng(n + d + k)
    scores = rng.integers(-20, 21, (12, n, d)).astype(np.float64)
    penalty = 7.0
    on_gpu = qk.solve_sparse_codes(cuda(scores), k, penalty)
    assert on_gpu.is_cuda and on_gpu.dtype == torch.int64 and on_gpu.shape == (12, n, k)
    gpu_values = qk.sparse_code_objective(scores, on_gpu.cpu().numpy(), penalty)
    cpu_values = qk.sparse_code_objective(scores, qk.solve_sparse_codes(scores, k, penalty),
                                          penalty)
    np.testing.assert_array_equal(gpu_values, cpu_values)  # integer-valued: exactly
    assert (np.diff(on_gpu.cpu().numpy(), axis=-1) > 0).all()
    # the kernel runs the CPU's algorithm step for step: the same codes, not only the optimum
    np.testing.assert_array_equal(on_gpu.cpu().numpy(), qk.solve_sparse_codes(scores, k, penalty))


def test_assign_batch_codes_stays_on_the_device():
    from qkernels.losses import assign_batch_codes

    activations = torch.randn(32, 16, device="cuda")
    labels = torch.arange(32, device="cuda") % 8
    codes, mask = assign_batch_codes(activations, labels, 2, 1.0)
    assert codes.is_cuda and mask.is_cuda


# ------------------------------------------------------------------ Hamming


@pytest.mark.parametrize("nbits", [8, 64, 100, 128, 256])
def test_hamming_equals_the_cpu(block_size, nbits):
    rng = np.random.default_rng(nbits)
    centres = rng.standard_normal((5, nbits))
    db = qk.pack_bits(centres[rng.integers(0, 5, 3000)] + 0.4 * rng.standard_normal((3000, nbits)))
    queries = qk.pack_bits(rng.standard_normal((70, nbits)))
    for topk in (1, 10, 100):
        D, I = qk.hamming_topk(cuda(queries), cuda(db), topk)
        assert D.is_cuda and D.dtype == torch.int32 and I.dtype == torch.int64
        cD, cI = qk.hamming_topk(queries, db, topk)
        np.testing.assert_array_equal(D.cpu().numpy(), cD)
        np.testing.assert_array_equal(I.cpu().numpy(), cI)
    index = qk.BinaryIndex(nbits).add(db)
    D, I = index.search(cuda(queries), 10)
    np.testing.assert_array_equal(I.cpu().numpy(), qk.hamming_topk(queries, db, 10)[1])


# ------------------------------------------------------------------ PQ


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_pq_search_equals_the_cpu(block_size, metric):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((5000, 32)) + 3 * rng.standard_normal((50, 32))[
        rng.integers(0, 50, 5000)]).astype(np.float32)
    q = rng.standard_normal((60, 32)).astype(np.float32)
    pq = qk.ProductQuantizer(32, 8, 8, iterations=5).train(x)
    index = qk.PQIndex(pq, metric=metric).add(x)
    for topk in (1, 10, 64):
        D, I = index.search(cuda(q), topk)
        cD, cI = index.search(q, topk)
        np.testing.assert_array_equal(I.cpu().numpy(), cI)
        np.testing.assert_array_equal(D.cpu().numpy(), cD)


# ------------------------------------------------------------------ table


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_table_probe_equals_the_cpu(block_size, k):
    rng = np.random.default_rng(k)
    labels = rng.integers(0, 6, 4000)
    favour = rng.standard_normal((6, 32))
    act = favour[labels] * 2 + rng.standard_normal((4000, 32))
    emb = (rng.standard_normal((6, 16))[labels] * 3 + rng.standard_normal((4000, 16))).astype(
        np.float32)
    ids = rng.permutation(100_000)[:4000]
    table = qk.SparseHashTable(32, k).add(act, emb, ids=ids)
    queries = rng.choice(4000, 50, replace=False)
    for topk, exclude in ((16, None), (64, ids[queries][:, None])):
        D, I = table.search(cuda(act[queries]), cuda(emb[queries]), topk,
                            exclude=None if exclude is None else cuda(exclude))
        gpu_counts = table.candidate_counts.cpu().numpy()  # on the queries' device
        cD, cI = table.search(act[queries], emb[queries], topk, exclude=exclude)
        np.testing.assert_array_equal(I.cpu().numpy(), cI)
        np.testing.assert_array_equal(D.cpu().numpy(), cD)
        np.testing.assert_array_equal(gpu_counts, table.candidate_counts)
