"""python -m training with arguments, datasets and checkpoints no run can use: one `error:` line
and exit status 2, as argparse does, never a traceback and never a silent change of what was
asked."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--epochs", "1", "--hash-epochs", "1", "--batches-per-epoch", "1", "--max-k", "2",
         "--quiet", "--no-progress"]


def _refused(argv, capsys, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(("argv", "message"), [
    (["dht", "--classes-per-batch", "0"], "--classes-per-batch must be >= 2"),
    (["dht", "--items-per-class", "0"], "--items-per-class must be >= 1"),
    (["dht", "--items-per-class", "1"], "need two items of a class"),
    (["dht", "--k", "0"], "--k must be >= 1"),
    (["dht", "--k", "65"], "--k must be at most --buckets = 64"),
    (["dht", "--penalty", "-1"], "--penalty must be a finite number >= 0"),
    (["dht", "--penalty", "nan"], "--penalty must be a finite number >= 0"),
    (["dht", "--max-k", "65"], "--max-k must be at most --buckets = 64"),
    (["dht", "--epochs", "-1"], "--epochs must be >= 1"),
    (["dht", "--lr", "0"], "--lr must be a finite number > 0"),
    (["dht", "--margin", "-0.5"], "--margin must be a finite number >= 0"),
    (["dht", "--npairs-scale", "0"], "--npairs-scale must be a finite number > 0"),
    (["h2q", "--bits", "0"], "--bits must be >= 1"),
    (["dqn", "--bits", "7"], "--bits must be a multiple of --pq-nbits = 8 for dqn"),
    (["klhash", "--kl-weight", "inf"], "--kl-weight must be a finite number >= 0"),
    (["dqn", "--seed", "-3"], "--seed must be >= 0"),
])
def test_arguments_no_run_can_use(argv, message, capsys, tmp_path):
    _refused([*argv, "--out", str(tmp_path)], capsys, message)


def _npz(path, **changes):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.random((80, 6)), "y_train": np.arange(80) % 4,
              "x_test": rng.random((12, 6)), "y_test": np.arange(12) % 4}
    arrays.update(changes)
    np.savez(path, **arrays)
    return f"npz:{path}"


@pytest.mark.parametrize(("changes", "extra", "message"), [
    ({"x_test": np.zeros((0, 6)), "y_test": np.zeros(0, int)}, [], "x_test) is empty"),
    ({}, ["--buckets", "128"], "fewer than the --buckets = 128"),
    ({"x_train": np.zeros((80, 1, 1)), "x_test": np.zeros((12, 1, 1))}, [],
     "images are 1x1 pixels"),
])
def test_datasets_no_run_can_use(tmp_path, capsys, changes, extra, message):
    spec = _npz(tmp_path / "d.npz", **changes)
    code = main(["dht", "--dataset", spec, "--out", str(tmp_path / "run"), *QUICK, *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err, err


def test_huge_label_ids_are_renumbered_not_allocated(tmp_path):
    spec = _npz(tmp_path / "d.npz", y_train=(np.arange(80) % 4) * 10**9,
                y_test=(np.arange(12) % 4) * 10**9)
    assert main(["klhash", "--dataset", spec, "--out", str(tmp_path / "run"), *QUICK,
                 "--bits", "8"]) == 0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["dqn", "--dataset", "synthetic", "--out", str(out), *QUICK,
                 "--bits", "8"]) == 0
    return out / "checkpoint.pt"


def _resume_refused(checkpoint, tmp_path, capsys, damage, message):
    out = tmp_path / "resumed"
    out.mkdir()
    target = out / "checkpoint.pt"
    damage(checkpoint, target)
    code = main(["dqn", "--dataset", "synthetic", "--out", str(out), *QUICK, "--bits", "8",
                 "--resume"])
    assert code == 2
    err = capsys.readouterr().err
    assert "error: --resume" in err and message in err, err


def _with_state(change):
    def damage(source, target):
        state = torch.load(source, weights_only=True)
        change(state)
        torch.save(state, target)
    return damage


def _flip_a_weight(state):
    tensor = next(t for t in state["model"].values() if t.is_floating_point())
    tensor.view(-1)[0] = torch.nextafter(tensor.view(-1)[0], torch.tensor(1e9))


def _flip_an_optimizer_moment(state):
    """A bit of Adam's second moment (the weights untouched)."""
    moments = [entry["exp_avg_sq"] for optimizer in state["optimizers"].values()
               for entry in optimizer["state"].values() if "exp_avg_sq" in entry]
    assert moments, "the run's optimizers keep no Adam moments"
    moments[0].view(-1)[0] = torch.nextafter(moments[0].view(-1)[0], torch.tensor(1e9))


def _change_a_step_count(state):
    counter = next(entry["step"] for optimizer in state["optimizers"].values()
                   for entry in optimizer["state"].values() if "step" in entry)
    counter += 1  # in place: a float tensor in torch's Adam


def _change_the_progress(state):
    name = next(iter(state["completed"]))
    state["completed"][name] -= 1


def _nan_with_checksum(state):
    from training.common import checkpoint_checksum

    name = next(n for n, t in state["model"].items() if t.is_floating_point())
    state["model"][name].view(-1)[0] = float("nan")
    state["checksum"] = checkpoint_checksum(state)


def _wrong_shape_with_checksum(state):
    from training.common import checkpoint_checksum

    name = next(n for n, t in state["model"].items() if t.dim() == 2)
    state["model"][name] = torch.zeros(3, 3)
    state["checksum"] = checkpoint_checksum(state)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda s, t: t.write_bytes(s.read_bytes()[: len(s.read_bytes()) // 2]),
     "not a readable checkpoint"),
    (lambda s, t: t.write_bytes(b""), "not a readable checkpoint"),
    (lambda s, t: t.mkdir(), "is not a file"),
    (_with_state(lambda state: state.pop("completed")), "lacks parts of a checkpoint"),
    (_with_state(lambda state: state.pop("checksum")), "lacks parts of a checkpoint"),
    (_with_state(_flip_a_weight), "is damaged"),
    (_with_state(_flip_an_optimizer_moment), "is damaged"),
    (_with_state(_change_a_step_count), "is damaged"),
    (_with_state(_change_the_progress), "is damaged"),
    (_with_state(_nan_with_checksum), "are not finite"),
    (_with_state(_wrong_shape_with_checksum), "for another model"),
], ids=["truncated", "empty", "directory", "missing-key", "no-checksum", "bit-flip", "adam-moment",
        "adam-step", "progress", "nan",
        "wrong-shape"])
def test_damaged_checkpoints_are_refused(checkpoint, tmp_path, capsys, damage, message):
    _resume_refused(checkpoint, tmp_path, capsys, damage, message)


def test_the_command_line_prints_one_error_line():
    done = subprocess.run([sys.executable, "-m", "training", "dht", "--k", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith("error: --k must be >= 1, got 0")
    assert "Traceback" not in done.stderr
