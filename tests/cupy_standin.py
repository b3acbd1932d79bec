"""A stand-in for cupy, so that qkernels' GPU paths run end to end on a machine without a GPU.

The :func:`installed` context puts this module in ``sys.modules["cupy"]`` (the ``standin``
fixture of tests/conftest.py does it for a test). Then ``qkernels._gpu.available()`` is true and
every public entry point given a stand-in array takes its GPU path: the same Python, the same
launch configurations, the kernels of ``qkernels/cuda/*.cu`` compiled by ``RawModule`` through
tests/emulation.py and run on the CPU.

What it models, because the GPU paths depend on it:

* **Device memory that the host cannot read implicitly.** An :class:`ndarray` holds a numpy
  array, but ``__array__`` raises TypeError as cupy's does, and so does mixing it with a numpy
  array in arithmetic or in a numpy function: a hidden host round trip fails loudly.
* **Counted copies.** ``cupy.asarray`` of host data, ``ndarray.set`` and host arrays assigned into
  device arrays are host-to-device copies; ``cupy.asnumpy``, ``ndarray.get``, ``item``,
  ``tolist``, ``bool``/``int``/``float`` of a device array are device-to-host copies. Each is
  recorded in :data:`ledger` (direction, bytes, what) with the current stream.
* **Streams and devices.** ``cuda.Stream``, ``cuda.ExternalStream`` and ``cuda.Device`` as
  context managers; every kernel launch is recorded with the stream that was current.
* **Kernels.** ``RawModule(code=..., options=...)`` compiles the source with its ``-D`` and
  ``-I`` options for the emulation; a launch checks that every argument is a device array or a
  numpy scalar (a host array is refused, as cupy refuses it) and runs the kernel.
* **DLPack, as far as qkernels uses it.** ``cupy.from_dlpack`` of a stand-in array is that
  array; of host memory (a CPU tensor) it is refused, as cupy refuses it.

What it does not model: timing, memory limits and allocation failures, the asynchrony and real
concurrency of streams (everything runs at once, in order), more than one device, CUDA torch
tensors and DLPack capsules of device memory (a CPU build of torch cannot hold one), and the
numerical differences of cuBLAS and of the GPU's math library (numpy computes instead). A
cupy function that qkernels does not call is absent: using it fails with AttributeError.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import sys
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tests import emulation

__all__ = ["Ledger", "installed", "ledger", "module"]


@dataclass(frozen=True)
class Copy:
    direction: str  # "htod" or "dtoh"
    nbytes: int
    what: str
    stream: int
    caller: str  # the innermost qkernels frame that asked for it, "path:line"


@dataclass(frozen=True)
class Launch:
    function: str
    grid: int
    block: int
    stream: int
    device: int


@dataclass
class Ledger:
    """What crossed between host and device, and which kernels ran on which stream."""

    copies: list[Copy] = field(default_factory=list)
    launches: list[Launch] = field(default_factory=list)

    def clear(self) -> None:
        self.copies.clear()
        self.launches.clear()

    def count(self, direction: str) -> int:
        return sum(c.direction == direction for c in self.copies)

    def nbytes(self, direction: str) -> int:
        return sum(c.nbytes for c in self.copies if c.direction == direction)

    def summary(self) -> dict[str, tuple[int, int]]:
        """``{direction: (copies, bytes)}``, for messages and the docs."""
        return {d: (self.count(d), self.nbytes(d)) for d in ("htod", "dtoh")}

    @contextlib.contextmanager
    def watching(self):
        """Record only what happens inside; yields a fresh :class:`Ledger` of it."""
        start_copies, start_launches = len(self.copies), len(self.launches)
        part = Ledger()
        try:
            yield part
        finally:
            part.copies.extend(self.copies[start_copies:])
            part.launches.extend(self.launches[start_launches:])


ledger = Ledger()
_lock = threading.Lock()
_local = threading.local()


def _caller() -> str:
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if f"{Path('qkernels')}" in path and "tests" not in Path(path).parts:
            return f"{Path(path).name}:{frame.f_lineno}"
        frame = frame.f_back
    return "outside qkernels"


def _record_copy(direction: str, nbytes: int, what: str) -> None:
    copy = Copy(direction, int(nbytes), what, get_current_stream().ptr, _caller())
    with _lock:
        ledger.copies.append(copy)


# ------------------------------------------------------------------ devices and streams


class Device:
    """``cupy.cuda.Device``: one device (id 0); a context manager that makes it current."""

    def __init__(self, device: int | None = None):
        self.id = _current_device() if device is None else int(device)
        if self.id != 0:
            raise RuntimeError("cudaErrorInvalidDevice: the stand-in has one device, not "
                               f"{self.id}")

    def __enter__(self):
        _stack("devices").append(self.id)
        return self

    def __exit__(self, *exc):
        _stack("devices").pop()

    def synchronize(self) -> None:
        pass

    @property
    def compute_capability(self) -> str:
        return "90"

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"<CUDA Device {self.id}>"


def _stack(name: str) -> list:
    if not hasattr(_local, name):
        setattr(_local, name, [])
    return getattr(_local, name)


def _current_device() -> int:
    devices = _stack("devices")
    return devices[-1] if devices else 0


_stream_ids = itertools.count(1000)


class Stream:
    """``cupy.cuda.Stream``: a handle (``ptr``) and a context manager making it current."""

    null: Stream

    def __init__(self, null: bool = False, non_blocking: bool = False, ptr: int | None = None):
        self.ptr = 0 if null else (next(_stream_ids) if ptr is None else int(ptr))
        self.device_id = _current_device()

    def __enter__(self):
        _stack("streams").append(self)
        return self

    def __exit__(self, *exc):
        _stack("streams").pop()

    def use(self):
        _stack("streams")[:] = [self]
        return self

    def synchronize(self) -> None:
        pass

    def __eq__(self, other):
        return isinstance(other, Stream) and other.ptr == self.ptr

    def __hash__(self):
        return hash(self.ptr)

    def __repr__(self):
        return f"<Stream {self.ptr}>"


class ExternalStream(Stream):
    """``cupy.cuda.ExternalStream(ptr, device_id)``: a stream made elsewhere (torch's)."""

    def __init__(self, ptr: int, device_id: int = -1):
        super().__init__(ptr=ptr)


Stream.null = Stream(null=True)


def get_current_stream(device_id: int | None = None) -> Stream:
    streams = _stack("streams")
    return streams[-1] if streams else Stream.null


# ------------------------------------------------------------------ arrays

_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
             "construct a NumPy array explicitly.")


def _refuse_host(value: Any, where: str) -> None:
    if isinstance(value, np.ndarray) and not isinstance(value, np.generic):
        raise TypeError(f"Unsupported type {type(value)}: {where} takes cupy arrays "
                        "(a host array would need an explicit cupy.asarray)")


def _unwrap(value: Any, where: str) -> Any:
    """Device arrays to their host buffers for numpy to compute on; host arrays refused."""
    if isinstance(value, ndarray):
        return value._a
    _refuse_host(value, where)
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v, where) for v in value)
    return value


def _wrap(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return ndarray._of(value)
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    if isinstance(value, np.generic):  # cupy reductions return 0-d device arrays
        return ndarray._of(np.asarray(value))
    return value


class _Flags:
    def __init__(self, a: np.ndarray):
        self.c_contiguous = a.flags.c_contiguous
        self.f_contiguous = a.flags.f_contiguous
        self.owndata = a.flags.owndata

    def __getitem__(self, name: str) -> bool:
        return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous,
                "OWNDATA": self.owndata}[name]


class ndarray:
    """``cupy.ndarray``: device memory (a host buffer the host may not read implicitly)."""

    __array_priority__ = 100

    def __init__(self, shape, dtype=float, order="C"):
        self._a = np.empty(shape, dtype=dtype, order=order)
        self._device = _current_device()

    @classmethod
    def _of(cls, a: np.ndarray) -> ndarray:
        out = cls.__new__(cls)
        out._a = a
        out._device = _current_device()
        return out

    # --- the host may not look inside without a counted copy
    def __array__(self, *args, **kwargs):
        raise TypeError(_IMPLICIT)

    def get(self, stream=None, order="C", out=None) -> np.ndarray:
        _record_copy("dtoh", self._a.nbytes, "ndarray.get")
        return np.array(self._a, order=order)

    def set(self, arr: np.ndarray, stream=None) -> None:
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, got {type(arr)}")
        _record_copy("htod", arr.nbytes, "ndarray.set")
        self._a[...] = arr

    def _scalar(self, what: str):
        if self._a.size != 1:
            raise TypeError(f"only size-1 arrays can be converted ({what} of shape "
                            f"{self._a.shape})")
        _record_copy("dtoh", self._a.itemsize, what)
        return self._a.reshape(()).item()

    def __bool__(self):
        return bool(self._scalar("bool()"))

    def __int__(self):
        return int(self._scalar("int()"))

    def __float__(self):
        return float(self._scalar("float()"))

    def __index__(self):
        if self._a.dtype.kind not in "iu":
            raise TypeError("only integer arrays can be indices")
        return int(self._scalar("index"))

    def item(self):
        return self._scalar("item()")

    def tolist(self):
        _record_copy("dtoh", self._a.nbytes, "tolist()")
        return self._a.tolist()

    # --- DLPack
    def __dlpack_device__(self):
        return (2, self._device)  # kDLCUDA

    def __dlpack__(self, stream=None, **kwargs):
        raise BufferError("the cupy stand-in holds host memory: it cannot make the DLPack "
                          "capsule of device memory that a CUDA consumer would read")

    def toDlpack(self):
        return self.__dlpack__()

    # --- attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: _Flags(self._a))
    T = property(lambda self: ndarray._of(self._a.T))
    device = property(lambda self: Device(self._device))

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (ndarray._of(row) if isinstance(row, np.ndarray) else _wrap(row)
                for row in self._a)

    def __repr__(self):
        return f"<cupy stand-in ndarray shape={self.shape} dtype={self.dtype}>"

    # --- indexing
    def _index(self, key):
        if isinstance(key, tuple):
            return tuple(self._index(k) for k in key)
        if isinstance(key, ndarray):
            return key._a
        if isinstance(key, np.ndarray):
            _record_copy("htod", key.nbytes, "host index array")
            return key
        return key

    def __getitem__(self, key):
        return _wrap(self._a[self._index(key)])

    def __setitem__(self, key, value):
        if isinstance(value, np.ndarray):
            _record_copy("htod", value.nbytes, "host array assigned")
        elif isinstance(value, ndarray):
            value = value._a
        self._a[self._index(key)] = value

    # --- methods that stay on the device
    def reshape(self, *shape, order="C"):
        return ndarray._of(self._a.reshape(*shape, order=order))

    def view(self, dtype=None):
        return ndarray._of(self._a.view() if dtype is None else self._a.view(dtype))

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        return ndarray._of(self._a.astype(dtype, order=order, copy=copy))

    def copy(self, order="C"):
        return ndarray._of(self._a.copy(order=order))

    def ravel(self, order="C"):
        return ndarray._of(self._a.ravel(order=order))

    def transpose(self, *axes):
        return ndarray._of(self._a.transpose(*axes))

    def fill(self, value):
        self._a.fill(value)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        where = f"numpy.{ufunc.__name__}"
        inputs = tuple(_unwrap(i, where) for i in inputs)
        if "out" in kwargs:
            kwargs["out"] = tuple(_unwrap(o, where) for o in kwargs["out"])
        return _wrap(getattr(ufunc, method)(*inputs, **kwargs))

    def __array_function__(self, func, types, args, kwargs):
        where = f"numpy.{func.__name__}"
        return _wrap(func(*_unwrap(list(args), where),
                          **{k: _unwrap(v, where) for k, v in kwargs.items()}))


def _method(name: str):
    def call(self, *args, **kwargs):
        where = f"ndarray.{name}"
        result = getattr(self._a, name)(*_unwrap(list(args), where),
                                        **{k: _unwrap(v, where) for k, v in kwargs.items()})
        return _wrap(result)

    call.__name__ = name
    return call


for _name in ("sum", "any", "all", "max", "min", "argmax", "argmin", "mean", "cumsum",
              "argsort", "sort", "nonzero", "squeeze", "swapaxes", "take", "clip", "dot",
              "repeat"):
    setattr(ndarray, _name, _method(_name))


def _operator(ufunc, reflected: bool = False):
    def call(self, other):
        where = f"the operator {ufunc.__name__}"
        if isinstance(other, np.ndarray) and other.ndim:
            _refuse_host(other, where)
        a, b = (other, self) if reflected else (self, other)
        return _wrap(ufunc(_unwrap(a, where), _unwrap(b, where)))

    return call


for _name, _ufunc in (("add", np.add), ("sub", np.subtract), ("mul", np.multiply),
                      ("truediv", np.true_divide), ("floordiv", np.floor_divide),
                      ("mod", np.remainder), ("pow", np.power), ("matmul", np.matmul),
                      ("and", np.bitwise_and), ("or", np.bitwise_or), ("xor", np.bitwise_xor),
                      ("lshift", np.left_shift), ("rshift", np.right_shift)):
    setattr(ndarray, f"__{_name}__", _operator(_ufunc))
    setattr(ndarray, f"__r{_name}__", _operator(_ufunc, reflected=True))
for _name, _ufunc in (("lt", np.less), ("le", np.less_equal), ("gt", np.greater),
                      ("ge", np.greater_equal), ("eq", np.equal), ("ne", np.not_equal)):
    setattr(ndarray, f"__{_name}__", _operator(_ufunc))
ndarray.__hash__ = None
ndarray.__neg__ = lambda self: ndarray._of(-self._a)
ndarray.__invert__ = lambda self: ndarray._of(~self._a)
ndarray.__abs__ = lambda self: ndarray._of(abs(self._a))


# ------------------------------------------------------------------ module functions


def asarray(a: Any, dtype=None, order=None) -> ndarray:
    """Device arrays pass through (cast if asked); anything on the host is copied over."""
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == np.dtype(dtype) else a.astype(dtype)
    if hasattr(a, "__dlpack_device__") and not isinstance(a, np.ndarray):
        device = a.__dlpack_device__()[0]
        if device != 1:
            raise TypeError(f"the stand-in cannot read memory of DLPack device type {device}")
    host = np.array(a, dtype=dtype, order="C" if order is None else order)
    _record_copy("htod", host.nbytes, "cupy.asarray")
    return ndarray._of(host)


array = asarray


def asnumpy(a: Any, stream=None, order="C") -> np.ndarray:
    if isinstance(a, ndarray):
        return a.get(order=order)
    return np.asarray(a, order=order)


def from_dlpack(x: Any) -> ndarray:
    if isinstance(x, ndarray):
        return x
    kind = x.__dlpack_device__()[0] if hasattr(x, "__dlpack_device__") else None
    raise RuntimeError(f"cupy.from_dlpack: the capsule is on DLPack device type {kind}, not "
                       "CUDA (2); cupy reads device memory only")


fromDlpack = from_dlpack


def get_array_module(*args):
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else np


def _creation(func):
    @functools.wraps(func)
    def call(*args, **kwargs):
        return _wrap(func(*_unwrap(list(args), f"cupy.{func.__name__}"),
                          **{k: _unwrap(v, f"cupy.{func.__name__}")
                             for k, v in kwargs.items()}))

    return call


_FUNCTIONS = {
    # made on the device
    "empty", "zeros", "ones", "full", "arange", "eye", "empty_like", "zeros_like", "ones_like",
    "full_like", "tri",
    # on device arrays
    "ascontiguousarray", "where", "maximum", "minimum", "isfinite", "isnan", "isinf", "abs",
    "absolute", "sqrt", "square", "sum", "any", "all", "amax", "amin", "max", "min", "argmax",
    "argmin", "argsort", "sort", "take_along_axis", "take", "concatenate", "stack", "matmul",
    "dot", "einsum", "searchsorted", "cumsum", "diff", "broadcast_to", "expand_dims", "clip",
    "tril", "triu", "sign", "signbit", "logical_and", "logical_or", "logical_not",
    "count_nonzero", "repeat", "tile", "lexsort", "bitwise_and", "bitwise_or", "left_shift",
    "right_shift", "unique", "nonzero", "flatnonzero", "copyto", "less", "greater", "equal",
    "not_equal", "less_equal", "greater_equal", "add", "subtract", "multiply", "divide",
    "iscomplexobj", "result_type", "can_cast", "ravel", "transpose",
    "reshape", "linalg",
}
_TYPES = ("bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "float32", "float64", "complex64", "complex128", "dtype", "inf", "nan",
          "newaxis", "iinfo", "finfo", "integer", "floating", "number", "signedinteger",
          "unsignedinteger", "bool")


def ascontiguousarray(a, dtype=None):
    _refuse_host(a, "cupy.ascontiguousarray")
    return _wrap(np.ascontiguousarray(_unwrap(a, "cupy.ascontiguousarray"), dtype=dtype))


# ------------------------------------------------------------------ kernels


class RawKernel:
    """A kernel of a :class:`RawModule`: a launch runs it under the emulation."""

    def __init__(self, library, name: str):
        self._library = library
        self.name = name

    def __call__(self, grid, block, args, *, shared_mem: int = 0, stream=None):
        grid, block = tuple(grid), tuple(block)
        if len(grid) != 1 or len(block) != 1:
            raise ValueError(f"{self.name}: the stand-in launches 1-d grids and blocks, got "
                             f"grid {grid} and block {block}")
        host = []
        for i, a in enumerate(args):
            if isinstance(a, ndarray):
                host.append(a._a)
            elif isinstance(a, np.ndarray):
                raise TypeError(f"{self.name}: argument {i} is a host array ({a.dtype}); "
                                "cupy passes device arrays and numpy scalars only")
            else:
                host.append(a)
        stream = get_current_stream() if stream is None else stream
        with _lock:
            ledger.launches.append(Launch(self.name, grid[0], block[0], stream.ptr,
                                          _current_device()))
        emulation.launch_library(self._library, self.name, grid[0], block[0], tuple(host),
                                 shared_mem)


class RawModule:
    """``cupy.RawModule(code=..., options=...)``: compiled for the emulation, with the
    ``-D`` defines of ``options``; ``#include`` is resolved in qkernels' CUDA folder."""

    def __init__(self, code: str, options: tuple[str, ...] = (), **kwargs):
        defines = [o for o in options if o.startswith("-D")]
        names = emulation.kernels_of(code)
        self._library = _compiled(code, tuple(names), tuple(defines))

    def get_function(self, name: str) -> RawKernel:
        if not hasattr(self._library, f"qk_launch_{name}"):
            raise AttributeError(f"CUDA_ERROR_NOT_FOUND: no kernel named {name}")
        return RawKernel(self._library, name)


@functools.cache
def _compiled(code: str, names: tuple[str, ...], defines: tuple[str, ...]):
    for path in sorted(Path(emulation.CUDA).glob("*.cu")):  # the project's own sources share
        if path.read_text() == code:                        # the emulated tests' build
            return emulation.library(path.stem)
    return emulation.custom_library(code, list(names))


# ------------------------------------------------------------------ the module


def _runtime() -> types.ModuleType:
    runtime = types.ModuleType("cupy.cuda.runtime")
    runtime.getDeviceCount = lambda: 1
    runtime.getDeviceProperties = lambda i: {"name": b"cupy stand-in (CUDA emulation on the CPU)",
                                             "major": 9, "minor": 0}
    runtime.runtimeGetVersion = lambda: 13000
    runtime.driverGetVersion = lambda: 13000
    runtime.getDevice = _current_device
    return runtime


def _build() -> types.ModuleType:
    cupy = types.ModuleType("cupy", __doc__)
    cupy.__file__ = __file__
    cupy.__version__ = "0+standin"
    cuda = types.ModuleType("cupy.cuda")
    cuda.Device = Device
    cuda.Stream = Stream
    cuda.ExternalStream = ExternalStream
    cuda.get_current_stream = get_current_stream
    cuda.runtime = _runtime()
    cuda.nvrtc = types.ModuleType("cupy.cuda.nvrtc")
    cuda.nvrtc.getVersion = lambda: (13, 0)
    cuda.is_available = lambda: True
    cupy.cuda = cuda
    for name in _FUNCTIONS:
        if name == "linalg":
            continue
        if hasattr(np, name):
            setattr(cupy, name, _creation(getattr(np, name)))
    linalg = types.ModuleType("cupy.linalg")
    linalg.norm = _creation(np.linalg.norm)
    cupy.linalg = linalg
    for name in _TYPES:
        setattr(cupy, name, getattr(np, name))
    cupy.ndarray = ndarray
    cupy.asarray = asarray
    cupy.array = array
    cupy.ascontiguousarray = ascontiguousarray
    cupy.asnumpy = asnumpy
    cupy.from_dlpack = from_dlpack
    cupy.fromDlpack = fromDlpack
    cupy.get_array_module = get_array_module
    cupy.RawModule = RawModule
    cupy.RawKernel = RawKernel

    def missing(name: str):
        raise AttributeError(f"the cupy stand-in does not model cupy.{name} (tests/"
                             "cupy_standin.py lists what qkernels calls)")

    cupy.__getattr__ = missing
    return cupy


module = _build()


@contextlib.contextmanager
def installed():
    """The stand-in as ``cupy`` (and ``cupy.cuda``) in ``sys.modules``; the previous modules,
    and qkernels' caches of the device and of compiled modules, restored on exit."""
    from qkernels import _gpu

    saved = {name: sys.modules.get(name) for name in ("cupy", "cupy.cuda")}
    sys.modules["cupy"] = module
    sys.modules["cupy.cuda"] = module.cuda
    _gpu.available.cache_clear()
    _gpu._module.cache_clear()
    ledger.clear()
    try:
        yield ledger
    finally:
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value
        _gpu.available.cache_clear()
        _gpu._module.cache_clear()

