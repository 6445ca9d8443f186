"""LRA classification curves: a run's validation accuracy per evaluation as a CSV and a plot, with horizontal
reference lines (chance, baselines, a paper row of ``results/paper.py``).

    python -m vqformer.results lra RUN_DIR [--name listops_short_longvq] [--out logs/results/lra] \
        [--ref NAME=ACC ...] [--paper MEGA] [--title TEXT]

writes ``<out>/<name>.csv`` (step, val/acc, val/loss, train/loss averaged since the previous validation) and
``<out>/<name>.png``. ``--paper MODEL`` draws that paper row's test accuracy on the run's ``data.task``.
"""
from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

from omegaconf import OmegaConf

from ..data.files import atomic_write_text
from . import paper


def curve(run_dir: Path) -> list[dict]:
    """One row per validation of the run's CSV log."""
    log = run_dir / "csv" / "version_0" / "metrics.csv"
    if not log.is_file():
        raise SystemExit(f"{log} not found: RUN_DIR must be a run directory trained with the csv logger")
    out, train = [], []
    for r in csv.DictReader(log.open()):
        if r.get("train/loss"):
            train.append(float(r["train/loss"]))
        if r.get("val/acc") and (train or not out):   # the runner's final re-validation repeats the last one
            out.append({"step": int(r["step"]) + 1, "val_acc": float(r["val/acc"]), "val_loss": float(r["val/loss"]),
                        "train_loss": sum(train) / max(1, len(train))})
            train = []
    if not out:
        raise SystemExit(f"{log} holds no validation accuracy (val/acc)")
    return out


def refs(run_dir: Path, given: list[str], paper_rows: list[str]) -> list[tuple[str, float]]:
    """(label, accuracy in [0, 1]) for each ``NAME=ACC`` and each paper row on the run's task."""
    out = []
    for ref in given:
        name, _, acc = ref.partition("=")
        try:
            out.append((name, float(acc)))
        except ValueError:
            raise SystemExit(f"--ref {ref!r}: expected NAME=ACC with ACC a number, e.g. chance=0.1") from None
    if paper_rows:
        task = OmegaConf.load(run_dir / "config.yaml").data.task
        for model in paper_rows:
            acc = paper.lra_accuracy(model, task)
            if acc is not None:
                out.append((f"{model} (paper, test)", acc / 100))
    return out


def plot(rows: list[dict], references: list[tuple[str, float]], path: Path, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([o["step"] for o in rows], [o["val_acc"] for o in rows], "o-", label="LongVQ (validation)")
    for i, (name, acc) in enumerate(references):
        ax.axhline(acc, ls="--", color="grey" if "chance" in name else f"C{i + 1}", label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vqformer.results lra", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--name", help="file stem (default: the run directory's name)")
    ap.add_argument("--out", type=Path, default=Path("logs/results/lra"), help="default: logs/results/lra")
    ap.add_argument("--ref", action="append", default=[], help="NAME=ACC, a horizontal line (accuracy in [0, 1])")
    ap.add_argument("--paper", action="append", default=[], choices=list(paper.LRA_ACCURACY),
                    help="a paper row of results/paper.py drawn on the run's task")
    ap.add_argument("--title", default="")
    a = ap.parse_args(argv)
    rows = curve(a.run_dir)
    references = refs(a.run_dir, a.ref, a.paper)
    stem = a.out / (a.name or a.run_dir.name)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    a.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(f"{stem}.csv"), buf.getvalue())
    plot(rows, references, Path(f"{stem}.png"), a.title)
    print(f"[results] wrote {stem}.csv and {stem}.png ({len(rows)} validations)")
    for line in verdicts(a.run_dir):
        print(f"[results] {line}")


def verdicts(run_dir: Path) -> list[str]:
    """The run against its LRA row's expected test accuracy (``paper.EXPECTED``), once it has finished."""
    from .collect import load_run
    from .expected import run_verdict, sentence
    if not (run_dir / "DONE").is_file():
        return ["not finished (no DONE marker): not judged against an expected number"]
    rec = load_run(run_dir)
    out = []
    for key, e in paper.expected_rows(rec).items():
        x, verdict = run_verdict(e, rec)
        out.append(f"{key}: " + (verdict if x is None else sentence(e, x, verdict)))
    return out or ["no row of vqformer.results.paper.EXPECTED selects this run's config"]
