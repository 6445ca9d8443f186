"""Finished runs as flat records, from run directories (config.yaml + DONE + CSV log) or from W&B.

A record holds what the tables need: the knobs that tell arms apart, the seed, the final validation
metrics and the logged curves (validation bits per byte and codebook usage against the optimizer update).
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

from omegaconf import OmegaConf

from ..lit.csv_log import update_index, updates_per_batch

EVALS = ("eval_validation.json", "eval_test.json")   # `python -m vqformer.evaluate` on the run's own data
ARCHIVED = ("config.yaml", "DONE", "git.json", "csv/version_0/metrics.csv", *EVALS)   # what `archive` keeps of a run
CURVES = ("val/bpb", "train/bpb", "vq/code_perplexity", "vq/unused_codes")


def num(x: str | None) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def _variant(model: dict) -> str:
    """The architecture, with the SSM named for LongVQ (``longvq/ssm=none`` is its no-SSM ablation)."""
    arch = model.get("arch") or "transformer_vq"
    return arch if model.get("ssm") is None else f"{arch}/ssm={model['ssm']}"


def _record(cfg: dict, final: dict, rows: list[dict], source: str, scores: dict | None = None) -> dict:
    model, data = cfg.get("model", {}), cfg.get("data", {})
    per_batch, final_step = updates_per_batch(cfg), final.get("step")
    curves = {k: [(update_index(int(float(r["step"])), per_batch, final_step), num(r[k]))
                  for r in rows if num(r.get(k)) is not None] for k in CURVES}
    return {
        "source": source, "name": cfg.get("name"), "tags": list(cfg.get("tags") or []), "seed": cfg.get("seed"),
        "task": cfg.get("task", "lm"), "data": data.get("name"), "data_task": data.get("task"),
        "data_source": data.get("source"), "arch": model.get("arch"), "d_model": model.get("d_model"),
        "ssm": model.get("ssm"), "attn_type": model.get("attn_type"), "variant": _variant(model),
        "head_type": model.get("head_type"), "n_code": model.get("n_code"), "block_len": model.get("block_len"),
        "agg_cache": model.get("agg_cache"), "sequence_len": cfg.get("sequence_len"),
        "step": final.get("step"), "val_bpb": final.get("val/bpb"), "val_loss": final.get("val/loss"),
        "curves": curves,
        "scores": scores or {},   # whole-split scores of `vqformer.evaluate` (e.g. test/bpb), when it was run
    }


def archive_parser(family: str, doc: str | None) -> argparse.ArgumentParser:
    """The options every archived family shares: where runs live, the committed archive, the output folder."""
    ap = argparse.ArgumentParser(prog=f"python -m vqformer.results {family}", description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--logs", type=Path, default=Path("logs"), help="where training runs live (default: logs)")
    ap.add_argument("--archive", type=Path, default=Path(f"experiments/{family}/runs"),
                    help=f"committed copy of the runs' logs (default: experiments/{family}/runs)")
    ap.add_argument("--out", type=Path, default=Path(f"logs/results/{family}"),
                    help=f"tables and plots go here (default: logs/results/{family})")
    ap.add_argument("--archive-new", action="store_true",
                    help="first copy the runs found under --logs into --archive (the committed record)")
    return ap


def runs_named(roots: list[Path], name: str) -> list[Path]:
    """The finished runs under the roots whose experiment ``name`` is this one."""
    return [d for d in run_dirs(roots) if OmegaConf.load(d / "config.yaml").get("name") == name]


def with_archive(new: list[Path], archived: list[Path]) -> list[Path]:
    """The runs found under logs/, then the archived runs of other folder names (a rerun replaces its record)."""
    names = {d.name for d in new}
    return new + [d for d in archived if d.name not in names]


def run_dirs(roots: list[Path]) -> list[Path]:
    """Every finished run directory (one with a DONE marker) under the roots."""
    found = set()
    for root in roots:
        if root.exists():
            found.update(p.parent for p in root.rglob("DONE") if (p.parent / "config.yaml").exists())
    return sorted(found)


def load_run(run_dir: Path) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=False)
    final = json.loads((run_dir / "DONE").read_text())
    log = run_dir / "csv" / "version_0" / "metrics.csv"
    rows = list(csv.DictReader(log.open())) if log.exists() else []
    scores = {}
    for name in EVALS:
        if (run_dir / name).is_file():
            scores.update(json.loads((run_dir / name).read_text())["metrics"])
    return _record(cfg, final, rows, str(run_dir), scores)


def archive(run_dir: Path, dest_root: Path) -> Path:
    """Copy a finished run's small files (no checkpoints) to ``dest_root/<job folder>``."""
    dest = dest_root / run_dir.name
    for rel in ARCHIVED:
        src = run_dir / rel
        if src.exists():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def load_wandb(project: str, entity: str | None = None, api=None) -> list[dict]:
    """Finished runs of a W&B project (their config is the composed run config the logger uploaded)."""
    if api is None:
        import wandb
        api = wandb.Api()
    path = f"{entity}/{project}" if entity else project
    records = []
    for run in api.runs(path):
        if run.state != "finished":
            continue
        rows = [{"step": str(r.get("trainer/global_step", r.get("_step", 0))),
                 **{k: (None if r.get(k) is None else str(r[k])) for k in CURVES}} for r in run.scan_history()]
        # The DONE marker's "step" is the trainer's final global step, which W&B keeps as trainer/global_step.
        step = run.summary.get("step", run.summary.get("trainer/global_step"))
        final = {"step": step, "val/bpb": run.summary.get("val/bpb"), "val/loss": run.summary.get("val/loss")}
        records.append(_record(dict(run.config), final, rows, f"wandb:{path}/{run.id}"))
    return records
