"""Crafted, damaged and foreign files given to every index's load: a clear ValueError, never a
crash, a silent wrong answer, a huge allocation or an unpickle."""

import io
import zipfile

import numpy as np
import pytest

import qkernels as qk


def _table(tmp_path):
    rng = np.random.default_rng(0)
    table = qk.SparseHashTable(16, 2).add(rng.standard_normal((50, 16)),
                                          rng.standard_normal((50, 4)))
    path = tmp_path / "table.npz"
    table.save(path)
    return path


def _arrays(path):
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def _rewrite(path, target, **changes):
    arrays = _arrays(path)
    arrays.update(changes)
    np.savez(target, **arrays)
    return target


def _load_refused(path, message, cls=qk.SparseHashTable):
    with pytest.raises(ValueError, match=message):
        cls.load(path)


def test_a_saved_table_loads_back(tmp_path):
    path = _table(tmp_path)
    assert qk.SparseHashTable.load(path).ntotal == 50


def test_code_rows_that_repeat_a_bucket_are_refused(tmp_path):
    path = _table(tmp_path)
    codes = _arrays(path)["codes"].copy()
    codes[7, 1] = codes[7, 0]
    _load_refused(_rewrite(path, tmp_path / "repeat.npz", codes=codes),
                  "corrupted SparseHashTable file.*distinct buckets.*row 7")


@pytest.mark.parametrize("value, message", [
    (np.nan, "must be finite, found nan"),
    (np.inf, "must be finite, found inf"),
    (1e300, "1e\\+300 .*beyond the float32 range"),
    (3e38, "overflow float32"),
])
def test_embeddings_that_are_not_finite_or_overflow_are_refused(tmp_path, value, message):
    path = _table(tmp_path)
    emb = _arrays(path)["embeddings"].astype(np.float64)
    emb[3, 2] = value
    _load_refused(_rewrite(path, tmp_path / "bad.npz", embeddings=emb), message)


def test_absurd_num_buckets_is_refused(tmp_path):
    path = _table(tmp_path)
    _load_refused(_rewrite(path, tmp_path / "huge.npz", num_buckets=np.array(2**40)),
                  r"num_buckets must be in 1\.\.16777216")


@pytest.mark.parametrize("version", [np.array("1"), np.array(1.5), np.array([1, 1])])
def test_a_version_that_is_not_an_integer_is_refused(tmp_path, version):
    path = _table(tmp_path)
    _load_refused(_rewrite(path, tmp_path / "version.npz", __version__=version),
                  "no integer format version")


def test_a_newer_version_is_refused(tmp_path):
    path = _table(tmp_path)
    _load_refused(_rewrite(path, tmp_path / "v2.npz", __version__=np.array(2)),
                  "format version 2; this qkernels reads version 1")


def test_npy_empty_truncated_and_directory_are_refused(tmp_path):
    npy = tmp_path / "array.npy"
    np.save(npy, np.zeros(3))
    _load_refused(npy, "not a readable qkernels SparseHashTable file")
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    _load_refused(empty, "not a readable")
    data = _table(tmp_path).read_bytes()
    for cut in (10, len(data) // 2, len(data) - 5):
        truncated = tmp_path / f"cut{cut}.npz"
        truncated.write_bytes(data[:cut])
        _load_refused(truncated, "not a readable")
    _load_refused(tmp_path, "is a directory")


def test_damaged_zip_directory_and_flipped_bytes_are_refused(tmp_path):
    data = bytearray(_table(tmp_path).read_bytes())
    directory = data.rfind(b"PK\x01\x02")  # the last central-directory entry
    damaged = data.copy()
    damaged[directory + 10 : directory + 12] = b"\x63\x00"  # compression method 99 (AES)
    path = tmp_path / "damaged.npz"
    path.write_bytes(bytes(damaged))
    _load_refused(path, "not a readable")
    # a bit flip inside an array's data: the zip's CRC catches it
    first = data.find(b"PK\x03\x04")
    flipped = data.copy()
    flipped[first + 200] ^= 0x10
    path.write_bytes(bytes(flipped))
    _load_refused(path, "not a readable")


def _zip_with(members, compression=zipfile.ZIP_STORED):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    return buffer.getvalue()


def _npy_bytes(array):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def test_a_member_that_unpacks_far_beyond_the_file_is_refused_before_unpacking(tmp_path):
    # 64 MiB of zeros deflates to about 64 KiB: far beyond what an index's data compresses to
    bomb = _npy_bytes(np.zeros(8 << 20))
    path = tmp_path / "bomb.npz"
    path.write_bytes(_zip_with({"__format__.npy": _npy_bytes(np.array("SparseHashTable")),
                                "__version__.npy": _npy_bytes(np.array(1)),
                                "embeddings.npy": bomb}, zipfile.ZIP_DEFLATED))
    assert path.stat().st_size < 1 << 20
    _load_refused(path, "claim")


def test_a_member_whose_size_disagrees_with_its_header_is_refused(tmp_path):
    payload = _npy_bytes(np.zeros(4)) + b"\x00" * 64  # header says 4 floats, 64 bytes more
    path = tmp_path / "liar.npz"
    path.write_bytes(_zip_with({"__format__.npy": _npy_bytes(np.array("SparseHashTable")),
                                "__version__.npy": _npy_bytes(np.array(1)),
                                "ids.npy": payload}))
    _load_refused(path, "implies")


def test_object_arrays_and_foreign_members_are_refused_without_unpickling(tmp_path):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    path = tmp_path / "pickle.npz"
    path.write_bytes(_zip_with({"__format__.npy": _npy_bytes(np.array("SparseHashTable")),
                                "__version__.npy": _npy_bytes(np.array(1)),
                                "ids.npy": buffer.getvalue()}))
    _load_refused(path, "Python objects")
    path.write_bytes(_zip_with({"readme.txt": b"hello"}))
    _load_refused(path, "not a .npy array")


def test_every_index_refuses_another_index_file(tmp_path):
    path = _table(tmp_path)
    for cls in (qk.PQIndex, qk.BinaryIndex, qk.HierarchicalHashTable, qk.ProductQuantizer):
        with pytest.raises(ValueError, match=f"not a qkernels {cls.__name__} file .*holds a "
                                             "SparseHashTable"):
            cls.load(path)


def _savers():
    """One of everything that saves: (loading class, the saved object)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    return [
        (qk.SparseHashTable, qk.SparseHashTable(8, 2).add(x, x)),
        (qk.HierarchicalHashTable, qk.HierarchicalHashTable(4, 2).add(x[:, :4], x[:, 4:], x)),
        (qk.PQIndex, qk.PQIndex(qk.ProductQuantizer(8, 2, 4).train(x)).add(x)),
        (qk.BinaryIndex, qk.BinaryIndex(8).add(qk.pack_bits(x), x)),
        (qk.ProductQuantizer, qk.ProductQuantizer(8, 2, 4).train(x)),
        (qk.HouseholderQuantizer, qk.HouseholderQuantizer(8).fit(x, epochs=1)),
    ]


def _same_arrays(a, b):
    for name in ("ids", "codes", "codebooks", "weights", "features"):
        if hasattr(a, name) and getattr(a, name) is not None:
            np.testing.assert_array_equal(np.asarray(getattr(a, name)),
                                          np.asarray(getattr(b, name)))


@pytest.mark.parametrize("which", range(6))
def test_save_and_load_through_file_objects(tmp_path, which):
    """What saves to a file object loads from one (opened for reading bytes) and from the
    path; a text-mode file or anything else is a TypeError that says what is accepted."""
    cls, saved = _savers()[which]
    buffer = io.BytesIO()
    saved.save(buffer)
    buffer.seek(0)
    _same_arrays(saved, cls.load(buffer))
    saved.save(tmp_path / "f.npz")
    with open(tmp_path / "f.npz", "rb") as f:
        _same_arrays(saved, cls.load(f))
    with (open(tmp_path / "f.npz", encoding="latin-1") as f,
          pytest.raises(TypeError, match=r"binary mode \('rb'\), not as TextIOWrapper")):
        cls.load(f)
    with pytest.raises(TypeError, match="a path or a file object opened for reading bytes, "
                                        "got int"):
        cls.load(3)
    with pytest.raises(ValueError, match="'the file object' is not a readable"):
        cls.load(io.BytesIO(b"not a zip"))


@pytest.mark.parametrize("which", range(6))
def test_a_save_that_fails_half_way_leaves_the_file_that_was_there(tmp_path, which,
                                                                  monkeypatch):
    cls, saved = _savers()[which]
    path = tmp_path / "f.npz"
    saved.save(path)
    before = path.read_bytes()
    calls = []
    write_array = np.lib.format.write_array

    def failing(*args, **kwargs):  # the second member fails, as a full disk would
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return write_array(*args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", failing)
    with pytest.raises(OSError, match="No space left"):
        saved.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npz"]  # nothing left behind
    monkeypatch.undo()
    saved.save(tmp_path / "g")  # the suffix is added, as numpy adds it
    _same_arrays(saved, cls.load(tmp_path / "g.npz"))
