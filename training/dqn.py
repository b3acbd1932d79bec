"""Deep Quantization Network (Cao et al., AAAI 2016): a bottleneck embedding trained with the
pairwise cosine loss plus the product-quantization loss, codebooks re-fitted by k-means;
searched by asymmetric quantizer distance (PQIndex) and scored by mAP@k."""

from __future__ import annotations

import numpy as np
import torch

import qkernels as qk
from qkernels.losses import DQNLoss

from .common import Run, Stage
from .evaluation import map_k, normalised, ranked, ranking_pr, squared_l2_keys
from .models import EmbeddingNet
from .report import Table

__all__ = ["run"]


def run(args, run: Run) -> dict:
    data = run.data
    bits_per_code = getattr(args, "pq_nbits", 8)
    subspaces = max(1, args.bits // bits_per_code)
    # 8 bits per subspace as in the paper (or 4, the fast-scan layout), fewer when the training
    # set is small
    nbits = int(min(bits_per_code, np.floor(np.log2(len(data.x_train)))))
    dim = 2 * subspaces * bits_per_code  # a bottleneck of 2 dimensions per code bit
    net = EmbeddingNet(data.x_train.shape[1:], dim).to(run.device)
    module = run.wrap(net)
    quantizer = qk.ProductQuantizer(dim, subspaces, nbits, seed=args.seed)
    warmup = args.warmup_epochs if args.warmup_epochs is not None else args.epochs // 3
    loss_fn = DQNLoss(args.pq_weight, normalize=args.dqn_normalize)
    # what is quantized: the unit vectors the cosine loss sees (the default), or raw z
    target = normalised if args.dqn_normalize else (lambda e: e)

    def step(indices, epoch, step):
        x = run.tensor(data.x_train[indices])
        labels = run.tensor(data.y_train[indices])
        active = quantizer if epoch >= warmup and quantizer.is_trained else None
        return loss_fn(module(x), labels, active)

    # codebooks are re-fitted on a seeded sample of the training set (at most 20,000 items: on
    # Fashion-MNIST the inference of all 60,000 cost more than the epoch it follows)
    sample = np.random.default_rng(args.seed).permutation(len(data.x_train))[:20_000]

    def refit(epoch):
        """k-means on the sample's embeddings, the same on every rank (not while lambda = 0:
        then the codebooks are fitted once, after training, as post-hoc PQ does)."""
        if epoch + 1 >= warmup and args.pq_weight > 0:
            net.eval()
            quantizer.train(target(run.infer(net, data.x_train[np.sort(sample)],
                                             desc="codebooks")))

    batches = run.batches()
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    run.train(net, [Stage("dqn", args.epochs, optimizer, step, batches, refit)])
    if not run.evaluates:
        return {}

    net.eval()
    db = target(run.infer(net, data.x_train, desc="db embeddings"))
    queries = target(run.infer(net, data.x_test, desc="query embeddings"))
    if not quantizer.is_trained:
        quantizer.train(db)
    k = map_k(args, len(db))
    # the paper ranks by the exact asymmetric distance: no 4-bit fast scan (its rounded tables)
    index = run.index(lambda rows: qk.PQIndex(quantizer, fast_scan=False).add(db[rows]),
                      len(db))
    rows = []
    for name, (_, I) in (("DQN, asymmetric distance (PQIndex)", index.search(queries, k)),
                         ("DQN, symmetric distance",
                          index.search(queries, k, symmetric=True))):
        rows.append((name, qk.metrics.map_at_k(I, data.y_train, data.y_test, k)))
    # the unquantized embedding, exhaustively, for reference
    exact = squared_l2_keys(queries, db)
    I = ranked(exact, len(queries), k)
    rows.append(("embedding without quantization (exhaustive)",
                 qk.metrics.map_at_k(I, data.y_train, data.y_test, k)))
    # the asymmetric distance is the distance to the decoded database vectors
    pr = {"DQN (asymmetric distance)": ranking_pr(
              squared_l2_keys(queries, np.asarray(quantizer.decode(quantizer.encode(db)))),
              data.y_test, data.y_train, args.seed),
          "embedding (exhaustive)": ranking_pr(exact, data.y_test, data.y_train, args.seed)}
    space = "unit vectors" if args.dqn_normalize else "raw outputs"
    table = Table(f"DQN on {data.name}: {subspaces} x {nbits} bits ({subspaces * nbits}-bit "
                  f"codes) of the {dim}-d embedding's {space}, lambda = {args.pq_weight:g}, "
                  f"{len(db)} database items, {len(queries)} queries",
                  ["search", f"mAP@{k}"])
    for name, value in rows:
        table.add([name, f"{value:.4f}"])
    return {"table": table, "map": dict(rows), "pr": pr, "history": run.history}
