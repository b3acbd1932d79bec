"""Deep Hash Table (Jeong & Song, ICML 2018): metric learning, then a hash head fine-tuned on
exact batch codes; evaluated as the paper does (Th, VQ and DHT tables), plus wall-clock time."""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

import qkernels as qk
from qkernels.losses import NPairsLoss, SemiHardTripletLoss, assign_batch_codes

from .common import Run, Stage
from .evaluation import matched_precision, table_cells, table_columns, table_metrics, timed
from .models import EmbeddingNet
from .report import Table

__all__ = ["run"]


class Head(nn.Module):
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


def loss_fn(args, run: Run, module: nn.Module, masked: bool, variant: str | None = None):
    """The step function of a stage: triplet or n-pairs on ``module``'s outputs, with the
    exact batch codes' masks when ``masked``; ``variant`` overrides ``args.variant``."""
    x_train, y_train = run.data.x_train, run.data.y_train
    margin = args.margin if not masked or args.hash_margin is None else args.hash_margin
    triplet = SemiHardTripletLoss(margin)
    npairs = NPairsLoss(args.reg, args.npairs_scale)

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
        # the codes of the outputs the loss sees: normalised when it normalises them
        codes = assign_batch_codes(both, torch.cat([labels, labels]), args.k, args.penalty,
                                   normalize=args.npairs_scale is not None)
        return npairs(a, p, labels, codes.mask[: len(a)], codes.mask[len(a):])

    return step


def embeddings_and_activations(run: Run, net: EmbeddingNet, heads: tuple[str, ...],
                               embeddings: bool = True):
    """The normalised metric embeddings of the database and query splits (unless not
    ``embeddings``: None), and the outputs of each hash head on them: ``(db, queries),
    [(db, queries) per head]``."""
    net.eval()
    data = run.data

    def both(fn, what):
        return (run.infer(fn, data.x_train, desc=f"db {what}"),
                run.infer(fn, data.x_test, desc=f"query {what}"))

    if embeddings:
        embeddings = both(lambda x: nn.functional.normalize(net(x), dim=1), "embeddings")
    else:
        embeddings = None
    outputs = [both(lambda x, h=h: net.heads[h](net.features(x)), h) for h in heads]
    return embeddings, outputs


def _table_rows(run: Run, name: str, db_act, db_emb, q_act, q_emb, data, k: int,
                buckets: int):
    """Build the table (sharded with --shard-index) and measure the paper's metrics (one
    search per K)."""
    table = run.index(lambda rows: qk.SparseHashTable(buckets, k).add(db_act[rows],
                                                                      db_emb[rows]),
                      len(db_act))
    db_codes = np.argsort(-db_act, axis=1, kind="stable")[:, :k]  # the table's own rule
    row = table_metrics(table, lambda K: table.search(q_act, q_emb, K), data.y_train,
                        data.y_test, db_codes)
    return {"method": name, "k": k, **row}


def curve_ks(args) -> list[int]:
    """The k of the report's curve (1..max_k) and the headline k: each gets its own head."""
    return sorted(set(range(1, args.max_k + 1)) | {args.k})


def _exhaustive_seconds(db_emb: np.ndarray, q_emb: np.ndarray) -> float:
    db, queries = torch.from_numpy(db_emb), torch.from_numpy(q_emb)

    def scan():
        dist = (db * db).sum(1)[None, :] - 2 * queries @ db.T
        return torch.topk(dist, min(16, len(db_emb)), dim=1, largest=False)

    return timed(scan)[1]


def _hash_net(args, run: Run, net: EmbeddingNet) -> EmbeddingNet:
    """A network with the metric net's shape and a hash head of ``args.buckets`` outputs."""
    hashed = EmbeddingNet(run.data.x_train.shape[1:], args.buckets).to(run.device)
    hashed.heads["hash"] = nn.Linear(net.feature_dim, args.buckets).to(run.device)
    return hashed


def run(args, run: Run) -> dict:
    data = run.data
    net = EmbeddingNet(data.x_train.shape[1:], args.buckets).to(run.device)
    embed = run.wrap(Head(net, net.embedding))
    batches = run.batches()
    pretrain = torch.optim.Adam(list(net.body.parameters()) + list(net.embedding.parameters()),
                                lr=args.lr)
    stages = [Stage("metric", args.epochs, pretrain, loss_fn(args, run, embed, masked=False),
                    batches)]
    # one hash network per k of the curve, each fine-tuned from the pretrained one with codes
    # of its own k (the paper trains a model per k; scoring every k with one head trained at
    # --k would favour that k)
    hash_nets = nn.ModuleDict()
    for k in curve_ks(args):
        hashed = hash_nets[f"k{k}"] = _hash_net(args, run, net)
        finetune = torch.optim.Adam([
            {"params": hashed.heads["hash"].parameters(), "lr": args.lr},
            {"params": hashed.body.parameters(), "lr": args.lr * 0.1},  # 0.1x, as the paper
        ])
        stage_args = argparse.Namespace(**{**vars(args), "k": k})
        stages.append(Stage(
            f"hash k={k}", args.hash_epochs, finetune,
            loss_fn(stage_args, run, run.wrap(Head(hashed, hashed.heads["hash"])),
                     masked=True),
            batches, on_start=lambda hashed=hashed: hashed.body.load_state_dict(
                net.body.state_dict())))
    run.train(nn.ModuleDict({"metric": net, "hash": hash_nets}), stages)
    if not run.evaluates:
        return {}

    # Re-ranking uses the metric embedding as pretraining left it (frozen: the hash stages
    # tune copies of the body), normalised, for every method alike: the methods differ only in
    # the buckets they probe.
    (db_emb, q_emb), _ = embeddings_and_activations(run, net, ())

    from sklearn.cluster import KMeans

    centroids = KMeans(args.buckets, n_init=3, random_state=args.seed).fit(db_emb)
    vq = lambda e: -centroids.transform(e)  # noqa: E731  (nearest centroids score highest)

    # the mean squared length of the raw outputs (on the queries), which n-pairs' softmax
    # rewards: does the loss hold them in scale?
    square_norms = {"metric": _mean_square_norm(run.infer(net, data.x_test, desc="norms"))}
    rows, curves = [], {"Th": [], "VQ": [], "DHT": []}
    for k in curve_ks(args):
        _, ((db_act, q_act),) = embeddings_and_activations(run, hash_nets[f"k{k}"], ("hash",),
                                                           embeddings=False)
        square_norms[f"hash k={k}"] = _mean_square_norm(q_act)
        for name, db_keys, q_keys in (("Th", db_emb, q_emb), ("VQ", vq(db_emb), vq(q_emb)),
                                      ("DHT", db_act, q_act)):
            row = _table_rows(run, name, db_keys, db_emb, q_keys, q_emb, data, k,
                              args.buckets)
            if k <= args.max_k:
                curves[name].append(row)
            if k == args.k:
                rows.append(row)
    exhaustive = _exhaustive_seconds(db_emb, q_emb)
    table = Table(f"DHT ({args.variant}) on {data.name}: d = {args.buckets} buckets, k = "
                  f"{args.k}, {len(db_emb)} database items, {len(q_emb)} queries; one search "
                  "per K (SUF@K: the speed-up of that search)",
                  table_columns("method"))
    for row in rows:
        table.add(table_cells(row))
    dht = rows[-1]
    table.note(f"exhaustive scan (torch matmul + topk, K = 16): {exhaustive * 1e3:.2f} ms; DHT "
               f"table search: {dht['search_s'] * 1e3:.2f} ms: a speed-up of "
               f"{exhaustive / dht['search_s']:.1f}x at SUF@16 {dht['SUF@16']:.1f} (medians of "
               "5)")
    table.note("mean squared output length on the queries: " + ", ".join(
        f"{name} {value:.2f}" for name, value in square_norms.items()))
    matched = matched_precision(curves, "DHT", "SUF@4", "P@4")
    for m in matched:
        others = ", ".join(f"{name} {'-' if m[name] is None else f'{m[name]:.3f}'}"
                           for name in curves if name != "DHT")
        table.note(f"matched speed-up: at DHT k={m['k']}'s SUF@4 {m['SUF@4']:.2f}, P@4 is DHT "
                   f"{m['DHT']:.3f}, {others} (interpolated on each curve in log SUF; - where "
                   "its curve does not reach that SUF)")
    return {"table": table, "rows": rows, "curves": curves, "matched": matched,
            "exhaustive_s": exhaustive, "square_norms": square_norms, "history": run.history}


def _mean_square_norm(outputs: np.ndarray) -> float:
    return float(np.mean(np.sum(np.square(outputs, dtype=np.float64), axis=1)))
