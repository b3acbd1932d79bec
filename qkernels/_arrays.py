"""Array interop: numpy, torch (CPU or CUDA) and cupy in; the caller's type out.

Every public entry point of qkernels follows the same four steps::

    origin = origin_of(x, y)          # which library, which device; rejects mixes
    xk = to_numpy(x)                  # or to_cupy(x): zero-copy through DLPack
    out = kernel(xk, ...)             # Numba (numpy arrays) or a RawKernel (cupy arrays)
    return origin.wrap(out)           # back to the caller's library and device

Conversions never copy when the memory can be shared: torch <-> numpy and torch <-> cupy go
through DLPack, so the kernel reads the caller's buffer and the caller receives the kernel's
output buffer. Neither torch nor cupy is imported here: a tensor can only exist if its library
was imported by the caller, so the type checks look the modules up in ``sys.modules``.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Origin",
    "array_library",
    "is_cuda",
    "native",
    "origin_of",
    "read_only",
    "to_cupy",
    "to_numpy",
    "torch_stream",
]

NUMPY, TORCH, CUPY = "numpy", "torch", "cupy"


def _torch():
    return sys.modules.get("torch")


def _cupy():
    return sys.modules.get("cupy")


def array_library(x: Any) -> str | None:
    """Return ``"numpy"``, ``"torch"`` or ``"cupy"`` for a supported array, else ``None``."""
    if isinstance(x, np.ndarray):
        return NUMPY
    torch = _torch()
    if torch is not None and isinstance(x, torch.Tensor):
        return TORCH
    cupy = _cupy()
    if cupy is not None and isinstance(x, cupy.ndarray):
        return CUPY
    return None


def _device_of(x: Any, library: str) -> str:
    if library == NUMPY:
        return "cpu"
    if library == TORCH:
        return str(x.device) if x.device.type != "cuda" else f"cuda:{x.device.index or 0}"
    return f"cuda:{x.device.id}"


def is_cuda(x: Any) -> bool:
    """True for a torch CUDA tensor or a cupy array."""
    library = array_library(x)
    return library is not None and _device_of(x, library).startswith("cuda")


@dataclass(frozen=True)
class Origin:
    """Where the caller's arrays live: the library (numpy, torch or cupy) and the device."""

    library: str
    device: str

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def wrap(self, result: Any) -> Any:
        """Return a kernel's output (numpy or cupy) as the caller's array type and device.

        numpy -> torch CPU and cupy -> torch CUDA share memory (no copy). A numpy result for a
        CUDA caller is copied to the caller's device, which is the one copy a CPU kernel run on
        behalf of a GPU caller has to make.
        """
        if self.library == NUMPY and type(result) is np.ndarray:
            return result
        if isinstance(result, tuple):
            return tuple(self.wrap(r) for r in result)
        if result is None or np.isscalar(result):
            return result
        kind = array_library(result)
        if kind is None:
            raise TypeError(f"internal error: cannot wrap a {type(result).__name__}")
        if self.library == NUMPY:
            if kind == NUMPY:
                return result
            return result.get()  # a GPU kernel's output for a numpy caller
        if self.library == TORCH:
            torch = _torch()
            if kind == NUMPY:
                tensor = torch.from_numpy(result)
                return tensor.to(self.device) if self.is_cuda else tensor
            if kind == CUPY:
                return torch.from_dlpack(result)
            return result
        # cupy caller
        cupy = _cupy()
        if kind == NUMPY:
            with cupy.cuda.Device(int(self.device.split(":")[1])):
                return cupy.asarray(result)
        if kind == TORCH:
            return cupy.from_dlpack(result)
        return result


HOST = Origin(NUMPY, "cpu")


def origin_of(*arrays: Any, names: tuple[str, ...] | None = None) -> Origin:
    """Return the common :class:`Origin` of ``arrays``; ``None`` entries are ignored.

    Raises TypeError for an unsupported type or a mix of libraries, and ValueError for arrays
    on two different devices. ``names`` (one per array) makes the messages name the arguments.
    """
    if len(arrays) == 1 and type(arrays[0]) is np.ndarray:  # the common call, kept cheap
        return HOST
    if names is None:
        names = tuple(f"argument {i}" for i in range(len(arrays)))
    found: list[tuple[str, str, str]] = []
    if len(names) != len(arrays):
        raise TypeError("internal error: one name per array expected")
    for name, x in zip(names, arrays, strict=True):
        if x is None:
            continue
        library = array_library(x)
        if library is None:
            raise _unsupported(x, name)
        found.append((name, library, _device_of(x, library)))
    if not found:
        raise TypeError("no array given")
    first_name, library, device = found[0]
    for name, other_library, other_device in found[1:]:
        if other_library != library:
            raise TypeError(
                f"{first_name} is a {library} array but {name} is a {other_library} array; "
                "pass arrays of one library"
            )
        if other_device != device:
            raise ValueError(
                f"{first_name} is on {device} but {name} is on {other_device}; "
                "move them to one device"
            )
    return Origin(library, device)


def _unsupported(x: Any, name: str) -> TypeError:
    return TypeError(
        f"{name} must be a numpy array, a torch tensor or a cupy array, "
        f"got {type(x).__module__}.{type(x).__qualname__}"
    )


def native(x: np.ndarray) -> np.ndarray:
    """``x`` itself when it is in the machine's byte order and aligned, else a native, aligned
    copy with the same values (Numba kernels read raw bytes: a big-endian or unaligned buffer
    would be misread or refused deep inside)."""
    if x.dtype.isnative and x.flags.aligned:
        return x
    if x.dtype.fields is not None or x.dtype.subdtype is not None:
        raise TypeError(f"structured dtype {x.dtype} is not accepted; pass a plain array")
    return x.astype(x.dtype.newbyteorder("="), order="K")


def read_only(x: np.ndarray) -> np.ndarray:
    """A read-only view of ``x``. Numba compiles a kernel once per signature, and an array's
    writability is part of it: the kernels are given views of one kind, so a caller's writable
    array and an index's read-only snapshot share one compiled kernel (about 10-30 s each)."""
    view = x.view()
    view.flags.writeable = False
    return view


def to_numpy(x: Any, *, allow_device_copy: bool = False, name: str = "input") -> np.ndarray:
    """A numpy view of ``x`` without copying; strides (non-contiguous inputs) are kept.

    A torch tensor that requires grad is detached (kernels carry no gradient). Memory on a GPU
    cannot be viewed from the host: it is copied when ``allow_device_copy`` is true and refused
    otherwise. A numpy array in the other byte order, or unaligned, is copied into a native,
    aligned one (the one copy at the boundary; see :func:`native`). Anything that is not a numpy
    array, a torch tensor or a cupy array (a list, say) is refused with a TypeError, as
    :func:`origin_of` refuses it: one rule at every entry point.
    """
    library = array_library(x)
    if library == NUMPY:
        return native(x)
    if library == TORCH:
        t = x.detach()
        if t.is_conj():
            t = t.resolve_conj()
        if t.is_neg():
            t = t.resolve_neg()
        if t.device.type != "cpu":
            if not allow_device_copy:
                raise ValueError(f"tensor is on {t.device}; this operation needs a CPU tensor")
            t = t.cpu()
        if t.dtype in (_torch().bfloat16,):
            raise TypeError("bfloat16 tensors have no numpy equivalent; convert with .float()")
        return np.from_dlpack(t)
    if library == CUPY:
        if not allow_device_copy:
            raise ValueError("cupy array lives on a GPU; this operation needs a host array")
        return x.get()
    raise _unsupported(x, name)


def to_cupy(x: Any):
    """A cupy view of a torch CUDA tensor or cupy array without copying (strides kept)."""
    library = array_library(x)
    if library == CUPY:
        return x
    if library == TORCH and x.device.type == "cuda":
        import cupy

        t = x.detach()
        if t.is_conj():
            t = t.resolve_conj()
        if t.is_neg():
            t = t.resolve_neg()
        return cupy.from_dlpack(t)
    raise ValueError(f"expected a torch CUDA tensor or a cupy array, got {type(x).__qualname__}")


@contextlib.contextmanager
def torch_stream(origin: Origin):
    """Run cupy launches inside on torch's current CUDA stream of ``origin``'s device.

    For a cupy caller the current cupy stream is left as it is. The previous cupy stream is
    restored on exit, also when the body raises.
    """
    if not origin.is_cuda:
        yield None
        return
    import cupy

    index = int(origin.device.split(":")[1])
    with cupy.cuda.Device(index):
        if origin.library != TORCH:
            yield cupy.cuda.get_current_stream()
            return
        torch = _torch()
        stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(index).cuda_stream, index)
        with stream:
            yield stream
