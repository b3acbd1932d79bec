"""Semantic-similarity hashing (Arponen & Bishop, 2020): classification cross-entropy, a
relative-distance loss against the label hierarchy, and the empirical KL to uniform binary
codes; scored by mAHP@k (hierarchical precision) and mAP@k of Hamming ranking."""

from __future__ import annotations

import torch
from torch import nn

import qkernels as qk
from qkernels.losses import BinaryKLLoss, RelativeDistanceLoss

from .common import Run, Stage
from .evaluation import hamming_keys, hamming_ranking, map_k, ranking_pr
from .models import EmbeddingNet
from .report import Table

__all__ = ["kl_schedule", "run"]


class _HashAndClasses(nn.Module):
    """The hash outputs (tanh of the embedding) and the class logits, from one backbone pass."""

    def __init__(self, net: EmbeddingNet):
        super().__init__()
        self.net = net

    def forward(self, x):
        features = self.net.features(x)
        return torch.tanh(self.net.embedding(features)), self.net.heads["classes"](features)


def kl_schedule(weight: float, ramp_epochs: int, steps_per_epoch: int):
    """``(epoch, step) -> `` the KL weight: ``weight`` throughout when ``ramp_epochs`` is 0,
    else rising linearly from ``weight / (ramp_epochs * steps_per_epoch)`` at the first step to
    ``weight`` at the last step of epoch ``ramp_epochs``, then constant: the codes first learn
    the classes, then spread over the hypercube."""
    if not ramp_epochs:
        return lambda epoch, step: weight
    total = ramp_epochs * steps_per_epoch
    return lambda epoch, step: weight * min(1.0, (epoch * steps_per_epoch + step + 1) / total)


def run(args, run: Run) -> dict:
    data = run.data
    net = EmbeddingNet(data.x_train.shape[1:], args.bits).to(run.device)
    net.heads["classes"] = nn.Linear(net.feature_dim, data.num_classes).to(run.device)
    module = run.wrap(_HashAndClasses(net))
    distance = torch.as_tensor(data.class_distance())
    batches = run.batches()
    relative = RelativeDistanceLoss()
    kl = BinaryKLLoss(num_target_samples=256)

    kl_weight = kl_schedule(args.kl_weight, args.kl_ramp, batches.batches_per_epoch)

    def step(indices, epoch, step):
        x = run.tensor(data.x_train[indices])
        labels = run.tensor(data.y_train[indices])
        h, logits = module(x)
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + epoch * 10_007 + step)
        return (nn.functional.cross_entropy(logits, labels)
                + args.sim_weight * relative(h, labels, class_distance=distance)
                + kl_weight(epoch, step) * kl(h, generator=generator))

    optimizer = torch.optim.Adam(module.parameters(), lr=args.lr)
    run.train(net, [Stage("klhash", args.epochs, optimizer, step, batches)])
    if not run.is_main:
        return {}

    net.eval()
    hash_out = lambda x: torch.tanh(net(x))  # noqa: E731
    db = run.infer(hash_out, data.x_train, desc="db codes")
    queries = run.infer(hash_out, data.x_test, desc="query codes")
    k = map_k(args, len(db))
    similarity = data.class_similarity()
    db_codes, q_codes = qk.pack_bits(db), qk.pack_bits(queries)
    I = hamming_ranking(db_codes, q_codes, db, queries, k)
    pr = {"klhash": ranking_pr(hamming_keys(db_codes, q_codes, args.bits, db, queries),
                               data.y_test, data.y_train, args.seed)}
    mahp = qk.metrics.mahp_at_k(I, data.y_train, data.y_test, similarity, k)
    mean_ap = qk.metrics.map_at_k(I, data.y_train, data.y_test, k)
    balance = qk.metrics.bit_balance(db)  # of the database codes, what the KL term acts on
    hierarchy = "superclasses" if data.coarse_train is not None else "flat labels"
    table = Table(f"klhash on {data.name}: {args.bits}-bit codes, {hierarchy}, {len(db)} "
                  f"database items, {len(queries)} queries; Hamming ranking",
                  ["metric", "value"])
    table.add([f"mAHP@{k}", f"{mahp:.4f}"])
    table.add([f"mAP@{k}", f"{mean_ap:.4f}"])
    table.add(["bit imbalance, mean abs(2 p - 1)", f"{balance['imbalance']:.4f}"])
    table.add(["mean abs correlation of two bits", f"{balance['correlation']:.4f}"])
    table.add(["mean bit entropy (bits)", f"{balance['entropy']:.4f}"])
    return {"table": table, "mAHP": mahp, "mAP": mean_ap, "bit_balance": balance, "pr": pr,
            "history": run.history}
