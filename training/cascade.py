"""Cascaded compound codes (Jeong, Kim & Song, CVPR 2019): DHT with a two-level hash head;
codes from the exact hierarchical solver, d * d compound buckets; reported beside flat DHT."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import qkernels as qk
from qkernels.losses import SemiHardTripletLoss, assign_batch_codes, assign_hierarchical_codes

from .common import Run, Stage
from .dht import Head, embeddings_and_activations, loss_fn
from .evaluation import table_cells, table_columns, table_metrics
from .models import EmbeddingNet
from .report import Table

__all__ = ["run"]


def _row(name, table, search, db_codes, data):
    """The paper's metrics of one table, one search per K (see table_metrics)."""
    return {"method": name, **table_metrics(table, search, data.y_train, data.y_test, db_codes)}


def run(args, run: Run) -> dict:
    data = run.data
    d = args.buckets
    net = EmbeddingNet(data.x_train.shape[1:], d).to(run.device)
    # two hash heads on one body: the cascade's (two levels of d) and flat DHT's (d), trained
    # together so that the comparison shares the body
    net.heads["hash"] = nn.Linear(net.feature_dim, 2 * d).to(run.device)
    net.heads["flat"] = nn.Linear(net.feature_dim, d).to(run.device)
    embed = run.wrap(Head(net, net.embedding))
    hashing = run.wrap(Head(net, nn.ModuleList([net.heads["hash"], net.heads["flat"]])))
    triplet = SemiHardTripletLoss(args.margin if args.hash_margin is None else args.hash_margin)

    def cascade_step(indices, epoch, step):
        """The paper's loss: a masked triplet loss per level; at level 1 the label is the
        assigned parent bucket (classes sharing a parent are positives), at level 2 the class
        (whose children set it apart from its siblings). Plus flat DHT's loss on its head."""
        x = run.tensor(data.x_train[indices])
        labels = run.tensor(data.y_train[indices])
        out, flat_out = hashing(x)
        a1, a2 = out[:, :d], out[:, d:]
        codes = assign_hierarchical_codes(a1, a2, labels, args.k, args.penalty_sibling,
                                          args.penalty)
        level1_loss = (triplet(a1, codes.level1, codes.mask1)
                       if len(torch.unique(codes.level1)) > 1 else a1.sum() * 0.0)
        flat_masks = assign_batch_codes(flat_out, labels, args.k, args.penalty).mask
        return (level1_loss + triplet(a2, labels, codes.mask2)
                + triplet(flat_out, labels, flat_masks))

    batches = run.batches()
    pretrain = torch.optim.Adam(list(net.body.parameters()) + list(net.embedding.parameters()),
                                lr=args.lr)
    finetune = torch.optim.Adam([
        {"params": [*net.heads["hash"].parameters(), *net.heads["flat"].parameters()],
         "lr": args.lr},
        {"params": net.body.parameters(), "lr": args.lr * 0.1},
    ])
    run.train(net, [
        Stage("metric", args.epochs, pretrain, loss_fn(args, run, embed, masked=False,
                                                              variant="triplet"), batches),
        Stage("cascade", args.hash_epochs, finetune, cascade_step, batches),
    ])
    if not run.evaluates:
        return {}

    (db_emb, q_emb), ((db_act, q_act), (db_flat, q_flat)) = embeddings_and_activations(
        run, net, ("hash", "flat"))

    rows = []
    compound = run.index(lambda r: qk.HierarchicalHashTable(d, args.k).add(
        db_act[r, :d], db_act[r, d:], db_emb[r]), len(db_emb))
    parents = np.argmax(db_act[:, :d], axis=1)
    children = np.argsort(-db_act[:, d:], axis=1, kind="stable")[:, : args.k]
    rows.append(_row(f"cascade ({d}x{d} buckets)", compound,
                     lambda K: compound.search(q_act[:, :d], q_act[:, d:], q_emb, K),
                     parents[:, None] * d + children, data))
    flat = run.index(lambda r: qk.SparseHashTable(d, args.k).add(db_flat[r], db_emb[r]),
                     len(db_emb))
    rows.append(_row(f"flat DHT ({d} buckets)", flat, lambda K: flat.search(q_flat, q_emb, K),
                     np.argsort(-db_flat, axis=1, kind="stable")[:, : args.k], data))
    table = Table(f"cascade on {data.name}: d = {d} per level, k = {args.k}, "
                  f"{len(db_emb)} database items, {len(q_emb)} queries; one search per K",
                  table_columns("table"))
    for row in rows:
        table.add(table_cells(row))
    return {"table": table, "rows": rows, "history": run.history}
