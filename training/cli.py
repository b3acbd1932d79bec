"""python -m training METHOD [options]: train, build the method's index on the database split,
query it with the query split, and report (a table, results.json, PNG plots).

Examples::

    python -m training dht                               # DHT (triplet) on the bundled digits
    python -m training dht --variant npairs --k 2
    python -m training cascade --buckets 16             # two levels: 16 x 16 buckets
    python -m training dqn --dataset synthetic
    python -m training h2q --dataset npz:features.npz --bits 32
    python -m training klhash --dataset cifar100:~/data/cifar-100-python --device cuda
    torchrun --nproc_per_node=2 -m training dht          # DistributedDataParallel
    torchrun --nproc_per_node=2 -m training dqn --shard-index   # and a sharded index
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

__all__ = ["main", "parser"]

METHODS = ("dht", "cascade", "dqn", "h2q", "klhash")
# epochs of the first stage by method (--epochs overrides)
DEFAULT_EPOCHS = {"dht": 30, "cascade": 30, "dqn": 30, "h2q": 30, "klhash": 30}
# DQN's lambda by whether unit vectors are quantized (see --dqn-raw)
DQN_PQ_WEIGHT = {True: 0.1, False: 1e-4}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("method", choices=METHODS)
    p.add_argument("--dataset", default="digits",
                   help="digits (default), synthetic[:S,C,D,N], fashion-mnist[:DIR], "
                        "glyphs[:FONTS], cifar100:PATH or npz:PATH")
    p.add_argument("--validation", type=float, default=None, metavar="FRACTION",
                   help="model selection: hold out FRACTION of each training class as the "
                        "queries and train on the rest; the test split is not used")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of the (first) training stage; method default if omitted")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--classes-per-batch", type=int, default=64,
                   help="classes per batch (at most the dataset's; default 64 as DHT)")
    p.add_argument("--items-per-class", type=int, default=4)
    p.add_argument("--out", default=None, help="output folder (default runs/<method>-<time>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint")
    p.add_argument("--batches-per-epoch", type=int, default=None,
                   help="cap the batches of an epoch (quick runs; default: the whole split)")
    p.add_argument("--save-replicas", action="store_true",
                   help="every rank writes its final weights to OUT/replica-RANK.pt (to check "
                        "that distributed replicas agree)")
    p.add_argument("--shard-index", action="store_true",
                   help="under torchrun (dht, cascade, dqn): evaluate with a ShardedIndex, "
                        "each rank indexing its share of the database (the same metrics as "
                        "one index)")
    p.add_argument("--quiet", action="store_true", help="print only the final table")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no tqdm progress bars (the one-line epoch summaries stay)")

    dht = p.add_argument_group("dht, cascade")
    dht.add_argument("--variant", choices=("triplet", "npairs"), default="triplet")
    dht.add_argument("--buckets", type=int, default=64,
                     help="d, hash buckets (per level for cascade; default 64)")
    dht.add_argument("--k", type=int, default=2, help="buckets per item (default 2)")
    dht.add_argument("--max-k", type=int, default=4, help="the curve of the report: k = 1..")
    dht.add_argument("--penalty", type=float, default=None,
                     help="lambda of the code assignment (1.0 triplet, 0.3 n-pairs)")
    dht.add_argument("--penalty-sibling", type=float, default=100.0,
                     help="cascade: lambda between siblings of one parent (100)")
    dht.add_argument("--margin", type=float, default=1.0, help="triplet margin (1.0)")
    dht.add_argument("--hash-margin", type=float, default=3.0,
                     help="triplet margin of the hash stage (3.0). Its masked distances span "
                          "the 2k buckets of two codes of a unit vector (at most 2 sqrt(k) "
                          "apart when disjoint), so the paper's 1.0 is met as soon as codes "
                          "differ and the loss stops teaching")
    dht.add_argument("--reg", type=float, default=0.003, help="n-pairs L2 weight (0.003)")
    dht.add_argument("--npairs-scale", type=float, default=None, metavar="S",
                     help="n-pairs: normalise the outputs to length S (a cosine softmax at "
                          "temperature 1/S) instead of the L2 term, which does not hold them "
                          "in scale (default: unnormalised, as the paper)")
    dht.add_argument("--hash-epochs", type=int, default=None,
                     help="epochs of the hash head fine-tuning (default: as --epochs)")

    quant = p.add_argument_group("dqn, h2q, klhash")
    quant.add_argument("--bits", type=int, default=32,
                       help="code length: PQ subspaces x --pq-nbits (dqn), sign bits (h2q, "
                            "klhash)")
    quant.add_argument("--pq-nbits", type=int, choices=(4, 8), default=8,
                       help="dqn: bits per PQ subspace (8, the paper's; 4: 16 codewords, twice "
                            "the subspaces)")
    quant.add_argument("--map-k", type=int, default=None,
                       help="mAP@k / mAHP@k cut-off (default: min(1000, database size))")
    quant.add_argument("--pq-weight", type=float, default=None,
                       help="DQN lambda (default 0.1 on unit vectors, 1e-4 with --dqn-raw)")
    quant.add_argument("--dqn-raw", dest="dqn_normalize", action="store_false",
                       help="DQN quantizes the raw outputs z (the paper) instead of the unit "
                            "vectors z / |z| the cosine loss sees; on raw z the network meets "
                            "the quantization term by shrinking its outputs")
    quant.add_argument("--warmup-epochs", type=int, default=None,
                       help="DQN epochs without the quantization term (default: a third)")
    quant.add_argument("--h2q-loss", choices=("l2", "l1", "bit_var", "min_entry"), default="l2")
    quant.add_argument("--h2q-epochs", type=int, default=150)
    quant.add_argument("--kl-weight", type=float, default=0.001,
                       help="klhash KL term weight (0.001; the estimate grows with the bits, and "
                            "0.01 already hurt retrieval on synthetic data)")
    quant.add_argument("--kl-ramp", type=int, default=0, metavar="EPOCHS",
                       help="klhash: ramp the KL weight up from 0 over these epochs (0: none)")
    quant.add_argument("--sim-weight", type=float, default=1.0,
                       help="klhash relative-distance term weight")
    return p


# (option, smallest accepted value, whether it must be strictly above it); None: optional
_INT_BOUNDS = {"epochs": 1, "hash_epochs": 1, "classes_per_batch": 2, "items_per_class": 1,
               "batches_per_epoch": 1, "buckets": 1, "k": 1, "max_k": 1, "bits": 1, "map_k": 1,
               "warmup_epochs": 0, "h2q_epochs": 1, "seed": 0, "kl_ramp": 0}
_FLOAT_BOUNDS = {"lr": (0.0, True), "penalty": (0.0, False), "penalty_sibling": (0.0, False),
                 "margin": (0.0, False), "hash_margin": (0.0, False), "reg": (0.0, False),
                 "npairs_scale": (0.0, True),
                 "pq_weight": (0.0, False),
                 "kl_weight": (0.0, False), "sim_weight": (0.0, False)}


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse values no run can use, as argparse refuses a bad choice: one ``error:`` line and
    exit status 2, never a traceback and never a silent change of what was asked."""
    import math

    for name, low in _INT_BOUNDS.items():
        value = getattr(args, name)
        if value is not None and value < low:
            p.error(f"{_option(name)} must be >= {low}, got {value}")
    for name, (low, strict) in _FLOAT_BOUNDS.items():
        value = getattr(args, name)
        if value is not None and (not math.isfinite(value) or value < low
                                  or (strict and value == low)):
            p.error(f"{_option(name)} must be a finite number {'>' if strict else '>='} {low:g}, "
                    f"got {value}")
    if args.validation is not None and not 0 < args.validation < 1:
        p.error(f"--validation must be a fraction in (0, 1), got {args.validation}")
    if args.k > args.buckets:
        p.error(f"--k must be at most --buckets = {args.buckets}, got {args.k}")
    if args.method in ("dht", "cascade"):
        if args.max_k > args.buckets:
            p.error(f"--max-k must be at most --buckets = {args.buckets}, got {args.max_k}")
        if args.items_per_class < 2:
            p.error("--items-per-class must be >= 2 for dht and cascade (the metric losses "
                    f"need two items of a class), got {args.items_per_class}")
    if args.shard_index:
        import os

        if args.method not in ("dht", "cascade", "dqn"):
            p.error(f"--shard-index applies to dht, cascade and dqn (their evaluation searches "
                    f"an index); {args.method} ranks the whole database")
        if int(os.environ.get("WORLD_SIZE", "1")) < 2:
            p.error("--shard-index needs a distributed run: torchrun --nproc_per_node=N "
                    "-m training ...")
    if args.method == "dqn" and args.bits % args.pq_nbits:
        p.error(f"--bits must be a multiple of --pq-nbits = {args.pq_nbits} for dqn (bits per "
                f"PQ subspace), got {args.bits}")


def check_data(args: argparse.Namespace, data) -> None:
    """What the dataset must offer the method (raises DatasetError)."""
    from .data import DatasetError

    if len(data.x_test) == 0:
        raise DatasetError(f"{data.name}: the query split (x_test) is empty")
    if args.method in ("dht", "cascade") and len(data.x_train) < args.buckets:
        raise DatasetError(f"{data.name}: {len(data.x_train)} training items is fewer than the "
                           f"--buckets = {args.buckets} (the VQ baseline needs one per centroid)")


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    check_args(p, args)
    if args.epochs is None:
        args.epochs = DEFAULT_EPOCHS[args.method]
    if args.hash_epochs is None:
        args.hash_epochs = args.epochs
    if args.pq_weight is None:
        args.pq_weight = DQN_PQ_WEIGHT[args.dqn_normalize]
    if args.penalty is None:
        args.penalty = 1.0 if args.variant == "triplet" else 0.3
    if args.out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        args.out = str(Path("runs") / f"{args.method}-{stamp}")
    if args.resume and not Path(args.out, "checkpoint.pt").exists():
        print(f"--resume: no checkpoint in {args.out}; starting afresh", file=sys.stderr)
    from . import common, report
    from .data import DatasetError

    method = __import__(f"training.{args.method}", fromlist=["run"])
    try:
        run = common.Run(args)
        check_data(args, run.data)
        results = method.run(args, run)
    except (DatasetError, common.CheckpointError) as error:
        print(f"{p.prog}: error: {error}", file=sys.stderr)
        return 2
    if run.is_main:
        table = results["table"]
        print()
        print(table.markdown())
        out = run.out
        report.write_results(out, results)
        report.plot_history(out, run.history, f"{args.method} on {run.data.name}")
        if "curves" in results:
            report.plot_curves(out, results["curves"], "P@4",
                               f"{args.method} on {run.data.name}: precision@4 vs SUF",
                               suf="SUF@4")
        if "pr" in results:
            report.plot_pr(out, results["pr"], f"{args.method} on {run.data.name}: "
                           "precision-recall of the whole-database ranking")
        print(f"\nresults, plots and checkpoint in {out}/")
    run.finish()
    return 0
