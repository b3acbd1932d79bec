"""Deep Hash Table (Jeong & Song, ICML 2018): metric learning, then a hash head fine-tuned on
exact batch codes; evaluated as the paper does (Th, VQ and DHT tables), plus wall-clock time."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import qkernels as qk
from qkernels.losses import NPairsLoss, SemiHardTripletLoss, assign_batch_codes

from .common import Run, Stage
from .evaluation import timed
from .models import EmbeddingNet
from .report import Table

__all__ = ["run"]


class _Head(nn.Module):
    """Backbone followed by one head (or a list of heads, giving a tuple): what a stage trains
    and what DDP wraps. Only these are registered, so that DDP sees no parameter the stage
    leaves unused."""

    def __init__(self, net: EmbeddingNet, head: nn.Module):
        super().__init__()
        self.body = net.body
        self.head = head

    def forward(self, x):
        features = self.body(x)
        if isinstance(self.head, nn.ModuleList):
            return tuple(head(features) for head in self.head)
        return self.head(features)


def _pairs(indices: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a batch into anchors and positives, one pair per class (n-pairs)."""
    anchors, positives = [], []
    for c in np.unique(labels[indices]):
        members = indices[labels[indices] == c]
        if len(members) >= 2:
            anchors.append(members[0])
            positives.append(members[1])
    return np.array(anchors), np.array(positives)


def _loss_fn(args, run: Run, module: nn.Module, masked: bool, variant: str | None = None):
    """The step function of a stage: triplet or n-pairs on ``module``'s outputs, with the
    exact batch codes' masks when ``masked``; ``variant`` overrides ``args.variant``."""
    x_train, y_train = run.data.x_train, run.data.y_train
    triplet = SemiHardTripletLoss(args.margin)
    npairs = NPairsLoss(args.reg)

    def step(indices, epoch, step):
        if (variant or args.variant) == "triplet":
            x, labels = run.tensor(x_train[indices]), run.tensor(y_train[indices])
            out = module(x)
            masks = None
            if masked:
                masks = assign_batch_codes(out, labels, args.k, args.penalty).mask
            return triplet(out, labels, masks)
        anchors, positives = _pairs(indices, y_train)
        labels = run.tensor(y_train[anchors])
        a = module(run.tensor(x_train[anchors]))
        p = module(run.tensor(x_train[positives]))
        if not masked:
            return npairs(a, p, labels)
        both = torch.cat([a, p])
        codes = assign_batch_codes(both, torch.cat([labels, labels]), args.k, args.penalty,
                                   normalize=False)
        return npairs(a, p, labels, codes.mask[: len(a)], codes.mask[len(a):])

    return step


def embeddings_and_activations(run: Run, net: EmbeddingNet, heads: tuple[str, ...]):
    """The normalised metric embeddings of the database and query splits, and the outputs of
    each hash head on them: ``(db, queries), [(db, queries) per head]``."""
    net.eval()
    data = run.data

    def both(fn, what):
        return (run.infer(fn, data.x_train, desc=f"db {what}"),
                run.infer(fn, data.x_test, desc=f"query {what}"))

    embeddings = both(lambda x: nn.functional.normalize(net(x), dim=1), "embeddings")
    outputs = [both(lambda x, h=h: net.heads[h](net.features(x)), h) for h in heads]
    return embeddings, outputs


def _table_rows(name: str, db_act, db_emb, q_act, q_emb, data, k: int, buckets: int):
    """Build the table, search every query, and measure the paper's metrics."""
    table = qk.SparseHashTable(buckets, k).add(db_act, db_emb)
    (_, I), seconds = timed(lambda: table.search(q_act, q_emb, 16))
    db_codes = np.argsort(-db_act, axis=1, kind="stable")[:, :k]  # the table's own rule
    return {
        "method": name, "k": k,
        "SUF": qk.metrics.search_speedup(table.candidate_counts, len(db_emb)),
        "P@1": qk.metrics.precision_at_k(I, data.y_train, data.y_test, 1),
        "P@4": qk.metrics.precision_at_k(I, data.y_train, data.y_test, 4),
        "P@16": qk.metrics.precision_at_k(I, data.y_train, data.y_test, 16),
        "NMI": qk.metrics.nmi(db_codes, data.y_train),
        "search_s": seconds,
    }


def _exhaustive_seconds(db_emb: np.ndarray, q_emb: np.ndarray) -> float:
    db, queries = torch.from_numpy(db_emb), torch.from_numpy(q_emb)

    def scan():
        dist = (db * db).sum(1)[None, :] - 2 * queries @ db.T
        return torch.topk(dist, min(16, len(db_emb)), dim=1, largest=False)

    return timed(scan)[1]


def run(args, run: Run) -> dict:
    data = run.data
    net = EmbeddingNet(data.x_train.shape[1:], args.buckets).to(run.device)
    net.heads["hash"] = nn.Linear(net.feature_dim, args.buckets).to(run.device)
    embed = run.wrap(_Head(net, net.embedding))
    hashing = run.wrap(_Head(net, net.heads["hash"]))
    batches = run.batches()
    pretrain = torch.optim.Adam(list(net.body.parameters()) + list(net.embedding.parameters()),
                                lr=args.lr)
    finetune = torch.optim.Adam([
        {"params": net.heads["hash"].parameters(), "lr": args.lr},
        {"params": net.body.parameters(), "lr": args.lr * 0.1},  # body at 0.1x, as the paper
    ])
    run.train(net, [
        Stage("metric", args.epochs, pretrain, _loss_fn(args, run, embed, masked=False), batches),
        Stage("hash", args.hash_epochs, finetune, _loss_fn(args, run, hashing, masked=True),
              batches),
    ])
    if not run.is_main:
        return {}

    # The metric embedding is frozen after pretraining (the hash stage tunes the body for the
    # hash head); re-ranking uses the embedding of the network as it is at the end, normalised.
    (db_emb, q_emb), ((db_act, q_act),) = embeddings_and_activations(run, net, ("hash",))

    from sklearn.cluster import KMeans

    centroids = KMeans(args.buckets, n_init=3, random_state=args.seed).fit(db_emb)
    vq = lambda e: -centroids.transform(e)  # noqa: E731  (nearest centroids score highest)

    rows, curves = [], {"Th": [], "VQ": [], "DHT": []}
    for k in range(1, args.max_k + 1):
        for name, db_keys, q_keys in (("Th", db_emb, q_emb), ("VQ", vq(db_emb), vq(q_emb)),
                                      ("DHT", db_act, q_act)):
            row = _table_rows(name, db_keys, db_emb, q_keys, q_emb, data, k, args.buckets)
            curves[name].append(row)
            if k == args.k:
                rows.append(row)
    exhaustive = _exhaustive_seconds(db_emb, q_emb)
    table = Table(f"DHT ({args.variant}) on {data.name}: d = {args.buckets} buckets, k = "
                  f"{args.k}, {len(db_emb)} database items, {len(q_emb)} queries",
                  ["method", "SUF", "P@1", "P@4", "P@16", "NMI", "search ms"])
    for row in rows:
        table.add([row["method"], f"{row['SUF']:.2f}", f"{row['P@1']:.3f}", f"{row['P@4']:.3f}",
                   f"{row['P@16']:.3f}", f"{row['NMI']:.3f}", f"{row['search_s'] * 1e3:.2f}"])
    dht = rows[-1]
    table.note(f"exhaustive scan (torch matmul + topk): {exhaustive * 1e3:.2f} ms; DHT table "
               f"search: {dht['search_s'] * 1e3:.2f} ms: a speed-up of "
               f"{exhaustive / dht['search_s']:.1f}x at SUF {dht['SUF']:.1f} (medians of 5)")
    return {"table": table, "rows": rows, "curves": curves, "exhaustive_s": exhaustive,
            "history": run.history}
