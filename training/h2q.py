"""Householder quantization (H2Q, 2023): similarity learning without a quantization term, then
an orthogonal rotation learned so that sign() loses little; compared with plain sign() and ITQ
by mAP@k of Hamming ranking with the Euclidean tie-break."""

from __future__ import annotations

import torch

import qkernels as qk
from qkernels.losses import DQNLoss

from .common import Run, Stage
from .evaluation import hamming_keys, hamming_ranking, map_k, ranking_pr
from .models import EmbeddingNet
from .report import Table

__all__ = ["run"]


def run(args, run: Run) -> dict:
    data = run.data
    net = EmbeddingNet(data.x_train.shape[1:], args.bits).to(run.device)
    module = run.wrap(net)
    similarity = DQNLoss(pq_weight=0.0)  # the pairwise cosine loss: any similarity loss works

    def step(indices, epoch, step):
        x = run.tensor(data.x_train[indices])
        return similarity(module(x), run.tensor(data.y_train[indices]))

    batches = run.batches()
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    run.train(net, [Stage("similarity", args.epochs, optimizer, step, batches)])
    if not run.is_main:
        return {}

    net.eval()
    db = run.infer(net, data.x_train, desc="db embeddings")
    queries = run.infer(net, data.x_test, desc="query embeddings")
    householder = qk.HouseholderQuantizer(args.bits, loss=args.h2q_loss).fit(
        db, epochs=args.h2q_epochs, seed=args.seed, progress=args.progress and not args.quiet)
    for entry in householder.history[1:]:
        run.history.append({"stage": "householder", "epoch": entry["epoch"],
                            "loss": entry["train"]})
    itq = qk.ITQ(args.bits, seed=args.seed).fit(db)
    k = map_k(args, len(db))
    rows, pr = [], {}
    for name, encode in (("H2Q: sign(U x)", householder.encode), ("sign(x)", qk.pack_bits),
                         ("ITQ", itq.encode)):
        db_codes, q_codes = encode(db), encode(queries)
        I = hamming_ranking(db_codes, q_codes, db, queries, k)
        rows.append((name, qk.metrics.map_at_k(I, data.y_train, data.y_test, k)))
        pr[name] = ranking_pr(hamming_keys(db_codes, q_codes, args.bits, db, queries),
                              data.y_test, data.y_train, args.seed)
    table = Table(f"H2Q on {data.name}: {args.bits}-bit codes ({args.h2q_loss} loss), "
                  f"{len(db)} database items, {len(queries)} queries; Hamming ranking, ties by "
                  "Euclidean distance of the normalised embeddings",
                  ["codes", f"mAP@{k}"])
    for name, value in rows:
        table.add([name, f"{value:.4f}"])
    return {"table": table, "map": dict(rows), "pr": pr, "history": run.history}
