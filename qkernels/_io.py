"""Versioned, pickle-free .npz files for the indexes.

Every file holds ``__format__`` (the index class name), ``__version__`` (an int) and the index's
own arrays. Loading never unpickles and reads nothing it has not checked first: the zip
directory must be sound, every member a ``.npy`` array of plain (non-object) dtype whose
declared size is what its header implies, and the whole no larger than the file can honestly
hold (a member that claims to unpack to far more than the file's size is refused before a byte
of it is unpacked). A truncated, foreign, damaged or newer file is refused with a ValueError that
names the file and what was expected.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import uuid
import zipfile
import zlib
from typing import Any

import numpy as np

__all__ = ["load_npz", "save_npz", "source_name"]

# np.savez stores members uncompressed; np.savez_compressed deflates them. Real index data (float
# embeddings, small integer codes) deflates by a few times at most; a member that claims more
# than this ratio of its compressed size is a zip bomb, not an index.
_MAX_RATIO = 64
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error,
                struct.error, NotImplementedError, RuntimeError, UnicodeDecodeError)


def save_npz(path: str | os.PathLike | Any, kind: str, version: int, **arrays: Any) -> None:
    """Write ``arrays`` to ``path`` (numpy's .npz; the suffix is added if missing) or to a
    file object. A path is written whole or not at all: into a new file beside it, renamed
    over it once complete (a save that fails half way, a full disk say, leaves the file that
    was there, not a truncated one)."""
    members = dict(__format__=np.array(kind), __version__=np.array(version), **arrays)
    if hasattr(path, "write"):
        np.savez(path, **members)
        return
    target = os.fspath(path)
    if not target.endswith(".npz"):
        target += ".npz"
    folder, name = os.path.split(target)
    partial = os.path.join(folder, f".{name}.{os.getpid()}.{uuid.uuid4().hex}.partial")
    # created as open() creates files (the umask applies), not 0600 as mkstemp would
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            np.savez(file, **members)
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


def _member_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple:
    """(shape, dtype) from a member's .npy header, after checking what the zip declares."""
    if not info.filename.endswith(".npy"):
        raise ValueError(f"member {info.filename!r} is not a .npy array")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ValueError(f"member {info.filename!r} uses an unsupported compression")
    if info.file_size > _MAX_RATIO * max(info.compress_size, 1) + 4096:
        raise ValueError(f"member {info.filename!r} claims to unpack {info.compress_size} bytes "
                         f"into {info.file_size}")
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        readers = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            raise ValueError(f"member {info.filename!r} has .npy format {version}")
        read = readers[version]
        shape, _fortran, dtype = read(member, max_header_size=10_000)
        header_bytes = member.tell()
    if dtype.hasobject:
        raise ValueError(f"member {info.filename!r} holds Python objects (dtype {dtype}); "
                         "index files hold plain arrays only")
    implied = header_bytes + int(np.prod(shape, dtype=object)) * dtype.itemsize
    if implied != info.file_size:
        raise ValueError(f"member {info.filename!r} declares {info.file_size} bytes but its "
                         f"header ({shape}, {dtype}) implies {implied}")
    return shape, dtype


def _read(path: str | os.PathLike | bytes) -> dict[str, np.ndarray]:
    if isinstance(path, bytes):
        size, source = len(path), io.BytesIO(path)
    else:
        size, source = os.path.getsize(path), path
    with zipfile.ZipFile(source) as archive:
        infos = archive.infolist()
        declared = sum(info.file_size for info in infos)
        if declared > _MAX_RATIO * size + 65536:
            raise ValueError(f"its members claim {declared} bytes, far more than the file's "
                             f"{size}")
        for info in infos:
            _member_header(archive, info)
        arrays = {}
        for info in infos:
            with archive.open(info) as member:
                arrays[info.filename[:-4]] = np.lib.format.read_array(
                    member, allow_pickle=False, max_header_size=10_000)
        return arrays


def source_name(path: Any) -> str:
    """What messages call a file given to a ``load``: its path, a file object's name, or
    "the bytes"."""
    if isinstance(path, bytes):
        return "the bytes"
    if hasattr(path, "read"):
        return str(getattr(path, "name", "the file object"))
    return os.fspath(path)


def load_npz(path: str | os.PathLike | bytes | Any, kind: str, version: int,
             fields: dict[str, tuple[str, int]]) -> dict[str, np.ndarray]:
    """Read a file, a file object opened for reading bytes, or the bytes of a file, written
    by :func:`save_npz` for ``kind`` and check it.

    ``fields`` maps each required array to (dtype kind letters, ndim), e.g. ``("f", 2)``.
    """
    if hasattr(path, "read"):
        data = None if isinstance(path, io.TextIOBase) else path.read()
        if not isinstance(data, bytes):
            raise TypeError("load reads bytes: open the file in binary mode ('rb'), not as "
                            f"{type(path).__name__}")
        name, path = source_name(path), data
    elif isinstance(path, (bytes, str, os.PathLike)):
        name = source_name(path)
    else:
        raise TypeError(f"load takes a path or a file object opened for reading bytes, got "
                        f"{type(path).__name__}")
    if not isinstance(path, bytes) and os.path.isdir(name):
        raise ValueError(f"{name!r} is a directory, not a qkernels {kind} file")
    try:
        arrays = _read(path)
    except FileNotFoundError:
        raise
    except _READ_ERRORS as error:
        raise ValueError(f"{name!r} is not a readable qkernels {kind} file ({error})") from None
    fmt = arrays.get("__format__")
    found = str(fmt) if fmt is not None and fmt.dtype.kind == "U" and fmt.ndim == 0 else None
    if found != kind:
        raise ValueError(f"{name!r} is not a qkernels {kind} file"
                         + (f" (it holds a {found})" if found else ""))
    file_version = arrays.get("__version__")
    if file_version is None or file_version.ndim != 0 or file_version.dtype.kind not in "iu":
        raise ValueError(f"{name!r} has no integer format version; this qkernels reads "
                         f"{kind} files of version {version}")
    if int(file_version) != version:
        raise ValueError(f"{name!r} is a {kind} file of format version {int(file_version)}; "
                         f"this qkernels reads version {version}")
    for field, (kinds, ndim) in fields.items():
        if field not in arrays:
            raise ValueError(f"{name!r} lacks the array {field!r} of a {kind} file")
        value = arrays[field]
        if value.dtype.kind not in kinds or value.ndim != ndim:
            raise ValueError(
                f"{name!r}: {field!r} has dtype {value.dtype} and {value.ndim} "
                f"dimensions; a {kind} file holds {ndim}-d arrays of kind {kinds!r}"
            )
    return arrays
