"""The compressive-cache mechanism experiment: ``python -m vqformer.results mechanism``.

    python -m vqformer.results mechanism                                            # -> logs/results/mechanism/
    python -m vqformer.results mechanism --archive-new --out experiments/mechanism  # commit the record

Reads the finished runs of ``experiment=tvq/mechanism_cache`` (the committed archive
``experiments/mechanism/runs`` and ``logs/``; a run in logs/ replaces the archived run of the same folder
name). Each run's final test accuracy (``val/acc`` of its closing validation) per arm and seed, their mean,
the paired difference cache - no cache seed by seed with a 95% t interval, the chance level computed from the
data (a value is uniform over the V/2 value ids), and a verdict for each of the predictions written in the
experiment file before running. Writes ``mechanism.csv``, ``tables.md`` and ``mechanism_acc.png`` (validation
accuracy against updates per arm, the chance level as a line).

Where a run still has its checkpoint (runs under logs/), its test segment is scored once more and the
result kept beside the run (``recall_detail.json``, archived with it): the accuracy again (it must equal the
logged one) and how often the predicted value is one of the example's D context values at all, i.e. whether
anything from more than ``query_gap`` tokens back reached the prediction (a model blind to the values lands
in the set with probability at most D / (V/2)).
"""
from __future__ import annotations

import csv
import io
import json
import math
import shutil
import statistics
from pathlib import Path

from omegaconf import OmegaConf

from ..data.files import atomic_write_text
from .collect import archive, archive_parser, num, runs_named, with_archive
from .stats import paired_ci

NAME = "tvq/mechanism_cache"
# The predictions of conf/experiment/tvq/mechanism_cache.yaml, written before the runs.
PREDICTED_CACHE_MIN = 0.8          # cache arm: test accuracy at least this (mean over seeds)
CHANCE_SDS = 3                     # no-cache arm: every seed within chance + 3 binomial sd of the test queries
ARMS = {True: "cache", False: "no cache"}
DETAIL = "recall_detail.json"


def load(run_dir: Path) -> dict:
    """Arm, seed, final test accuracy, chance level and validation accuracy per number of updates trained."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    final = json.loads((run_dir / "DONE").read_text())
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    curve = {}
    for r in rows:
        if (v := num(r.get("val/acc"))) is not None:
            # Lightning logs a validation inside fit at the last update's index (after k updates: k - 1), the
            # closing validation at the final global step; both are keyed by updates trained.
            step = int(r["step"])
            curve[step if step == final.get("step") else step + 1] = v
    queries = sum(s.num_examples * s.num_kv_pairs for s in cfg.data.test_segments)
    d = cfg.data.test_segments[0].num_kv_pairs
    return {"dir": run_dir, "agg_cache": bool(cfg.model.agg_cache), "seed": int(cfg.seed),
            "acc": final.get("val/acc"), "steps": final.get("step"), "curve": curve,
            "chance": 2 / cfg.data.vocab_size, "queries": queries, "d": d, "gap": cfg.data.get("query_gap", 0),
            "block_len": cfg.model.get("block_len"),
            "detail": json.loads((run_dir / DETAIL).read_text()) if (run_dir / DETAIL).exists() else None}


def score_detail(run_dir: Path, batch: int = 100) -> dict:
    """Accuracy and in-set rate of the run's checkpoint on its own test segments (the logged validation's data)."""
    import torch

    from ..data.mqar import IGNORE, MQARSegment, load_segment
    from ..lit.recall_module import RecallModule

    cfg = OmegaConf.load(run_dir / "config.yaml")
    d = cfg.data
    module = RecallModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu").eval()
    correct = in_set = n = 0
    for i, seg in enumerate(d.test_segments):
        x, y = load_segment(None, MQARSegment(**seg), "test", i, vocab_size=d.vocab_size, seed=cfg.seed,
                            power_a=d.power_a, num_passes=d.num_passes, random_non_queries=d.random_non_queries,
                            query_gap=d.get("query_gap", 0))
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        for b0 in range(0, len(x), batch):
            xb, yb = x[b0:b0 + batch], y[b0:b0 + batch]
            with torch.no_grad():
                logits, _ = module.model(xb)
            rows, pos = (yb != IGNORE).nonzero(as_tuple=True)
            pred = logits[rows, pos].argmax(-1)
            values = xb[:, 1:2 * seg.num_kv_pairs:2]                       # the context's values v1 ... vD
            correct += int((pred == yb[rows, pos]).sum())
            in_set += int((pred[:, None] == values[rows]).any(1).sum())
            n += len(pred)
    out = {"acc": correct / n, "in_set": in_set / n, "queries": n,
           "in_set_chance": cfg.data.test_segments[0].num_kv_pairs / (d.vocab_size // 2)}
    atomic_write_text(run_dir / DETAIL, json.dumps(out, indent=1))
    return out


def chance_band(runs: list[dict]) -> tuple[float, float]:
    """Chance accuracy (1 / number of value ids) and CHANCE_SDS binomial sd of it over the test queries."""
    p, n = runs[0]["chance"], min(r["queries"] for r in runs)
    return p, CHANCE_SDS * math.sqrt(p * (1 - p) / n)


def summarize(runs: list[dict]) -> dict:
    """Per arm the accuracy by seed and its mean/min/max; the paired difference; chance; the verdicts."""
    by_arm = {arm: {r["seed"]: r["acc"] for r in runs if r["agg_cache"] == arm} for arm in ARMS}
    arms = {arm: {"seeds": accs, "mean": statistics.fmean(accs.values()), "min": min(accs.values()),
                  "max": max(accs.values())} for arm, accs in by_arm.items() if accs}
    for arm, a in arms.items():
        details = [r["detail"] for r in runs if r["agg_cache"] == arm and r["detail"]]
        a["in_set"] = statistics.fmean(x["in_set"] for x in details) if details else None
        a["in_set_seeds"] = len(details)
    out = {"arms": arms, "diff": None, "chance": None, "verdicts": []}
    if not runs:
        return out
    p, band = chance_band(runs)
    out["chance"] = (p, band)
    out["in_set_chance"] = runs[0]["d"] * p
    paired = sorted(set(by_arm[True]) & set(by_arm[False]))
    if len(paired) >= 2:
        diffs = {s: by_arm[True][s] - by_arm[False][s] for s in paired}
        lo, hi = paired_ci(list(diffs.values()))
        out["diff"] = {"seeds": diffs, "mean": statistics.fmean(diffs.values()), "lo": lo, "hi": hi}
    v = out["verdicts"]
    if True in arms:
        ok = arms[True]["mean"] >= PREDICTED_CACHE_MIN
        v.append((f"cache: accuracy >= {PREDICTED_CACHE_MIN}", f"mean {arms[True]['mean']:.3f}",
                  "agrees" if ok else "disagrees"))
    if False in arms:
        ok = all(a <= p + band for a in by_arm[False].values())
        v.append((f"no cache: at chance (every seed <= {p:.3f} + {band:.3f})",
                  f"max {arms[False]['max']:.3f}", "agrees" if ok else "disagrees"))
    if out["diff"]:
        d = out["diff"]
        verdict = "agrees" if d["lo"] > 0 else ("disagrees" if d["hi"] < 0 else "unresolved")
        v.append(("cache - no cache > 0 (95% t interval above 0)",
                  f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]", verdict))
    return out


def to_markdown(s: dict) -> str:
    if not s["arms"]:
        return "No finished mechanism runs.\n"
    seeds = sorted({seed for a in s["arms"].values() for seed in a["seeds"]})
    head = ["arm"] + [f"seed {x}" for x in seeds] + ["mean [min, max]", "prediction is one of the D values"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, a in s["arms"].items():
        cells = [f"{a['seeds'][x]:.3f}" if x in a["seeds"] else "" for x in seeds]
        in_set = "" if a["in_set"] is None else f"{a['in_set']:.4f} ({a['in_set_seeds']} seeds)"
        lines.append(f"| {ARMS[arm]} | " + " | ".join(cells)
                     + f" | {a['mean']:.3f} [{a['min']:.3f}, {a['max']:.3f}] | {in_set} |")
    if s["diff"]:
        d = s["diff"]
        cells = [f"{d['seeds'][x]:+.3f}" if x in d["seeds"] else "" for x in seeds]
        lines.append("| cache - no cache (paired) | " + " | ".join(cells)
                     + f" | {d['mean']:+.3f}, 95% t interval [{d['lo']:+.3f}, {d['hi']:+.3f}] | |")
    p, band = s["chance"]
    lines.append(f"| chance (1 / value ids) | " + " | ".join("" for _ in seeds) + f" | {p:.3f} (+{band:.3f} = "
                 f"{CHANCE_SDS} binomial sd) | {s['in_set_chance']:.3f} (D / value ids) |")
    lines += ["", "| prediction (written before running) | measured | verdict |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in s["verdicts"]]
    return "\n".join(lines) + "\n"


def to_csv(runs: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["arm", "agg_cache", "seed", "steps", "test_acc", "chance", "in_set"])
    for r in sorted(runs, key=lambda r: (not r["agg_cache"], r["seed"])):
        w.writerow([ARMS[r["agg_cache"]], r["agg_cache"], r["seed"], r["steps"], r["acc"], r["chance"],
                    "" if r["detail"] is None else r["detail"]["in_set"]])
    return buf.getvalue()


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, label in ARMS.items():
        recs = [r for r in runs if r["agg_cache"] == arm]
        steps = sorted(set.intersection(*(set(r["curve"]) for r in recs))) if recs else []
        if not steps:
            continue
        vals = [[r["curve"][t] for r in recs] for t in steps]
        line, = ax.plot(steps, [statistics.fmean(v) for v in vals], marker="o", ms=3,
                        label=f"{label} ({len(recs)} seeds)")
        ax.fill_between(steps, [min(v) for v in vals], [max(v) for v in vals], color=line.get_color(), alpha=0.2)
    p, band = chance_band(runs)
    ax.axhline(p, color="black", ls="--", lw=1, label=f"chance 1/{round(1 / p)}")
    d = runs[0]["d"]
    ax.axhline(1 / d, color="grey", ls=":", lw=1, label=f"1/D = 1/{d}: one of the D values, unbound")
    ax.set_xlabel("updates")
    ax.set_ylabel("test accuracy (query positions)")
    ax.set_ylim(0, 1)
    ax.set_title(f"MQAR, every pair > {runs[0]['gap']} tokens before its query; Transformer-VQ L = "
                 f"{runs[0]['block_len']}\n(mean over seeds, band: min-max)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def mechanism_runs(roots: list[Path]) -> list[Path]:
    return runs_named(roots, NAME)


def main(argv=None) -> None:
    ap = archive_parser("mechanism", __doc__)
    args = ap.parse_args(argv)

    new = mechanism_runs([args.logs])
    for run_dir in new:
        if not (run_dir / DETAIL).exists() and (run_dir / "checkpoints" / "last.ckpt").exists():
            print(f"[results] scoring {run_dir.name} from its checkpoint")
            score_detail(run_dir)
    if args.archive_new:
        for run_dir in new:
            dest = archive(run_dir, args.archive)
            if (run_dir / DETAIL).exists():
                shutil.copy2(run_dir / DETAIL, dest / DETAIL)
    runs = [load(d) for d in with_archive(new, mechanism_runs([args.archive]))]
    print(f"[results] {len(runs)} finished mechanism runs")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "mechanism.csv", to_csv(runs))
    header = ("# Compressive-cache mechanism experiment\n\nGenerated by `python -m vqformer.results mechanism` from "
              "the runs' DONE and metrics.csv: test accuracy on the query positions after the last update. "
              "Do not edit by hand.\n\n")
    atomic_write_text(args.out / "tables.md", header + to_markdown(summarize(runs)))
    if runs:
        plot(runs, args.out / "mechanism_acc.png")
    print(f"[results] wrote {args.out / 'tables.md'}")
