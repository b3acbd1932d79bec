"""Reports: a table printed and saved as results.json, and PNG plots (matplotlib, no screen)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["Table", "plot_curves", "plot_history", "plot_pr", "write_results"]


class Table:
    def __init__(self, title: str, header: list[str]):
        self.title = title
        self.header = header
        self.rows: list[list[str]] = []
        self.notes: list[str] = []

    def add(self, row: list[str]) -> None:
        self.rows.append([str(cell) for cell in row])

    def note(self, text: str) -> None:
        self.notes.append(text)

    def markdown(self) -> str:
        lines = [self.title, "", "| " + " | ".join(self.header) + " |",
                 "|" + "|".join("---" for _ in self.header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        lines += ["", *self.notes]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"title": self.title, "header": self.header, "rows": self.rows,
                "notes": self.notes}


def write_results(out: Path, results: dict[str, Any]) -> Path:
    """results.json: everything but the Table objects, which are stored as dicts."""
    serialisable = {k: (v.as_dict() if isinstance(v, Table) else v) for k, v in results.items()}
    path = out / "results.json"
    path.write_text(json.dumps(serialisable, indent=2, default=float))
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(out: Path, history: list[dict[str, Any]], title: str) -> Path:
    """Training curves: the mean loss of every epoch, one line per stage."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for stage in dict.fromkeys(h["stage"] for h in history):
        points = [(h["epoch"], h["loss"]) for h in history if h["stage"] == stage]
        ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=stage)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = out / "training.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_curves(out: Path, curves: dict[str, list[dict[str, Any]]], metric: str, title: str,
                suf: str = "SUF") -> Path:
    """``metric`` against the search speed-up factor ``suf`` (a key of each row), one line per
    method (points: k = 1..)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, rows in curves.items():
        ax.plot([r[suf] for r in rows], [r[metric] for r in rows], marker="o", label=name)
        for r in rows:
            ax.annotate(f"k={r['k']}", (r[suf], r[metric]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    ax.set_xscale("log")
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"search speed-up factor ({suf})")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = out / "precision_vs_suf.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_pr(out: Path, curves: dict[str, dict[str, list]], title: str) -> Path:
    """Precision-recall curves of whole-database rankings (training.evaluation.ranking_pr), one
    line per method, saved as pr_curve.png."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, curve in curves.items():
        ax.plot(curve["recall"], curve["precision"], marker=".", markersize=3, label=name)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "pr_curve.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
