"""Datasets of the training command line. Nothing is fetched from the network.

``digits``           the 8x8 digits bundled with scikit-learn (1,797 real images, 10 classes);
                     a stratified 70/30 split by the seed.
``cifar100:PATH``    the official python version of CIFAR-100 in a local folder (the files
                     ``train`` and ``test`` of ``cifar-100-python``); fine and coarse labels.
``npz:PATH``         an .npz with ``x_train, y_train, x_test, y_test`` (optionally
                     ``coarse_train, coarse_test``); images ``(N, H, W)`` or ``(N, H, W, C)``,
                     or feature vectors ``(N, D)``.
``fashion-mnist[:DIR]`` Fashion-MNIST (Zalando, MIT licence; 70,000 real 28x28 grey images of
                     10 classes), the four IDX gzip files in DIR (default
                     /usr/share/datasets/fashion-mnist, where Debian's package
                     ``dataset-fashion-mnist`` puts them); the standard 60,000 / 10,000 split.
``glyphs[:FONTS]``    characters rendered in many typefaces (training/glyphs.py): 142 classes
                     (Latin, digits, Greek and Cyrillic letters that do not look like one of
                     them), 28x28 grey, split by rendering; FONTS ``system`` (default: the
                     fonts under /usr/share/fonts, from Debian's font packages), ``matplotlib``
                     (the DejaVu, STIX and Computer Modern fonts matplotlib ships: no package)
                     or a folder. Rendered once, cached under ~/.cache/qkernels.
``synthetic``        hierarchical Gaussian classes (superclasses of classes), so that a label
                     hierarchy exists for mAHP; ``synthetic:S,C,D,N`` sets superclasses, classes
                     per superclass, dimension and items per class (default 5,4,32,100).

The database of every evaluation is the training split, the queries the test split. Model
selection never looks at the test split: :meth:`Dataset.validation_split` holds out a seeded,
stratified part of the training split as queries against the rest.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

__all__ = ["Dataset", "DatasetError", "load_dataset"]


class DatasetError(ValueError):
    """A dataset that is missing or malformed; the message names the expected layout."""


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray  # float32: (N, C, H, W) images or (N, D) vectors
    y_train: np.ndarray  # int64 class ids 0..num_classes-1
    x_test: np.ndarray
    y_test: np.ndarray
    coarse_train: np.ndarray | None = None  # superclass of each item, when a hierarchy exists
    coarse_test: np.ndarray | None = None

    @property
    def is_image(self) -> bool:
        return self.x_train.ndim == 4

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    def class_similarity(self) -> np.ndarray:
        """``s(a, b) = 1 - height(lca(a, b)) / height(root)`` (Deng et al.): 1 for the same
        class, 0.5 for the same superclass in a two-level hierarchy, else 0."""
        c = self.num_classes
        similarity = np.eye(c)
        if self.coarse_train is not None:
            parent = np.zeros(c, dtype=np.int64)
            parent[self.y_train] = self.coarse_train
            parent[self.y_test] = self.coarse_test
            same_parent = parent[:, None] == parent[None, :]
            similarity = np.where(same_parent & (similarity == 0), 0.5, similarity)
        return similarity

    def class_distance(self) -> np.ndarray:
        """``1 - class_similarity``: a target distance for RelativeDistanceLoss."""
        return 1.0 - self.class_similarity()

    def validation_split(self, fraction: float = 0.1, seed: int = 0) -> Dataset:
        """The data for model selection: ``fraction`` of each class of the training split
        (seeded) becomes the query split, the rest the training split and database. The test
        split is not in it at all."""
        parts = _split(self.x_train, self.y_train, self.coarse_train, fraction, seed)
        return replace(self, name=f"{self.name} (validation)", x_train=parts[0],
                       y_train=parts[1], x_test=parts[2], y_test=parts[3],
                       coarse_train=parts[4], coarse_test=parts[5])


def _split(x, y, coarse, test_fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        chosen = rng.choice(members, max(1, round(test_fraction * len(members))), replace=False)
        test[chosen] = True
    if coarse is None:
        return x[~test], y[~test], x[test], y[test], None, None
    return x[~test], y[~test], x[test], y[test], coarse[~test], coarse[test]


def _digits(seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    parts = _split(x, digits.target.astype(np.int64), None, 0.3, seed)
    return Dataset("digits", *parts)


def _synthetic(spec: str, seed: int) -> Dataset:
    try:
        values = [int(v) for v in spec.split(",")] if spec else [5, 4, 32, 100]
        superclasses, per_super, dim, per_class = values
    except ValueError:
        raise DatasetError(f"synthetic:{spec} is not synthetic:S,C,D,N (four integers: "
                           "superclasses, classes per superclass, dimension, items per class)"
                           ) from None
    if min(values) < 1 or superclasses * per_super < 2:
        raise DatasetError("synthetic needs positive sizes and at least two classes")
    rng = np.random.default_rng(seed)
    super_centres = rng.standard_normal((superclasses, dim)) * 2.0
    centres = (np.repeat(super_centres, per_super, axis=0)
               + rng.standard_normal((superclasses * per_super, dim)) * 1.0)
    y = np.repeat(np.arange(superclasses * per_super), per_class)
    x = (centres[y] + rng.standard_normal((len(y), dim)) * 0.8).astype(np.float32)
    coarse = y // per_super
    parts = _split(x, y.astype(np.int64), coarse.astype(np.int64), 0.3, seed)
    return Dataset("synthetic", *parts)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles CIFAR's dictionaries of numpy arrays, lists and bytes, and nothing else: no
    class outside numpy's array reconstruction is ever looked up, so no code runs."""

    _ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    })

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise DatasetError(f"refusing to unpickle {module}.{name}: a CIFAR-100 file holds "
                           "only arrays, lists and bytes")


def _cifar_part(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"{path} not found: cifar100:PATH expects the folder "
                           "'cifar-100-python' with the files 'train' and 'test' (the official "
                           "python version of CIFAR-100)")
    try:
        with open(path, "rb") as handle:
            part = _ArraysOnly(handle, encoding="bytes").load()
    except DatasetError:
        raise
    except Exception as error:  # truncated or not a pickle at all
        raise DatasetError(f"{path} is not a CIFAR-100 python file ({error})") from None
    if not isinstance(part, dict):
        raise DatasetError(f"{path} does not hold a dictionary as CIFAR-100 files do")
    part = {k.decode() if isinstance(k, bytes) else k: v for k, v in part.items()}
    for key in ("data", "fine_labels", "coarse_labels"):
        if key not in part:
            raise DatasetError(f"{path} lacks '{key}' (a CIFAR-100 file has data, fine_labels "
                               "and coarse_labels)")
    data = np.asarray(part["data"])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise DatasetError(f"{path}: 'data' must be uint8 (N, 3072), got {data.dtype} "
                           f"{data.shape}")
    fine = np.asarray(part["fine_labels"], dtype=np.int64)
    coarse = np.asarray(part["coarse_labels"], dtype=np.int64)
    if fine.shape != (len(data),) or coarse.shape != (len(data),):
        raise DatasetError(f"{path}: the labels do not match the {len(data)} images")
    return {"x": data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0, "y": fine,
            "coarse": coarse}


def _cifar100(folder: str) -> Dataset:
    root = Path(folder)
    train, test = _cifar_part(root / "train"), _cifar_part(root / "test")
    mean = train["x"].mean(axis=(0, 2, 3), keepdims=True)
    std = train["x"].std(axis=(0, 2, 3), keepdims=True) + 1e-6
    return Dataset("cifar100", (train["x"] - mean) / std, train["y"], (test["x"] - mean) / std,
                   test["y"], train["coarse"], test["coarse"])


def _npz(path: str) -> Dataset:
    layout = ("npz:PATH expects an .npz with x_train, y_train, x_test, y_test (and optionally "
              "coarse_train, coarse_test); x as images (N, H, W) / (N, H, W, C) or vectors "
              "(N, D), y as integer class ids")
    if not Path(path).is_file():
        raise DatasetError(f"{path} not found: {layout}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except Exception as error:
        raise DatasetError(f"{path} is not a readable .npz ({error}): {layout}") from None
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise DatasetError(f"{path} lacks {', '.join(missing)}: {layout}")

    def images_or_vectors(x, name):
        if x.dtype.kind not in "biuf" or x.ndim not in (2, 3, 4):
            raise DatasetError(f"{path}: {name} has dtype {x.dtype} and shape {x.shape}: {layout}")
        x = x.astype(np.float32)
        if x.ndim == 3:
            x = x[:, None]
        elif x.ndim == 4:
            x = np.transpose(x, (0, 3, 1, 2))  # (N, H, W, C) -> (N, C, H, W)
        if not np.isfinite(x).all():
            raise DatasetError(f"{path}: {name} holds NaN or Inf")
        if x.ndim == 4 and min(x.shape[2:]) < 2:
            raise DatasetError(f"{path}: {name} images are {x.shape[2]}x{x.shape[3]} pixels; "
                               "the networks need at least 2x2")
        if int(np.prod(x.shape[1:])) == 0:
            raise DatasetError(f"{path}: {name} items are empty (shape {x.shape})")
        return x

    def labels(y, name, n):
        if y.dtype.kind not in "iu" or y.shape != (n,) or (n and y.min() < 0):
            raise DatasetError(f"{path}: {name} must be (N,) integers >= 0 matching its x, "
                               f"got {y.dtype} {y.shape}")
        return y.astype(np.int64)

    x_train = images_or_vectors(arrays["x_train"], "x_train")
    x_test = images_or_vectors(arrays["x_test"], "x_test")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(f"{path}: x_train items are {x_train.shape[1:]} but x_test items are "
                           f"{x_test.shape[1:]}")
    y_train, y_test = _dense(labels(arrays["y_train"], "y_train", len(x_train)),
                             labels(arrays["y_test"], "y_test", len(x_test)))
    coarse = [None, None]
    if "coarse_train" in arrays or "coarse_test" in arrays:
        coarse = _dense(
            labels(arrays.get("coarse_train", np.zeros(0)), "coarse_train", len(x_train)),
            labels(arrays.get("coarse_test", np.zeros(0)), "coarse_test", len(x_test)))
    return Dataset("npz", x_train, y_train, x_test, y_test, *coarse)


def _dense(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class ids renumbered 0..C-1 in the order of the given ids, jointly over both splits:
    ids such as 10**9 name a class and are no size (the hierarchy tables are C x C)."""
    _, inverse = np.unique(np.concatenate([train, test]), return_inverse=True)
    inverse = inverse.astype(np.int64)
    return inverse[: len(train)], inverse[len(train):]


GLYPH_CACHE = Path.home() / ".cache" / "qkernels"  # the rendered glyph sets
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_IDX_FILES = {"x_train": "train-images-idx3-ubyte.gz", "y_train": "train-labels-idx1-ubyte.gz",
              "x_test": "t10k-images-idx3-ubyte.gz", "y_test": "t10k-labels-idx1-ubyte.gz"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format, gzip-compressed or not): a big-endian header of
    magic ``0 0 type ndim`` and ``ndim`` int32 sizes, then the data. Only unsigned bytes
    (type 0x08) are read, as every (Fashion-)MNIST file holds."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            magic = f.read(4)
            if (len(magic) != 4 or magic[:2] != b"\0\0" or magic[2] != 0x08
                    or not 1 <= magic[3] <= 4):
                raise DatasetError(f"{path} is not an IDX file of unsigned bytes (magic "
                                   f"{magic.hex() or 'missing'})")
            ndim = magic[3]
            sizes = struct.unpack(f">{ndim}i", f.read(4 * ndim))
            count = int(np.prod(sizes, dtype=np.int64))
            if min(sizes) < 0 or count > 1 << 31:
                raise DatasetError(f"{path}: implausible IDX sizes {sizes}")
            data = f.read(count + 1)
    except (OSError, EOFError, struct.error, zlib.error) as error:
        raise DatasetError(f"{path} is not a readable IDX file ({error})") from None
    if len(data) != count:
        raise DatasetError(f"{path}: the header promises {count} bytes of data, the file holds "
                           f"{len(data)}")
    return np.frombuffer(data, dtype=np.uint8).reshape(sizes)


def _fashion_mnist(folder: str) -> Dataset:
    root = Path(folder).expanduser() if folder else FASHION_MNIST
    missing = [name for name in _IDX_FILES.values() if not (root / name).is_file()]
    if missing:
        hint = ("install Debian's package dataset-fashion-mnist (apt-get install "
                "dataset-fashion-mnist), which puts them there, or give fashion-mnist:DIR"
                if not folder else "fashion-mnist:DIR expects the four IDX gzip files")
        raise DatasetError(f"Fashion-MNIST not found: {root} lacks {', '.join(missing)}; {hint}")
    arrays = {key: read_idx(root / name) for key, name in _IDX_FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y) or (len(y) and y.max() > 9):
            raise DatasetError(f"{root}: the {split} images {x.shape} and labels {y.shape} are "
                               "not (N, 28, 28) images with N labels in 0..9")
    mean, std = float(arrays["x_train"].mean()), float(arrays["x_train"].std()) + 1e-6
    x_train, x_test = ((arrays[k].astype(np.float32)[:, None] - mean) / std
                       for k in ("x_train", "x_test"))
    return Dataset("fashion-mnist", x_train, arrays["y_train"].astype(np.int64), x_test,
                   arrays["y_test"].astype(np.int64))


def _glyphs(fonts: str) -> Dataset:
    from .glyphs import GlyphError, GlyphSpec, load_glyphs

    try:
        arrays = load_glyphs(GlyphSpec(fonts=fonts), GLYPH_CACHE)
    except GlyphError as error:
        raise DatasetError(str(error)) from None
    x, y, test = arrays["x"], arrays["y"], arrays["test"]
    train = ~test
    mean, std = float(x[train].mean()), float(x[train].std()) + 1e-6
    x = (x.astype(np.float32)[:, None] - mean) / std
    return Dataset(f"glyphs ({fonts} fonts)", x[train], y[train], x[test], y[test])


def load_dataset(spec: str, seed: int = 0) -> Dataset:
    """Load ``spec`` (see the module docstring); raises DatasetError with the expected layout."""
    kind, _, rest = spec.partition(":")
    if kind == "digits" and not rest:
        data = _digits(seed)
    elif kind == "synthetic":
        data = _synthetic(rest, seed)
    elif kind == "cifar100" and rest:
        data = _cifar100(rest)
    elif kind == "npz" and rest:
        data = _npz(rest)
    elif kind == "fashion-mnist":
        data = _fashion_mnist(rest)
    elif kind == "glyphs":
        data = _glyphs(rest or "system")
    else:
        raise DatasetError(f"unknown dataset {spec!r}: use digits, synthetic[:S,C,D,N], "
                           "fashion-mnist[:DIR], glyphs[:FONTS], cifar100:PATH or npz:PATH")
    if len(np.unique(data.y_train)) < 2:
        raise DatasetError(f"{spec}: the training split needs at least two classes")
    return data
