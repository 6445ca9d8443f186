"""Copy a classification run's validation curve to a CSV and plot it (with horizontal reference lines).

    python experiments/lra/summarize.py RUN_DIR OUT_STEM [--ref NAME=ACC ...]
writes OUT_STEM.csv (step, val/acc, val/loss, train/loss averaged since the previous validation) and OUT_STEM.png.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("out_stem")
    ap.add_argument("--ref", action="append", default=[])
    ap.add_argument("--title", default="")
    a = ap.parse_args()
    rows = list(csv.DictReader(open(Path(a.run_dir) / "csv" / "version_0" / "metrics.csv")))
    out, train = [], []
    for r in rows:
        if r.get("train/loss"):
            train.append(float(r["train/loss"]))
        if r.get("val/acc") and (train or not out):   # the runner's final re-validation repeats the last one
            out.append({"step": int(r["step"]) + 1, "val_acc": float(r["val/acc"]), "val_loss": float(r["val/loss"]),
                        "train_loss": sum(train) / max(1, len(train))})
            train = []
    with open(f"{a.out_stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(out[0]))
        w.writeheader()
        w.writerows(out)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([o["step"] for o in out], [o["val_acc"] for o in out], "o-", label="LongVQ (validation)")
    for i, ref in enumerate(a.ref):
        name, acc = ref.split("=")
        ax.axhline(float(acc), ls="--", color="grey" if "chance" in name else f"C{i + 1}", label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("accuracy")
    ax.set_title(a.title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(f"{a.out_stem}.png", dpi=120)
    print(f"wrote {a.out_stem}.csv and {a.out_stem}.png ({len(out)} validations)")


if __name__ == "__main__":
    main()
