"""What every method shares: the run (device, seeds, output folder, torch.distributed), the
class-balanced batches, resumable training stages with checkpoints, and batched inference."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import Dataset, load_dataset

__all__ = ["CheckpointError", "ClassBatches", "Run", "Stage", "checkpoint_checksum"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: missing parts, damaged, or for another model."""


def checkpoint_checksum(state: Any) -> str:
    """SHA-256 over a whole checkpoint (model weights, optimizer states, progress, history;
    the ``"checksum"`` entry itself left out): every tensor's name, dtype, shape and bytes and
    every other value with its type, in order, so that a bit flipped anywhere (an Adam moment,
    a step counter, an epoch count) changes it."""
    import hashlib

    digest = hashlib.sha256()

    def visit(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous().reshape(-1)  # 0-d counters too
            digest.update(f"T|{t.dtype}|{tuple(value.shape)}|".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, dict):
            items = [(key, item) for key, item in value.items()
                     if not (value is state and key == "checksum")]
            digest.update(f"D{len(items)}|".encode())
            for key, item in items:
                visit(key)
                visit(item)
        elif isinstance(value, (list, tuple)):
            digest.update(f"{type(value).__name__[0]}{len(value)}|".encode())
            for item in value:
                visit(item)
        else:  # int, float, bool, str, None: repr keeps the type and every digit
            digest.update(f"{type(value).__name__}|{value!r}|".encode())

    visit(state)
    return digest.hexdigest()


class ClassBatches:
    """Batches of ``classes_per_batch`` classes x ``items_per_class`` items, drawn without
    replacement within an epoch (the DHT batches: the code assignment needs several classes,
    the metric losses several items per class). The order depends on (seed, epoch) only, so
    every rank of a distributed run sees the same global batches; each takes its own share.
    """

    def __init__(self, labels: np.ndarray, classes_per_batch: int, items_per_class: int,
                 seed: int, max_batches: int | None = None):
        self.labels = labels
        self.classes = np.unique(labels)
        self.classes_per_batch = min(classes_per_batch, len(self.classes))
        self.items_per_class = items_per_class
        self.seed = seed
        self.batch_size = self.classes_per_batch * items_per_class
        self.batches_per_epoch = max(1, len(labels) // self.batch_size)
        if max_batches is not None:
            self.batches_per_epoch = min(self.batches_per_epoch, max(1, max_batches))

    def epoch(self, epoch: int, rank: int = 0, world_size: int = 1) -> Iterator[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        pools = {c: list(rng.permutation(np.flatnonzero(self.labels == c)))
                 for c in self.classes}
        for _ in range(self.batches_per_epoch):
            chosen = rng.choice(self.classes, self.classes_per_batch, replace=False)
            batch = []
            for c in chosen:
                if len(pools[c]) < self.items_per_class:  # refill a class that ran out
                    pools[c] += list(rng.permutation(np.flatnonzero(self.labels == c)))
                batch += [pools[c].pop() for _ in range(self.items_per_class)]
            batch = np.array(batch)
            yield batch[rank::world_size]


class Stage:
    """One training stage: ``epochs`` passes of ``step(batch_indices, epoch, step) -> loss``
    over ``optimizer``'s parameters (resumable; see :meth:`Run.train`)."""

    def __init__(self, name: str, epochs: int, optimizer: torch.optim.Optimizer,
                 step: Callable[[np.ndarray, int, int], torch.Tensor],
                 batches: ClassBatches,
                 on_epoch_end: Callable[[int], None] | None = None,
                 on_start: Callable[[], None] | None = None):
        self.name = name
        self.epochs = epochs
        self.optimizer = optimizer
        self.step = step
        self.batches = batches
        self.on_epoch_end = on_epoch_end  # also called for epochs done before a resume
        self.on_start = on_start  # before the first epoch (not on a resume past it)


class Run:
    """A training run: arguments, device, dataset, output folder, distributed set-up, logging
    (rank 0 only), and the checkpoint that makes it resumable."""

    def __init__(self, args: Any):
        self.args = args
        self.rank, self.world_size = 0, 1
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            backend = "nccl" if args.device == "cuda" else "gloo"
            torch.distributed.init_process_group(backend)
            self.rank = torch.distributed.get_rank()
            self.world_size = torch.distributed.get_world_size()
        if args.device == "cuda":
            if not torch.cuda.is_available():
                raise SystemExit("--device cuda: no CUDA device is available")
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        else:
            self.device = torch.device("cpu")
        torch.manual_seed(args.seed)
        self.data: Dataset = load_dataset(args.dataset, args.seed)
        if getattr(args, "validation", None):
            self.data = self.data.validation_split(args.validation, args.seed)
        self.out = Path(args.out)
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "args.json").write_text(json.dumps(vars(args), indent=2, default=str))
        self.history: list[dict[str, Any]] = []
        self.model: nn.Module | None = None  # the trained network, once train() ran
        self.completed: dict[str, int] = {}  # stage -> epochs done
        self._checkpoint = self.out / "checkpoint.pt"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharding(self) -> bool:
        """``--shard-index`` in a distributed run: every rank evaluates, each indexing its
        share of the database, and searches go through qkernels.distributed.ShardedIndex."""
        return bool(getattr(self.args, "shard_index", False)) and self.world_size > 1

    @property
    def evaluates(self) -> bool:
        """Whether this rank takes part in the evaluation (rank 0 alone unless sharding)."""
        return self.is_main or self.sharding

    def index(self, make: Callable[[slice], Any], size: int) -> Any:
        """The evaluation's index over a database of ``size`` items: ``make(rows)`` builds one
        over the given rows; sharded, over this rank's contiguous share, wrapped in a
        ShardedIndex whose search returns what the whole index returns."""
        if not self.sharding:
            return make(slice(None))
        from qkernels.distributed import ShardedIndex

        share = slice(size * self.rank // self.world_size,
                      size * (self.rank + 1) // self.world_size)
        return ShardedIndex(make(share))

    def log(self, message: str) -> None:
        if self.is_main and not self.args.quiet:
            print(message, flush=True)

    def tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    # ------------------------------------------------------------------ checkpoints

    def resume(self, model: nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        """Load the checkpoint of an interrupted run (``--resume``) into ``model``. A checkpoint
        that is damaged (its checksum disagrees), truncated, incomplete, not finite or
        for another model raises CheckpointError, and nothing is loaded."""
        path = self._checkpoint
        if not self.args.resume or not path.exists():
            return
        if not path.is_file():
            raise CheckpointError(f"--resume: {path} is not a file")
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
            raise CheckpointError(f"--resume: {path} is not a readable checkpoint "
                                  f"({type(error).__name__}: {str(error)[:200]})") from None
        expected = {"model", "optimizers", "completed", "history", "checksum"}
        if not isinstance(state, dict) or not expected <= set(state):
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(f"--resume: {path} lacks parts of a checkpoint (needs "
                                  f"{sorted(expected)}, found {found})")
        weights = state["model"]
        if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor)
                                                    for t in weights.values()):
            raise CheckpointError(f"--resume: {path} holds no model state dict")
        if checkpoint_checksum(state) != state["checksum"]:
            raise CheckpointError(f"--resume: {path} is damaged: its contents (weights, "
                                  "optimizer states, progress) do not match the checksum "
                                  "stored with them")
        for name, tensor in weights.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(f"--resume: {path}: the weights {name!r} are not finite")
        completed = state["completed"]
        if not isinstance(completed, dict) or not all(
                isinstance(v, int) and v >= 0 for v in completed.values()):
            raise CheckpointError(f"--resume: {path}: 'completed' is not stage -> epochs")
        try:
            model.load_state_dict(weights)
            for name, optimizer in optimizers.items():
                if name in state["optimizers"]:
                    optimizer.load_state_dict(state["optimizers"][name])
        except (RuntimeError, ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"--resume: {path} is for another model or run "
                                  f"({str(error)[:300]})") from None
        self.completed = dict(completed)
        self.history = [dict(h) for h in state["history"]]
        self.log(f"resumed from {self._checkpoint}: "
                 + ", ".join(f"{k} {v} epochs" for k, v in self.completed.items()))

    def _save(self, model: nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        if not self.is_main:
            return
        weights = model.state_dict()
        state = {"model": weights,
                 "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                 "completed": self.completed, "history": self.history}
        state["checksum"] = checkpoint_checksum(state)
        temporary = self._checkpoint.with_suffix(".tmp")
        torch.save(state, temporary)
        temporary.replace(self._checkpoint)

    # ------------------------------------------------------------------ training

    def train(self, model: nn.Module, stages: list[Stage]) -> None:
        """Run the stages in order; each epoch ends with a checkpoint and a one-line summary.
        With ``--resume``, finished epochs are skipped."""
        self.model = model
        optimizers = {s.name: s.optimizer for s in stages}
        self.resume(model, optimizers)
        for stage in stages:
            done = self.completed.get(stage.name, 0)
            if not done and stage.on_start is not None:
                stage.on_start()
            if done and stage.on_epoch_end is not None:
                stage.on_epoch_end(done - 1)  # rebuild what the epoch end left (e.g. codebooks)
            for epoch in range(done, stage.epochs):
                model.train()
                start = time.perf_counter()
                losses = []
                batches = stage.batches.epoch(epoch, self.rank, self.world_size)
                bar = self._bar(batches, stage.batches.batches_per_epoch,
                                f"{stage.name} {epoch + 1}/{stage.epochs}")
                for step, indices in enumerate(bar):
                    loss = stage.step(indices, epoch, step)
                    stage.optimizer.zero_grad()
                    loss.backward()
                    stage.optimizer.step()
                    losses.append(float(loss.detach()))
                    if hasattr(bar, "set_postfix"):
                        bar.set_postfix(loss=f"{losses[-1]:.4f}")
                mean = float(np.mean(losses))
                if not math.isfinite(mean):
                    raise FloatingPointError(f"{stage.name}: the loss became {mean}")
                if stage.on_epoch_end is not None:
                    stage.on_epoch_end(epoch)
                self.history.append({"stage": stage.name, "epoch": epoch + 1, "loss": mean})
                self.completed[stage.name] = epoch + 1
                self._save(model, optimizers)
                self.log(f"{stage.name} epoch {epoch + 1}/{stage.epochs}  loss {mean:.4f}  "
                         f"({time.perf_counter() - start:.1f} s)")

    def _bar(self, iterable, total: int, desc: str):
        if not self.is_main or self.args.quiet or not self.args.progress:
            return iterable
        from tqdm.auto import tqdm

        # disable=None: no bar where the output is not a terminal (a file, a pipe, CI logs)
        return tqdm(iterable, total=total, desc=desc, leave=False, disable=None)

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def infer(self, fn: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray,
              batch_size: int = 512, desc: str = "") -> np.ndarray:
        """``fn`` over ``x`` in batches, in eval mode, as a float32 numpy array."""
        outputs = []
        for start in self._bar(range(0, len(x), batch_size),
                               math.ceil(len(x) / batch_size), desc or "inference"):
            outputs.append(fn(self.tensor(x[start : start + batch_size])).float().cpu())
        return torch.cat(outputs).numpy()

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` under DistributedDataParallel when the run is distributed."""
        if self.world_size == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def batches(self) -> ClassBatches:
        """The run's batches, from its arguments."""
        a = self.args
        return ClassBatches(self.data.y_train, a.classes_per_batch, a.items_per_class, a.seed,
                            a.batches_per_epoch)

    def finish(self) -> None:
        if self.args.save_replicas and self.model is not None:
            torch.save(self.model.state_dict(), self.out / f"replica-{self.rank}.pt")
        if self.world_size > 1:
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
