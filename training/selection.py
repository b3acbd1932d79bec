"""python -m training.selection: choose an experiment's hyper-parameters on a validation split.

Every combination of a grid of options is trained as the quality benchmark trains the experiment
(its method, dataset and budget), with ``--validation FRACTION``: a seeded part of each
training class becomes the queries and the rest the database, so the test split is never seen.
The grid's options replace the experiment's own values of them. Each run is scored by the
criterion of the experiment's claim, and the table says which setting that criterion picks:

- DHT (``dht-*``): its SUF@4 against k-means buckets' (VQ) at every k of the curve, where its
  P@4 is within ``--tolerance`` (0.005) of VQ's at every k; the setting with the largest
  geometric mean of the SUF ratios among those, else (none within it) the smallest shortfall.
- the cascade (``cascade*``): its SUF@1 as a multiple of the flat table's, where its P@1 is
  within ``2 x --tolerance`` (0.01: 1 point) of the flat table's; the same rule.
- any other experiment: ``--maximise KEY``, one value it reports (``mAHP`` for KL hashing).

    python -m training.selection dht-glyphs-64 --grid penalty=0.3,1,3 hash-margin=0.1,1

The values are means over ``--seeds`` (default 0). Runs are kept in ``--out`` and reused, as the
benchmark's are.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
from pathlib import Path

from .benchmark import EXPERIMENTS, experiment_options, run_experiment

__all__ = ["main", "score"]


def score(name: str, values: dict[str, float], tolerance: float,
          maximise: str | None = None) -> tuple[bool, float, str]:
    """(within the precision tolerance, the value to maximise, what it was made of) of one
    run of experiment ``name``, from the values the benchmark reads from its results."""
    if maximise is not None:
        if maximise not in values:
            raise KeyError(f"--maximise {maximise!r}: the experiment reports "
                           f"{', '.join(sorted(values))}")
        return True, values[maximise], f"{maximise} {values[maximise]:.4f}"
    if name.startswith("dht"):
        ks = sorted({key.split()[0] for key in values if key.endswith("DHT SUF@4")})
        ratios, gaps = [], []
        for k in ks:
            ratios.append(values[f"{k} DHT SUF@4"] / values[f"{k} VQ SUF@4"])
            gaps.append(values[f"{k} DHT P@4"] - values[f"{k} VQ P@4"])
        parts = [f"{k}: SUF@4 {r:.2f}x VQ, P@4 {g:+.4f}" for k, r, g in zip(ks, ratios, gaps,
                                                                             strict=True)]
        within = min(gaps) >= -tolerance
        value = math.exp(statistics.mean(math.log(r) for r in ratios)) if within else min(gaps)
        return within, value, "; ".join(parts)
    if name.startswith("cascade"):
        ratio = values["cascade SUF@1 / flat SUF@1"]
        gap = values["cascade P@1"] - values["flat DHT P@1"]
        within = gap >= -2 * tolerance  # 1 point of P@1 at the default 0.005
        return within, ratio if within else gap, f"SUF@1 {ratio:.2f}x flat, P@1 {gap:+.4f}"
    raise ValueError(f"{name}: no criterion for this experiment; give --maximise KEY")


def _grid(specs: list[str]) -> list[tuple[tuple[str, str], ...]]:
    """``["penalty=0.3,1", "hash-margin=3"]`` -> every combination of (option, value)."""
    axes = []
    for spec in specs:
        option, sep, values = spec.partition("=")
        if not sep or not option or not values:
            raise ValueError(f"--grid {spec!r}: expected OPTION=V1,V2,... (e.g. penalty=0.3,1)")
        axes.append([(option.removeprefix("--"), v) for v in values.split(",")])
    return list(itertools.product(*axes))


def _without(command: list[str], options: set[str]) -> list[str]:
    """``command`` less each of ``options`` and the value after it."""
    out, skip = [], False
    for part in command:
        if skip:
            skip = False
        elif part in options:
            skip = True
        else:
            out.append(part)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.selection",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", choices=[e[0] for e in EXPERIMENTS])
    p.add_argument("--grid", nargs="+", required=True, metavar="OPTION=V1,V2",
                   help="the options to try, each with its values (every combination runs)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--validation", type=float, default=0.1, metavar="FRACTION",
                   help="of each training class held out as the queries (default 0.1)")
    p.add_argument("--tolerance", type=float, default=0.005,
                   help="how far below the baseline's precision a setting may be (0.005)")
    p.add_argument("--maximise", default=None, metavar="KEY",
                   help="for experiments without a criterion of their own")
    p.add_argument("--fashion", default="", metavar="DIR")
    p.add_argument("--out", type=Path, default=Path("runs/selection"))
    p.add_argument("--markdown", type=Path, default=None, metavar="PATH",
                   help="also write the table to PATH")
    args = p.parse_args(argv)
    name, dataset, command, read = next(e for e in EXPERIMENTS if e[0] == args.experiment)
    try:
        grid = _grid(args.grid)
    except ValueError as error:
        p.error(str(error))
    # the grid's values replace the experiment's own (its selected ones, say)
    command = _without(command, {f"--{option}" for setting in grid for option, _ in setting})

    rows = []
    for setting in grid:
        extra = [part for option, value in setting for part in (f"--{option}", value)]
        label = " ".join(extra)
        per_seed = []
        for seed in args.seeds:
            run_dir = args.out / name / ("_".join(f"{o}{v}" for o, v in setting)
                                         + f"-seed{seed}")
            options = experiment_options(dataset, command, seed, run_dir, args.fashion,
                                         (*extra, "--validation", str(args.validation)))
            values = run_experiment(options, run_dir, read)
            if values is None:
                return 1
            per_seed.append(values)
            print(f"{name} {label} seed {seed}: done", flush=True)
        mean = {key: statistics.mean(v[key] for v in per_seed) for key in per_seed[0]}
        try:
            rows.append((label, *score(name, mean, args.tolerance, args.maximise)))
        except (KeyError, ValueError) as error:
            p.error(str(error))
    best = max(rows, key=lambda row: (row[1], row[2]))
    lines = [f"Selection for {name} on a validation split ({args.validation:g} of each "
             f"training class as queries), seeds {args.seeds}, {' '.join(command)}:", "",
             "| setting | within tolerance | criterion | values |", "|---|---|---|---|"]
    for label, within, value, parts in rows:
        mark = " **chosen**" if (label, within, value, parts) == best else ""
        lines.append(f"| `{label}`{mark} | {'yes' if within else 'no'} | {value:.4f} | "
                     f"{parts} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
