"""Bits per byte against evaluation context length: ``python -m vqformer.results longctx`` (docs/long_context.md).

    make longctx                                            # -> logs/results/longctx/
    python -m vqformer.results longctx --runs logs/multiruns/tvq_mini --match '*-S64-L64-*' \
        --contexts 256,1024,4096,16384,65536 --limit-bytes 131072 --split-contexts 256,whole \
        --max-full-context 16384 [--out logs/results/longctx]

Every finished run (a DONE marker) under --runs whose folder name matches --match is scored by
``vqformer.lit.runner.evaluate``, the function behind ``python -m vqformer.evaluate``: at context C the first
--limit-bytes of --split are cut in order into sequences of C bytes, each scored from an empty state in the run's
``eval_window`` with the attention state carried (docs/transformer_vq.md §3.5). --split-contexts are scored on
the whole split; ``whole`` is the split as one sequence. The start of a split need not be typical of all of it,
so the whole-split point is read against the whole split at the shortest context, not against the prefix curve.

Runs whose configs differ only in the seed form one curve (mean over seeds, min–max band). Full attention keeps
every earlier key in its carried state: time per byte and memory grow with the context, so contexts above
--max-full-context are not scored for it (marked in the table).

Each (checkpoint content, split, context, bytes) result is cached as one JSON file under ``<out>/cache/``,
written atomically: a rerun scores only what is missing, and a retrained checkpoint is scored again. Writes
``runs.csv`` (one row per run and point), ``summary.csv``, ``tables.md`` and ``longctx.png`` to --out.
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import hashlib
import io
import json
import os
import re
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from ..data.files import atomic_write_text
from ..lit.runner import WHOLE
from .collect import run_dirs

CONTEXTS = "256,1024,4096,16384,65536"
SPLIT_CONTEXTS = f"256,{WHOLE}"
LIMIT_BYTES = 131072
MAX_FULL_CONTEXT = 16384
BATCH_TOKENS = 32768
FIELDS = ["group", "run", "seed", "split", "context", "limit_bytes", "status", "bpb", "loss", "bytes", "batch_size",
          "seconds", "threads", "load_avg", "commit", "checkpoint_sha256"]


@dataclass(frozen=True)
class Point:
    """Sequences of ``context`` bytes (or ``whole``: one sequence) cut from the first ``limit`` bytes (None: all)."""
    context: int | str
    limit: int | None

    @property
    def key(self) -> str:
        return f"ctx{self.context}-" + (f"first{self.limit}" if self.limit else "all")

    @property
    def label(self) -> str:
        ctx = "one sequence" if self.context == WHOLE else f"{self.context:,}"
        return f"{ctx}, " + (f"first {self.limit:,} bytes" if self.limit else "whole split")


def parse_contexts(text: str, option: str) -> list[int | str]:
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        if item == WHOLE:
            out.append(WHOLE)
        elif item.isdigit() and int(item) > 0:
            out.append(int(item))
        else:
            raise SystemExit(f"{option}: {item!r} is neither a positive number of bytes nor {WHOLE}")
    return out


def points(contexts: list, limit: int | None, split_contexts: list) -> list[Point]:
    return list(dict.fromkeys([Point(c, limit) for c in contexts] + [Point(c, None) for c in split_contexts]))


def arm_label(model: dict) -> str:
    """The curve's name from the model config."""
    if model.get("layer_pattern"):
        return "-".join(model["layer_pattern"])
    attn = model.get("attn_type", "vq")
    if attn == "vq":
        return "Transformer-VQ, " + ("cache" if model.get("agg_cache", True) else "no cache")
    return "quadratic (full attention)" if attn == "full" else str(attn)


def is_quadratic(model: dict) -> bool:
    """Full attention somewhere: its carried state keeps every key seen."""
    return model.get("attn_type") == "full" or "full" in (model.get("layer_pattern") or [])


@dataclass
class Run:
    dir: Path
    cfg: object
    group: str
    seed: int
    quadratic: bool


def find_runs(roots: list[Path], match: str) -> list[Run]:
    """Finished language-model runs under ``roots`` whose folder name matches ``match``, grouped by their config
    without the seed (a label shared by two different configs gets the folder name, seed removed)."""
    found, keys = [], {}
    for d in run_dirs(roots):
        cfg = OmegaConf.load(d / "config.yaml")
        if cfg.get("task", "lm") != "lm" or not fnmatch.fnmatch(d.name, match):
            continue
        model = OmegaConf.to_container(cfg.model, resolve=True)
        ident = json.dumps({"model": model, "data": cfg.data.get("name"), "optim": OmegaConf.to_container(cfg.optim),
                            "T": cfg.sequence_len, "W": cfg.update_len, "steps": cfg.trainer.get("max_steps")},
                           sort_keys=True, default=str)
        keys.setdefault(arm_label(model), {}).setdefault(ident, re.sub(r"[-_,]?seed[=_]?\d+", "", d.name))
        found.append((d, cfg, model, ident))
    runs = []
    for d, cfg, model, ident in found:
        label = arm_label(model)
        group = label if len(keys[label]) == 1 else f"{label} ({keys[label][ident]})"
        runs.append(Run(d, cfg, group, int(cfg.seed), is_quadratic(model)))
    return sorted(runs, key=lambda r: (r.group, r.seed, str(r.dir)))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def scored_bytes(cfg, split: str, limit: int | None) -> int:
    """Bytes the split scores under ``limit`` (prepares the run's data, as evaluation would)."""
    from hydra.utils import instantiate
    data = instantiate(OmegaConf.merge(cfg.data, {"limit_eval_bytes": limit}))
    data.prepare_data()
    data.setup("validate" if split == "validation" else "test")
    return data.eval_tokens(split)


def over_guard(run: Run, point: Point, split: str, max_full: int | None) -> bool:
    """Whether the quadratic guard skips ``point`` for ``run`` (its longest sequence above ``max_full``)."""
    if not run.quadratic or not max_full:
        return False
    if point.context != WHOLE:
        longest = min(point.context, point.limit) if point.limit else point.context
    else:
        longest = point.limit or scored_bytes(run.cfg, split, None)
    return longest > max_full


def batch_size(run: Run, point: Point, batch_tokens: int) -> int:
    """Sequences per batch: the run's eval batch, fewer at long contexts (the sums do not depend on it)."""
    if point.context == WHOLE:
        return 1
    eval_batch = run.cfg.data.get("eval_batch_size") or run.cfg.data.batch_size
    return max(1, min(eval_batch, batch_tokens // point.context))


def score(run: Run, point: Point, split: str, ckpt: str, batch: int) -> dict:
    """One point through the evaluation entry point's function: bits per byte, loss, bytes scored."""
    from ..lit.runner import evaluate
    stage = "val" if split == "validation" else "test"
    m = evaluate(run.dir, split, ckpt, eval_sequence_len=point.context, limit_eval_bytes=point.limit,
                 batch_size=batch)
    return {"bpb": m[f"{stage}/bpb"], "loss": m[f"{stage}/loss"], "bytes": int(m[f"{stage}/tokens"])}


def measure(runs: list[Run], pts: list[Point], split: str, ckpt: str, cache: Path, max_full: int | None,
            batch_tokens: int) -> list[dict]:
    """One row per (run, point): from the cache, skipped by the guard, or scored now (and cached)."""
    import torch

    from ..lit.checkpoint import checkpoint_path
    from ..provenance import git_commit

    git = git_commit()
    commit = f"{git['commit']}{'+dirty' if git['dirty'] else ''}" if git["commit"] else None
    todo = []
    for run in runs:
        sha = file_sha256(checkpoint_path(run.dir, ckpt))
        for p in pts:
            todo.append((run, p, sha, cache / f"{run.dir.name}-{sha[:16]}" / f"{split}-{p.key}.json"))
    n_cached = sum(path.exists() for *_, path in todo)
    print(f"[longctx] {len(runs)} runs x {len(pts)} points: {n_cached} cached, {len(todo) - n_cached} to do",
          flush=True)
    rows = []
    for i, (run, p, sha, path) in enumerate(todo, 1):
        base = {"group": run.group, "run": str(run.dir), "seed": run.seed, "split": split, "context": p.context,
                "limit_bytes": p.limit or ""}
        head = f"[longctx] {i}/{len(todo)} {run.dir.name} at {p.label}"
        if path.exists():
            rows.append({**base, **json.loads(path.read_text())})
            print(f"{head}: {rows[-1]['bpb']:.4f} bpb (cached)", flush=True)
            continue
        if over_guard(run, p, split, max_full):
            rows.append({**base, "status": f"skipped: above --max-full-context={max_full}"})
            print(f"{head}: skipped (full attention above --max-full-context={max_full})", flush=True)
            continue
        batch = batch_size(run, p, batch_tokens)
        print(f"{head} (batch {batch}) ...", flush=True)
        load, t0 = os.getloadavg()[0], time.perf_counter()
        result = {"status": "ok", **score(run, p, split, ckpt, batch), "batch_size": batch,
                  "seconds": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads(),
                  "load_avg": round(load, 2), "commit": commit, "checkpoint_sha256": sha}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(result, indent=1))
        rows.append({**base, **result})
        print(f"{head}: {result['bpb']:.4f} bpb over {result['bytes']:,} bytes in {result['seconds']:.0f} s",
              flush=True)
    return rows


def summarize(rows: list[dict], pts: list[Point]) -> list[dict]:
    """Per group and point: seeds scored, mean, min and max bits per byte, bytes scored."""
    out = []
    for group in dict.fromkeys(r["group"] for r in rows):
        for p in pts:
            mine = [r for r in rows if r["group"] == group and r["context"] == p.context
                    and (r["limit_bytes"] or None) == p.limit]
            ok = [r for r in mine if r.get("status") == "ok"]
            v = [r["bpb"] for r in ok]
            out.append({"group": group, "context": p.context, "limit_bytes": p.limit or "", "label": p.label,
                        "seeds": len(v), "runs": len(mine), "bytes": ok[0]["bytes"] if ok else "",
                        "mean": statistics.fmean(v) if v else None, "min": min(v, default=None),
                        "max": max(v, default=None)})
    return out


def to_csv(rows: list[dict], fields: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in fields} for r in rows)
    return buf.getvalue()


def to_markdown(summary: list[dict], pts: list[Point]) -> str:
    groups = list(dict.fromkeys(s["group"] for s in summary))
    if not groups:
        return "No finished runs matched.\n"
    cell = {(s["group"], s["label"]): s for s in summary}
    lines = ["| context (bytes per sequence), bytes scored | " + " | ".join(groups) + " |",
             "|---|" + "---|" * len(groups)]
    for p in pts:
        cells = []
        for g in groups:
            s = cell[(g, p.label)]
            if s["mean"] is None:
                cells.append("not scored (above --max-full-context)" if s["runs"] else "")
            else:
                spread = f" [{s['min']:.3f}–{s['max']:.3f}]" if s["seeds"] > 1 else ""
                cells.append(f"{s['mean']:.3f}{spread} ({s['seeds']})")
        n = next((s["bytes"] for g in groups if (s := cell[(g, p.label)])["bytes"]), None)
        label = p.label + (f" ({n:,} bytes)" if p.limit is None and n else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def x_of(s: dict) -> int:
    """Bytes per sequence of a summary point: one whole sequence sits at the bytes it scored."""
    return s["bytes"] if s["context"] == WHOLE else min(s["context"], s["bytes"])


def plot(summary: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    groups = list(dict.fromkeys(s["group"] for s in summary))
    ticks = {}
    for color, g in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4, groups):
        for prefix in (True, False):
            pts = sorted((s for s in summary if s["group"] == g and s["mean"] is not None
                          and bool(s["limit_bytes"]) == prefix), key=x_of)
            xs = [x_of(s) for s in pts]
            if not pts:
                continue
            ys = [s["mean"] for s in pts]
            ticks.update({x: f"{x:,}" + ("\none seq." if s["context"] == WHOLE else "") for x, s in zip(xs, pts)})
            if prefix:
                limit = pts[0]["limit_bytes"]
                ax.plot(xs, ys, "o-", color=color, label=f"{g} (first {limit:,} bytes)")
                ax.fill_between(xs, [s["min"] for s in pts], [s["max"] for s in pts], color=color, alpha=0.15)
            else:
                err = [[y - s["min"] for y, s in zip(ys, pts)], [s["max"] - y for y, s in zip(ys, pts)]]
                ax.errorbar(xs, ys, yerr=err, fmt="s--", color=color, mfc="none", capsize=3,
                            label=f"{g} (whole split)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(ticks), list(ticks.values()), fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("evaluation context (bytes per sequence, state carried across windows)")
    ax.set_ylabel("bits per byte (mean over seeds, min–max)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vqformer.results longctx", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, nargs="+", default=[Path("logs/multiruns/tvq_mini")],
                    help="folders holding run directories (default: logs/multiruns/tvq_mini)")
    ap.add_argument("--match", default="*-S64-L64-*",
                    help="glob on the run folder name (default: '*-S64-L64-*', the mini sweep's cache and "
                         "quadratic arms); '*' for every run")
    ap.add_argument("--contexts", default=CONTEXTS, help=f"bytes per sequence on the first --limit-bytes "
                    f"(default: {CONTEXTS}); {WHOLE}: those bytes as one sequence")
    ap.add_argument("--limit-bytes", type=int, default=LIMIT_BYTES,
                    help=f"score the first N bytes of the split at --contexts (default: {LIMIT_BYTES}); 0: all")
    ap.add_argument("--split-contexts", default=SPLIT_CONTEXTS,
                    help=f"bytes per sequence on the whole split (default: {SPLIT_CONTEXTS}); '' for none")
    ap.add_argument("--max-full-context", type=int, default=MAX_FULL_CONTEXT,
                    help="longest sequence scored for runs with full attention, whose carried state keeps every "
                         f"key (default: {MAX_FULL_CONTEXT}); 0: no limit")
    ap.add_argument("--split", default="validation", choices=["validation", "test"])
    ap.add_argument("--ckpt", default="last", help="checkpoint of each run (default: last)")
    ap.add_argument("--batch-tokens", type=int, default=BATCH_TOKENS,
                    help=f"bytes per evaluation batch at long contexts (memory; default: {BATCH_TOKENS})")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: by cores and load)")
    ap.add_argument("--out", type=Path, default=Path("logs/results/longctx"),
                    help="tables, plot and cache (default: logs/results/longctx)")
    args = ap.parse_args(argv)
    limit = args.limit_bytes or None
    if limit is not None and limit < 0:
        raise SystemExit(f"--limit-bytes={args.limit_bytes} must be a positive number of bytes or 0 (all)")
    if limit and args.split == "test":
        raise SystemExit("--split test: the test split is always scored whole; add --limit-bytes 0")
    if args.batch_tokens < 1 or args.max_full_context < 0:
        raise SystemExit("--batch-tokens must be >= 1 and --max-full-context >= 0")
    pts = points(parse_contexts(args.contexts, "--contexts"), limit,
                 parse_contexts(args.split_contexts, "--split-contexts"))

    runs = find_runs(args.runs, args.match)
    print(f"[longctx] {len(runs)} finished runs under {', '.join(map(str, args.runs))} matching {args.match!r}",
          flush=True)
    for run in runs:   # a sequence is scored in whole windows
        bad = [p.context for p in pts if p.context != WHOLE and p.context % run.cfg.eval_window]
        if bad:
            raise SystemExit(f"--contexts/--split-contexts: {bad} not a multiple of eval_window="
                             f"{run.cfg.eval_window} of {run.dir}")
    if runs:
        from ..threads import set_threads
        set_threads(args.threads)
    rows = measure(runs, pts, args.split, args.ckpt, args.out / "cache", args.max_full_context or None,
                   args.batch_tokens)
    summary = summarize(rows, pts)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "runs.csv", to_csv(rows, FIELDS))
    atomic_write_text(args.out / "summary.csv", to_csv(summary, ["group", "context", "limit_bytes", "seeds",
                                                                 "bytes", "mean", "min", "max"]))
    data = ", ".join(sorted({str(r.cfg.data.get("name")) for r in runs})) or "-"
    command = "python -m vqformer.results longctx " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
    header = (f"# Bits per byte against evaluation context\n\nGenerated by `{command.strip()}` from the runs' "
              f"checkpoints ({data}, {args.split} split). Each cell: mean over seeds [min–max] (seeds). A sequence "
              "is scored from an empty state in the run's eval_window with the state carried; 'one sequence' is "
              "everything scored as one sequence. Commit, seconds, threads and load average of every point are in "
              "runs.csv (a cached point keeps those of the call that scored it). Do not edit by hand.\n\n")
    atomic_write_text(args.out / "tables.md", header + to_markdown(summary, pts))
    if any(s["mean"] is not None for s in summary):
        plot(summary, args.out / "longctx.png", f"Bits per byte against evaluation context ({data}, {args.split})")
    print(f"[longctx] wrote {args.out / 'tables.md'}", flush=True)
