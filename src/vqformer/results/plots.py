"""One figure per comparison: validation curves per arm, the final metric against the varied knob, and
codebook usage during training. Curves are the mean over seeds with the seeds' min-max as a band."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .tables import TableSpec, arms  # noqa: E402


def _mean_curve(recs: list[dict], key: str):
    by_step: dict[int, list[float]] = {}
    for r in recs:
        for step, v in r["curves"].get(key, []):
            by_step.setdefault(step, []).append(v)
    steps = sorted(s for s, vs in by_step.items() if len(vs) == len(recs))   # steps every seed logged
    return steps, [sum(by_step[s]) / len(recs) for s in steps], [min(by_step[s]) for s in steps], \
        [max(by_step[s]) for s in steps]


def curves(spec: TableSpec, records: list[dict], path: Path, key: str = "val/bpb", ylabel: str | None = None) -> bool:
    groups = arms(spec, records)
    if not groups:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, recs in groups.items():
        steps, mean, lo, hi = _mean_curve(recs, key)
        if steps:
            line, = ax.plot(steps, mean, marker="o", ms=3, label=f"{spec.vary}={arm} ({len(recs)} seeds)")
            ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel or key)
    ax.set_title(spec.title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def final_vs_knob(spec: TableSpec, rows: list[dict], path: Path, log2: bool = True) -> bool:
    if not rows:
        return False
    x = [r["arm"] for r in rows]
    mean = [r["mean"] for r in rows]
    err = [[r["mean"] - r["min"] for r in rows], [r["max"] - r["mean"] for r in rows]]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.errorbar(x, mean, yerr=err, marker="o", capsize=4)
    if log2:
        ax.set_xscale("log", base=2)
    ax.set_xticks(x, [str(v) for v in x])
    ax.set_xlabel(spec.vary)
    ax.set_ylabel("final validation bits per byte")
    ax.set_title(f"{spec.title}\n(mean, bars: min-max over seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
