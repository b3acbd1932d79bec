import subprocess
import sys

import numpy as np
import pytest
import torch

from qkernels._arrays import Origin, array_library, origin_of, to_cupy, to_numpy, torch_stream


def _ptr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_numpy_passes_through_untouched():
    x = np.arange(6.0).reshape(2, 3)
    assert to_numpy(x) is x
    origin = origin_of(x)
    assert origin == Origin("numpy", "cpu")
    assert origin.wrap(x) is x


def test_torch_cpu_to_numpy_is_zero_copy():
    t = torch.randn(5, 7)
    a = to_numpy(t)
    assert _ptr(a) == t.data_ptr()
    t[0, 0] = 42.0
    assert a[0, 0] == 42.0


def test_non_contiguous_torch_keeps_strides_without_copy():
    base = torch.randn(6, 8)
    t = base.t()[::2]  # transposed, then every other row
    a = to_numpy(t)
    assert not a.flags.c_contiguous
    assert _ptr(a) == t.data_ptr()
    np.testing.assert_array_equal(a, t.numpy())


def test_tensor_that_requires_grad_is_detached_not_copied():
    t = torch.randn(3, 4, requires_grad=True)
    a = to_numpy(t)
    assert _ptr(a) == t.data_ptr()


def test_numpy_result_comes_back_as_torch_sharing_memory():
    origin = origin_of(torch.zeros(2))
    result = np.arange(4, dtype=np.int64)
    out = origin.wrap(result)
    assert isinstance(out, torch.Tensor)
    assert out.data_ptr() == _ptr(result)
    assert origin.wrap((result, result))[1].data_ptr() == _ptr(result)


def test_lists_and_scalars_are_refused_as_origin_of_refuses_them():
    for value in ([1, 2], 3.0, (1, 2)):
        with pytest.raises(TypeError, match="x must be a numpy array, a torch tensor or a cupy"):
            to_numpy(value, name="x")


def test_big_endian_and_unaligned_arrays_become_native_copies_with_the_same_values():
    x = np.arange(12, dtype=np.float64).reshape(3, 4)
    swapped = to_numpy(x.astype(">f8"))
    assert swapped.dtype == np.float64 and swapped.dtype.isnative
    np.testing.assert_array_equal(swapped, x)
    buffer = bytearray(x.nbytes + 1)
    unaligned = np.frombuffer(buffer, dtype=np.float64, offset=1).reshape(3, 4)
    unaligned[...] = x
    assert not unaligned.flags.aligned
    fixed = to_numpy(unaligned)
    assert fixed.flags.aligned
    np.testing.assert_array_equal(fixed, x)
    assert to_numpy(x) is x  # native and aligned: no copy


def test_mixed_libraries_are_rejected_with_names():
    with pytest.raises(TypeError, match="scores is a numpy array but codes is a torch array"):
        origin_of(np.zeros(2), torch.zeros(2), names=("scores", "codes"))


def test_unsupported_type_is_rejected():
    with pytest.raises(TypeError, match="x must be a numpy array, a torch tensor or a cupy"):
        origin_of([1, 2, 3], names=("x",))
    assert array_library([1]) is None


def test_none_entries_are_ignored():
    assert origin_of(None, np.zeros(1)) == Origin("numpy", "cpu")


def test_cpu_helpers_refuse_device_memory_and_non_gpu_arrays():
    with pytest.raises(ValueError, match="expected a torch CUDA tensor or a cupy array"):
        to_cupy(np.zeros(2))
    with pytest.raises(ValueError, match="expected a torch CUDA tensor or a cupy array"):
        to_cupy(torch.zeros(2))
    with torch_stream(Origin("torch", "cpu")) as stream:
        assert stream is None


def test_bfloat16_gets_a_clear_error():
    with pytest.raises(TypeError, match="bfloat16"):
        to_numpy(torch.zeros(2, dtype=torch.bfloat16))


def test_import_is_light():
    code = (
        "import sys, time; t = time.perf_counter(); import qkernels; "
        "print(time.perf_counter() - t, 'cupy' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, cupy_loaded, torch_loaded = out.stdout.split()
    assert cupy_loaded == "False"
    assert torch_loaded == "False"
    assert float(seconds) < 2.0


# ---------------------------------------------------------------------------------------------
# GPU: skipped without a device (see conftest.py)


@pytest.mark.gpu
def test_torch_cuda_to_cupy_and_back_is_zero_copy():
    import cupy

    t = torch.randn(4, 5, device="cuda")
    c = to_cupy(t)
    assert c.data.ptr == t.data_ptr()
    origin = origin_of(t)
    back = origin.wrap(cupy.arange(3))
    assert isinstance(back, torch.Tensor) and back.is_cuda
    strided = t.t()
    assert to_cupy(strided).data.ptr == strided.data_ptr()


@pytest.mark.gpu
def test_numpy_result_for_cuda_caller_lands_on_its_device():
    origin = origin_of(torch.zeros(2, device="cuda"))
    out = origin.wrap(np.arange(3))
    assert out.is_cuda


@pytest.mark.gpu
def test_cuda_tensor_needs_explicit_host_copy():
    t = torch.ones(3, device="cuda")
    with pytest.raises(ValueError, match="CPU tensor"):
        to_numpy(t)
    np.testing.assert_array_equal(to_numpy(t, allow_device_copy=True), np.ones(3))


@pytest.mark.gpu
def test_devices_must_match():
    with pytest.raises(ValueError, match=r"is on cpu but .* is on cuda:0"):
        origin_of(torch.zeros(1), torch.zeros(1, device="cuda"))


@pytest.mark.gpu
def test_cupy_launches_follow_torch_current_stream():
    import cupy

    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        origin = origin_of(torch.zeros(1, device="cuda"))
        with torch_stream(origin):
            assert cupy.cuda.get_current_stream().ptr == side.cuda_stream
    assert cupy.cuda.get_current_stream().ptr != side.cuda_stream
