"""python -m training: every method end to end, the dataset loaders and resuming (the demo
and the torchrun tests have files of their own)."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.cli import main
from training.data import DatasetError, load_dataset

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--epochs", "1", "--hash-epochs", "1", "--batches-per-epoch", "2", "--h2q-epochs",
         "2", "--max-k", "2", "--quiet", "--no-progress"]


@pytest.mark.parametrize("dataset", ["digits", "synthetic"])
@pytest.mark.parametrize("method", ["dht", "cascade", "dqn", "h2q", "klhash"])
def test_every_method_runs_end_to_end(method, dataset, tmp_path, capsys):
    assert main([method, "--dataset", dataset, "--out", str(tmp_path), *QUICK]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["table"]["rows"]
    assert (tmp_path / "training.png").stat().st_size > 0
    assert (tmp_path / "checkpoint.pt").is_file()
    assert "|" in capsys.readouterr().out  # the table was printed
    if method == "dht":
        assert (tmp_path / "precision_vs_suf.png").is_file()
        assert [r["method"] for r in results["rows"]] == ["Th", "VQ", "DHT"]
        assert [m["k"] for m in results["matched"]] == [1, 2]  # a point per k of the curve
    if method in ("dqn", "h2q", "klhash"):
        assert (tmp_path / "pr_curve.png").stat().st_size > 0
        for curve in results["pr"].values():
            assert curve["recall"][-1] == pytest.approx(1.0)  # the whole database ranked
            assert all(0 <= p <= 1 for p in curve["precision"])
    if method == "klhash":
        assert 0 <= results["bit_balance"]["imbalance"] <= 1
    if method == "cascade":
        assert [r["method"].split(" (")[0] for r in results["rows"]] == ["cascade", "flat DHT"]
        # what the quality benchmark reads from it
        from training.benchmark import _cascade_rows
        values = _cascade_rows(results)
        ratio = results["rows"][0]["SUF@1"] / results["rows"][1]["SUF@1"]
        assert values["cascade SUF@1 / flat SUF@1"] == pytest.approx(ratio)
        assert {"cascade P@1", "flat DHT P@1", "cascade NMI"} <= set(values)


def test_dqn_quantizes_unit_vectors_unless_raw(tmp_path):
    """The default quantizes z / |z| (lambda 0.1); --dqn-raw the outputs (lambda 1e-4)."""
    for flag, weight, space in (([], 0.1, "unit vectors"), (["--dqn-raw"], 1e-4, "raw")):
        out = tmp_path / str(weight)
        assert main(["dqn", *flag, "--out", str(out), *QUICK]) == 0
        assert json.loads((out / "args.json").read_text())["pq_weight"] == weight
        assert space in json.loads((out / "results.json").read_text())["table"]["title"]


def test_kl_ramp_rises_linearly_then_holds(tmp_path):
    from training.klhash import kl_schedule

    constant = kl_schedule(0.5, 0, 10)
    assert constant(0, 0) == constant(7, 3) == 0.5
    ramp = kl_schedule(0.5, 2, 10)  # 20 steps to the full weight
    assert ramp(0, 0) == pytest.approx(0.5 / 20)
    assert ramp(0, 9) == pytest.approx(0.25)
    assert ramp(1, 9) == ramp(2, 0) == ramp(9, 9) == 0.5
    args = ["klhash", "--kl-ramp", "2", "--out", str(tmp_path), *QUICK]
    assert main(args) == 0


def test_quality_benchmark_summary(tmp_path, monkeypatch):
    """training.benchmark: one experiment, one seed, end to end on the synthetic data (one short
    epoch), and the summary's mean and sample deviation."""
    from training import benchmark

    name, data, options, read = next(e for e in benchmark.EXPERIMENTS if e[0] == "klhash-nokl")
    monkeypatch.setattr(benchmark, "EXPERIMENTS", [
        (name, data, [*options, "--epochs", "1", "--batches-per-epoch", "2"], read)])
    table = benchmark.summarise({"x": {"mAP": [0.5, 0.7]}})
    assert "| x | mAP | 0.6000 | 0.1414 | 2 |" in table
    assert benchmark.main(["--seeds", "0", "--only", "klhash-nokl", "--out", str(tmp_path)]) == 0
    assert "klhash-nokl" in (tmp_path / "quality.md").read_text()
    values = json.loads((tmp_path / "quality.json").read_text())["klhash-nokl"]
    assert set(values) == {"mAHP", "mAP", "bit imbalance", "bit correlation (mean abs)"}
    assert all(len(v) == 1 for v in values.values())
    # --summarise runs nothing: seed 1 was never run, so the rows stay over one seed
    assert benchmark.main(["--seeds", "0", "1", "--only", "klhash-nokl", "--summarise",
                           "--out", str(tmp_path)]) == 0
    assert not (tmp_path / "klhash-nokl-seed1").exists()
    assert "| klhash-nokl | mAP |" in (tmp_path / "quality.md").read_text()
    assert json.loads((tmp_path / "quality.json").read_text()) == {"klhash-nokl": values}


def test_selection_picks_by_the_claims_criterion_on_a_validation_split(tmp_path, monkeypatch):
    """training.selection: every combination of the grid runs with --validation, and the DHT
    criterion picks the largest SUF ratio to VQ among settings within 0.005 of VQ's P@4 (a
    faster setting outside the tolerance loses)."""
    from training import selection

    # (penalty, hash margin) -> (DHT SUF@4 at k = 1, 2; DHT P@4 at k = 1, 2); VQ: 10 / 5, 0.9
    made = {("0.3", "1"): (12, 6, 0.899, 0.897), ("0.3", "3"): (13, 6.5, 0.899, 0.89),
            ("1", "1"): (11, 5.5, 0.9, 0.9), ("1", "3"): (11.5, 5.4, 0.898, 0.899)}
    seen = []

    def fake_run(options, run_dir, read):
        seen.append(options)
        at = {o: options[options.index(o) + 1] for o in ("--penalty", "--hash-margin")}
        suf1, suf2, p1, p2 = made[at["--penalty"], at["--hash-margin"]]
        return {"k=1 DHT SUF@4": suf1, "k=2 DHT SUF@4": suf2, "k=1 DHT P@4": p1,
                "k=2 DHT P@4": p2, "k=1 VQ SUF@4": 10, "k=2 VQ SUF@4": 5, "k=1 VQ P@4": 0.9,
                "k=2 VQ P@4": 0.9}

    monkeypatch.setattr(selection, "run_experiment", fake_run)
    page = tmp_path / "selection.md"
    assert selection.main(["dht-glyphs-64", "--grid", "penalty=0.3,1", "hash-margin=1,3",
                           "--out", str(tmp_path), "--markdown", str(page)]) == 0
    assert len(seen) == 4
    assert all(o[o.index("--validation") + 1] == "0.1" and "--buckets" in o for o in seen)
    rows = {line.split("|")[1].strip(): line for line in page.read_text().splitlines()
            if line.startswith("| `")}
    assert "**chosen**" in rows["`--penalty 0.3 --hash-margin 1` **chosen**"]
    assert "| no |" in rows["`--penalty 0.3 --hash-margin 3`"]  # 1.3x but P@4 0.01 below
    assert "| 1.2000 |" in rows["`--penalty 0.3 --hash-margin 1` **chosen**"]
    assert "| 1.1145 |" in rows["`--penalty 1 --hash-margin 3`"]  # sqrt(1.15 x 1.08)
    # the cascade: its SUF@1 over the flat table's, within 1 point of the flat P@1
    cascade = {"cascade SUF@1 / flat SUF@1": 6.0, "cascade P@1": 0.80, "flat DHT P@1": 0.8126}
    assert selection.score("cascade-glyphs", cascade, 0.005) == (
        False, pytest.approx(-0.0126), "SUF@1 6.00x flat, P@1 -0.0126")
    cascade["cascade P@1"] = 0.8034
    assert selection.score("cascade-glyphs", cascade, 0.005)[:2] == (True, 6.0)
    # other experiments: the value named, and a clear error for one it does not report
    assert selection.score("klhash", {"mAHP": 0.9}, 0.005, "mAHP") == (True, 0.9, "mAHP 0.9000")
    with pytest.raises(KeyError, match="the experiment reports mAHP"):
        selection.score("klhash", {"mAHP": 0.9}, 0.005, "mAP")
    # the grid's values replace the experiment's own
    seen.clear()
    assert selection.main(["dht-glyphs-64", "--grid", "buckets=16,32", "penalty=1",
                           "hash-margin=1", "--out", str(tmp_path)]) == 0
    for options, buckets in zip(seen, ("16", "32"), strict=True):
        assert options.count("--buckets") == options.count("--penalty") == 1
        assert options[options.index("--buckets") + 1] == buckets


def test_npairs_variant_and_resume(tmp_path):
    args = ["dht", "--variant", "npairs", "--out", str(tmp_path), *QUICK]
    assert main(args) == 0
    first = json.loads((tmp_path / "results.json").read_text())["history"]
    # a hash stage per k of the curve (--max-k 2, --k 2)
    stages = [("metric", 1), ("hash k=1", 1), ("hash k=2", 1)]
    assert [(h["stage"], h["epoch"]) for h in first] == stages
    # one more epoch of each stage, continuing from the checkpoint
    more = [a if a != "1" else "2" for a in args]
    assert main([*more, "--resume"]) == 0
    second = json.loads((tmp_path / "results.json").read_text())["history"]
    assert [(h["stage"], h["epoch"]) for h in second] == [
        *stages, ("metric", 2), ("hash k=1", 2), ("hash k=2", 2)]
    assert second[:3] == first


def test_dqn_with_4_bit_codebooks(tmp_path, capsys):
    """--pq-nbits 4: twice the subspaces of 16 codewords each (M = bits / 4)."""
    assert main(["dqn", "--pq-nbits", "4", "--bits", "16", "--out", str(tmp_path), *QUICK]) == 0
    title = json.loads((tmp_path / "results.json").read_text())["table"]["title"]
    assert "4 x 4 bits (16-bit codes)" in title
    with pytest.raises(SystemExit):
        main(["dqn", "--pq-nbits", "4", "--bits", "18", *QUICK])
    assert "multiple of --pq-nbits = 4" in capsys.readouterr().err


def test_npairs_scale_and_output_norms(tmp_path, capsys):
    assert main(["dht", "--variant", "npairs", "--npairs-scale", "4", "--out", str(tmp_path),
                 *QUICK]) == 0
    norms = json.loads((tmp_path / "results.json").read_text())["square_norms"]
    assert list(norms) == ["metric", "hash k=1", "hash k=2"]
    assert all(np.isfinite(v) and v > 0 for v in norms.values())
    assert "mean squared output length on the queries: metric" in capsys.readouterr().out


def test_shard_index_needs_torchrun_and_an_index(capsys):
    with pytest.raises(SystemExit):
        main(["dht", "--shard-index", *QUICK])
    assert "needs a distributed run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["h2q", "--shard-index", *QUICK])
    assert "applies to dht, cascade and dqn" in capsys.readouterr().err


# ------------------------------------------------------------------ loaders


def _cifar_file(path: Path, n: int, seed: int, override=None):
    rng = np.random.default_rng(seed)
    part = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"fine_labels": list(rng.integers(0, 4, n)),
            b"coarse_labels": list(rng.integers(0, 2, n)),
            b"filenames": [b"x.png"] * n, b"batch_label": b"training batch"}
    part.update(override or {})
    path.write_bytes(pickle.dumps(part, protocol=2))


def test_cifar100_loader_on_a_miniature_folder(tmp_path):
    _cifar_file(tmp_path / "train", 40, 0)
    _cifar_file(tmp_path / "test", 12, 1)
    data = load_dataset(f"cifar100:{tmp_path}")
    assert data.x_train.shape == (40, 3, 32, 32) and data.x_train.dtype == np.float32
    assert data.x_test.shape == (12, 3, 32, 32) and data.coarse_train.shape == (40,)
    assert abs(float(data.x_train.mean())) < 1e-4  # standardised with the train statistics
    similarity = data.class_similarity()
    assert similarity.shape == (4, 4) and set(np.unique(similarity)) <= {0.0, 0.5, 1.0}


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: None, "not found: cifar100:PATH expects"),
        (lambda d: _cifar_file(d / "train", 5, 0, {b"data": np.zeros((5, 10), np.uint8)}),
         r"uint8 \(N, 3072\)"),
        (lambda d: (d / "train").write_bytes(pickle.dumps({b"data": _Evil()})),
         "refusing to unpickle"),
        (lambda d: (d / "train").write_bytes(b"\x80\x02}q\x00(X"), "not a CIFAR-100 python"),
        (lambda d: (d / "train").write_bytes(pickle.dumps({b"data": np.zeros((1, 3072),
                                                                           np.uint8)})),
         "lacks 'fine_labels'"),
    ],
)
def test_cifar100_loader_rejects_malformed_files(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(DatasetError, match=message):
        load_dataset(f"cifar100:{tmp_path}")


@pytest.mark.parametrize(("shape", "expected"), [
    ((30, 6, 5), (30, 1, 6, 5)), ((30, 6, 5, 3), (30, 3, 6, 5)), ((30, 7), (30, 7))])
def test_npz_loader_layouts(tmp_path, shape, expected):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=rng.random(shape), y_train=np.arange(30) % 3,
             x_test=rng.random((9, *shape[1:])), y_test=np.arange(9) % 3)
    data = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert data.x_train.shape == expected and data.num_classes == 3


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x_train": np.zeros((4, 2))}, "lacks y_train, x_test, y_test"),
        ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(3, int), "x_test": np.zeros((2, 2)),
          "y_test": np.zeros(2, int)}, "y_train must be"),
        ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(4), "x_test": np.zeros((2, 2)),
          "y_test": np.zeros(2, int)}, "y_train must be"),
        ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(4, int), "x_test": np.zeros((2, 3)),
          "y_test": np.zeros(2, int)}, "x_test items"),
        ({"x_train": np.full((4, 2), np.nan), "y_train": np.zeros(4, int),
          "x_test": np.zeros((2, 2)), "y_test": np.zeros(2, int)}, "NaN"),
    ],
)
def test_npz_loader_rejects_malformed_files(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetError, match=message):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")


def test_unknown_and_missing_datasets(tmp_path, capsys):
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("mnist")
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(f"npz:{tmp_path / 'none.npz'}")
    with pytest.raises(DatasetError, match="synthetic:S,C,D,N"):
        load_dataset("synthetic:1,2")
    assert main(["dht", "--dataset", "npz:/nonexistent.npz", "--out", str(tmp_path)]) == 2
    assert "expects an .npz with x_train" in capsys.readouterr().err


def _write_idx(path, array, compress=True):
    import gzip
    import struct

    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _fashion_folder(folder, n_train=120, n_test=30):
    rng = np.random.default_rng(0)
    folder.mkdir(exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = (rng.integers(0, 40, (n, 28, 28)) + labels[:, None, None] * 20).astype(np.uint8)
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder


def test_fashion_mnist_loader_on_generated_idx_files(tmp_path):
    folder = _fashion_folder(tmp_path / "fm")
    data = load_dataset(f"fashion-mnist:{folder}")
    assert data.x_train.shape == (120, 1, 28, 28) and data.x_test.shape == (30, 1, 28, 28)
    assert data.num_classes == 10 and data.x_train.dtype == np.float32
    assert abs(float(data.x_train.mean())) < 1e-4  # standardised by the training split
    validation = data.validation_split(0.25, seed=3)
    assert len(validation.x_train) + len(validation.x_test) == 120
    assert np.bincount(validation.y_test).tolist() == [3] * 10  # stratified: 3 of each 12
    again = data.validation_split(0.25, seed=3)
    np.testing.assert_array_equal(again.x_test, validation.x_test)  # seeded
    assert main(["dht", "--dataset", f"fashion-mnist:{folder}", "--out", str(tmp_path / "run"),
                 *QUICK, "--buckets", "16"]) == 0


@pytest.mark.parametrize(("damage", "message"), [
    (lambda f: (f / "t10k-labels-idx1-ubyte.gz").unlink(), "lacks t10k-labels"),
    (lambda f: (f / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip"), "not a readable"),
    (lambda f: _write_idx(f / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8)),
     "train images .* and labels"),
    (lambda f: _write_idx(f / "t10k-images-idx3-ubyte.gz", np.zeros(4, np.uint8)[None]),
     "not \\(N, 28, 28\\)"),
])
def test_fashion_mnist_loader_refuses_damaged_folders(tmp_path, damage, message):
    folder = _fashion_folder(tmp_path / "fm")
    damage(folder)
    with pytest.raises(DatasetError, match=message):
        load_dataset(f"fashion-mnist:{folder}")


def test_fashion_mnist_absent_names_the_debian_package(tmp_path, monkeypatch):
    import training.data

    monkeypatch.setattr(training.data, "FASHION_MNIST", tmp_path / "none")
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


def test_idx_reader_checks_the_header(tmp_path):
    from training.data import read_idx

    path = tmp_path / "x.idx"
    _write_idx(path, np.arange(24, dtype=np.uint8).reshape(2, 3, 4), compress=False)
    np.testing.assert_array_equal(read_idx(path), np.arange(24).reshape(2, 3, 4))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DatasetError, match="promises 24 bytes"):
        read_idx(path)
    path.write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01abcd")  # float32 type
    with pytest.raises(DatasetError, match="unsigned bytes"):
        read_idx(path)


def test_validation_runs_never_see_the_test_split(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=rng.random((100, 6)), y_train=np.arange(100) % 4,
             x_test=rng.random((13, 6)), y_test=np.arange(13) % 4)
    out = tmp_path / "run"
    assert main(["dht", "--dataset", f"npz:{tmp_path / 'd.npz'}", "--validation", "0.2",
                 "--buckets", "8", "--out", str(out), *QUICK]) == 0
    title = json.loads((out / "results.json").read_text())["table"]["title"]
    # 20 validation queries (5 of each class's 25), 80 database items; not the 13 test items
    assert "npz (validation)" in title and "80 database items, 20 queries" in title


def test_progress_bars_stay_out_of_a_pipe(tmp_path):
    """With progress on (no --quiet, no --no-progress) and the output going to a pipe, no tqdm
    bar is drawn: the epoch summaries only."""
    options = [o for o in QUICK if o not in ("--quiet", "--no-progress")]
    done = subprocess.run([sys.executable, "-m", "training", "h2q", "--out", str(tmp_path),
                           *options], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "epoch 1/1" in done.stdout + done.stderr  # the summaries are there
    assert "\r" not in done.stderr and "it/s" not in done.stderr and "epoch/s" not in (
        done.stderr)
