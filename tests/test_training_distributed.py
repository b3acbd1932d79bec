"""python -m training under torchrun: DDP replicas and the sharded evaluation. Its own file so
that pytest-xdist can run these beside the rest of the training tests."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_training import QUICK, ROOT


def _torchrun(method: str, out: Path, *options: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "-m", "training", method, "--out", str(out), *options,
               *QUICK]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_process_ddp_ends_with_identical_replicas(tmp_path):
    _torchrun("dht", tmp_path, "--save-replicas")
    a = torch.load(tmp_path / "replica-0.pt", weights_only=True)
    b = torch.load(tmp_path / "replica-1.pt", weights_only=True)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items()
                if k not in ("search_s", "exhaustive_s", "table")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


@pytest.mark.parametrize("method", ["cascade", "dqn"])
def test_a_sharded_evaluation_scores_what_one_index_scores(method, tmp_path):
    """Under torchrun, --shard-index (each rank indexes half the database) gives the metrics of
    the same run with one index on rank 0: the same trained model, the same search results.
    The cascade builds and searches both tables (flat and compound) through the same
    ``Run.index`` and ``table_metrics`` calls as dht, which is therefore not run again here (two
    torchruns, about 25 s)."""
    _torchrun(method, tmp_path / "one")
    _torchrun(method, tmp_path / "sharded", "--shard-index")
    one, sharded = (json.loads((tmp_path / d / "results.json").read_text())
                    for d in ("one", "sharded"))
    assert _without_timings(sharded) == _without_timings(one)
    assert one.get("rows") or one["map"]  # something was compared
