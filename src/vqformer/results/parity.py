"""Parity with the official code's tiny configuration: ``python -m vqformer.results parity``.

    python -m vqformer.results parity                                        # -> logs/results/parity/
    python -m vqformer.results parity --archive-new --out experiments/parity # commit the record

Reads the finished runs of ``experiment=tvq/parity_official_tiny`` (the committed archive
``experiments/parity/runs`` and ``logs/``; a run in logs/ replaces the archived run of the same folder name),
and from each run's metrics.csv computes the training-loss means over the official windows of updates and
the validation CE after 200 updates. Writes ``parity.csv``, ``tables.md`` and ``parity_curve.png`` (our
per-update curves, the official window means as horizontal segments).
"""
from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

from omegaconf import OmegaConf

from ..data.files import atomic_write_text
from .collect import archive, archive_parser, num, runs_named, with_archive

NAME = "tvq/parity_official_tiny"
# Updates are numbered from 0, as in the official loop (steps 0..200); a window includes both ends.
WINDOWS = ((0, 9), (41, 60), (91, 110), (141, 160), (181, 200))
# The official JAX code on the same corpus and settings, as measured by a colleague and quoted in issue 14
# (not measured by this repository): train-loss window means in nats per byte, validation CE after 200 updates.
OFFICIAL_MEANS = (6.08, 3.53, 2.93, 2.85, 2.77)
OFFICIAL_VAL = 2.736
VAL_AFTER = 200


def load(run_dir: Path) -> dict:
    """Seed, training loss per update (0-based) and validation CE per number of updates trained."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    final = json.loads((run_dir / "DONE").read_text())
    train = {int(r["step"]): v for r in rows if (v := num(r.get("train/loss"))) is not None}
    # Lightning logs a validation inside fit with the index of the last update (after k updates: step k - 1)
    # and the runner's closing validation with the final global step; both are keyed by updates trained.
    val = {}
    for r in rows:
        if (v := num(r.get("val/loss"))) is not None:
            step = int(r["step"])
            val[step if step == final.get("step") else step + 1] = v
    return {"dir": run_dir, "seed": cfg.seed, "name": cfg.name, "train": train, "val": val,
            "steps": final.get("step")}


def window_means(train: dict[int, float], windows=WINDOWS) -> list[float | None]:
    """Mean training loss over each window of updates (inclusive), None where an update is missing."""
    out = []
    for a, b in windows:
        values = [train.get(t) for t in range(a, b + 1)]
        out.append(None if None in values else sum(values) / len(values))
    return out


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def summarize(runs: list[dict]) -> list[dict]:
    """One row per seed, their mean, the official numbers, and ours minus the official."""
    cols = [f"{a}-{b}" for a, b in WINDOWS] + [f"val@{VAL_AFTER}"]
    rows = []
    for run in sorted(runs, key=lambda r: r["seed"]):
        rows.append({"run": f"seed {run['seed']}", **dict(zip(cols, window_means(run["train"])
                                                                + [run["val"].get(VAL_AFTER)]))})
    if rows:
        mean = {c: _mean([r[c] for r in rows]) for c in cols}
        rows.append({"run": f"mean of {len(runs)} seeds", **mean})
        official = dict(zip(cols, [*OFFICIAL_MEANS, OFFICIAL_VAL]))
        rows.append({"run": "official JAX code (quoted)", **official})
        rows.append({"run": DIFF, **{c: None if mean[c] is None else mean[c] - official[c]
                                                  for c in cols}})
    return rows


DIFF = "ours - official"


def _cell(v, signed: bool = False) -> str:
    if v is None:
        return ""
    return (f"{v:+.3f}" if signed else f"{v:.3f}") if isinstance(v, float) else str(v)


def to_markdown(rows: list[dict]) -> str:
    if not rows:
        return "No finished parity runs.\n"
    cols = list(rows[0])
    head = ["run"] + [f"train {c}" if c[0].isdigit() else "val CE after 200" for c in cols[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(r[c], r["run"] == DIFF) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    return buf.getvalue()


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for run in sorted(runs, key=lambda r: r["seed"]):
        steps = sorted(run["train"])
        ax.plot(steps, [run["train"][t] for t in steps], lw=0.8, alpha=0.8, label=f"vqformer seed {run['seed']}")
    for i, ((a, b), v) in enumerate(zip(WINDOWS, OFFICIAL_MEANS)):
        ax.hlines(v, a, b, colors="black", lw=3, label="official window means (quoted)" if i == 0 else None)
    ours = [_mean(m) for m in zip(*(window_means(run["train"]) for run in runs))]
    for i, ((a, b), v) in enumerate(zip(WINDOWS, ours)):
        if v is not None:
            ax.hlines(v, a, b, colors="red", lw=2, linestyles="--",
                      label=f"vqformer window means ({len(runs)} seeds)" if i == 0 else None)
    ax.plot([VAL_AFTER], [OFFICIAL_VAL], "k*", ms=10, label=f"official validation CE (quoted) {OFFICIAL_VAL}")
    vals = [run["val"][VAL_AFTER] for run in runs if VAL_AFTER in run["val"]]
    if vals:
        ax.plot([VAL_AFTER] * len(vals), vals, "rx", ms=7, label="vqformer validation CE, per seed")
    ax.set_xlabel("update (0-based)")
    ax.set_ylabel("training loss (nats per byte)")
    ax.set_ylim(2.4, 6.6)
    ax.set_title("Official tiny configuration on the first 1 MB of wiki_sample", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parity_runs(roots: list[Path]) -> list[Path]:
    return runs_named(roots, NAME)


def main(argv=None) -> None:
    ap = archive_parser("parity", __doc__)
    args = ap.parse_args(argv)

    new = parity_runs([args.logs])
    if args.archive_new:
        for run_dir in new:
            archive(run_dir, args.archive)
    runs = [load(d) for d in with_archive(new, parity_runs([args.archive]))]
    print(f"[results] {len(runs)} finished parity runs")
    rows = summarize(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "parity.csv", to_csv(rows))
    header = ("# Parity with the official tiny configuration\n\nGenerated by `python -m vqformer.results parity` "
              "from the runs' metrics.csv. Training loss in nats per byte, averaged over the updates of each "
              f"window (0-based, both ends included); validation CE after {VAL_AFTER} updates on the first 10,240 "
              "bytes of the validation split. The official row is quoted from issue 14 (measured by a colleague "
              "on the official JAX code), not measured here. Do not edit by hand.\n\n")
    atomic_write_text(args.out / "tables.md", header + to_markdown(rows))
    if runs:
        plot(runs, args.out / "parity_curve.png")
    print(f"[results] wrote {args.out / 'tables.md'}")
