"""Versioned, pickle-free .npz files for the indexes.

Every file holds ``__format__`` (the index class name), ``__version__`` (an int) and the index's
own arrays. Loading never unpickles (``allow_pickle=False``); a truncated, foreign or newer
file is refused with a ValueError that names the file and what was expected.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any

import numpy as np

__all__ = ["load_npz", "save_npz"]


def save_npz(path: str | os.PathLike, kind: str, version: int, **arrays: Any) -> None:
    """Write ``arrays`` to ``path`` (numpy's .npz; the suffix is added if missing)."""
    np.savez(path, __format__=np.array(kind), __version__=np.array(version), **arrays)


def load_npz(path: str | os.PathLike, kind: str, version: int,
             fields: dict[str, tuple[str, int]]) -> dict[str, np.ndarray]:
    """Read a file written by :func:`save_npz` for ``kind`` and check it.

    ``fields`` maps each required array to (dtype kind letters, ndim), e.g. ``("f", 2)``.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"{os.fspath(path)!r} is not a readable qkernels {kind} file ({error})"
        ) from None
    found = str(arrays.get("__format__", "")) if "__format__" in arrays else None
    if found != kind:
        raise ValueError(
            f"{os.fspath(path)!r} is not a qkernels {kind} file"
            + (f" (it holds a {found})" if found else "")
        )
    file_version = int(arrays["__version__"]) if "__version__" in arrays else -1
    if file_version != version:
        raise ValueError(
            f"{os.fspath(path)!r} is a {kind} file of format version {file_version}; "
            f"this qkernels reads version {version}"
        )
    for name, (kinds, ndim) in fields.items():
        if name not in arrays:
            raise ValueError(f"{os.fspath(path)!r} lacks the array {name!r} of a {kind} file")
        value = arrays[name]
        if value.dtype.kind not in kinds or value.ndim != ndim:
            raise ValueError(
                f"{os.fspath(path)!r}: {name!r} has dtype {value.dtype} and {value.ndim} "
                f"dimensions; a {kind} file holds {ndim}-d arrays of kind {kinds!r}"
            )
    return arrays
