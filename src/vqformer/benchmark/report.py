"""Results on disk: ``points.csv``, ``results.json`` and ``table.md`` (VQ / quadratic ratios and targets).

Spec: ``shared/research/transformer_vq.md`` §5.1 (the paper's throughput claims: > 3× at 8k and > 12× at
32k for SHGA, > 6× at 8k for MQA / MHA, similar throughput up to 131k) and §5.4 (protocol), §3.2 (the
per-block cost behind the FLOP ratio ``(T/2)/(S + 2L)``, see ``grid.py``).

Targets (from the benchmark issue), each marked met / not met / not measured:

* kernel: VQ/SDPA speed ratio >= 80% of the FLOP ratio at every length where SDPA was measured
  (S = L = 512: >= 2.1× at 8k, >= 8.5× at 32k, >= 34× at 131k); reported the same way against the
  materialised quadratic arm, the paper's kind of baseline;
* kernel: VQ tokens/s at 131k >= 0.8 × its tokens/s at 4k (linear scaling);
* model: VQ/full training-step ratio next to the paper's (SHGA > 3× at 8k, > 12× at 32k; MQA/MHA > 6× at 8k).
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from .grid import flop_ratio

COLUMNS = ["level", "config", "arm", "attn", "head_type", "T", "batch", "tokens", "status", "n_warmup",
           "n_repeat", "time_median_s", "time_min_s", "time_max_s", "tokens_per_s", "flops", "flops_per_s",
           "frac_of_matmul_peak", "mem_base_mb", "mem_peak_mb", "mem_delta_mb", "mem_method",
           "minor_faults_per_step"]
KERNEL_FRACTION = 0.8                    # of the FLOP ratio
SCALING = (4096, 131072, 0.8)            # tokens/s at 131k >= 0.8 × at 4k
HEAD_ORDER = {"": 0, "shga": 1, "mqa": 2, "mha": 3}
PAPER_MODEL = {"shga": {8192: 3.0, 32768: 12.0}, "mqa": {8192: 6.0}, "mha": {8192: 6.0}}


def _ok(r: dict) -> bool:
    return r.get("status") == "ok" and r.get("tokens_per_s") is not None


def ratios(points: list[dict], params: dict[str, dict]) -> list[dict]:
    """VQ over every baseline arm of the same level/config/head type and length (both measured)."""
    out = []
    by_key = {}
    for r in points:   # kernel-level VQ variants (vq_flex, ...) are keyed by arm, everything else by attn
        key = r["arm"] if r["level"] == "kernel" and str(r.get("arm", "")).startswith("vq_") else r["attn"]
        by_key.setdefault((r["level"], r["config"], r["head_type"], r["T"]), {})[key] = r
    order = lambda kv: (kv[0][0], kv[0][1], HEAD_ORDER.get(kv[0][2], 9), kv[0][2], kv[0][3])
    for (level, config, head, T), arms in sorted(by_key.items(), key=order):
        p = params.get(config, {})
        fr = flop_ratio(T, p["n_code"], p["block_len"]) if "n_code" in p else None
        is_vq = lambda n: n == "vq" or n.startswith("vq_")
        vqs = [(n, a) for n, a in arms.items() if is_vq(n)] or [("vq", None)]
        for name, vq, base, r in [(n, a, b, r) for n, a in vqs for b, r in arms.items() if not is_vq(b)]:
            entry = {"level": level, "config": config if name == "vq" else f"{config}:{name}", "head_type": head,
                     "T": T, "baseline": base, "flop_ratio": fr}
            if vq is not None and _ok(vq) and _ok(r):
                entry.update(vq_tokens_per_s=vq["tokens_per_s"], base_tokens_per_s=r["tokens_per_s"],
                             ratio=vq["tokens_per_s"] / r["tokens_per_s"])
                if fr and level == "kernel":    # layer/model add projections that cost the same in both arms
                    entry["frac_of_flop_ratio"] = entry["ratio"] / fr
            else:
                why = [x["status"] for x in (vq, r) if x is not None and not _ok(x)]
                entry["ratio"] = None
                entry["why"] = why[0] if why else "no VQ arm"
            out.append(entry)
    return out


def targets(points: list[dict], rat: list[dict]) -> list[dict]:
    """One row per checked target: ``{target, required, measured, status}``."""
    rows = []
    for base in ("sdpa", "quadratic"):
        for e in [e for e in rat if e["level"] == "kernel" and e["baseline"] == base]:
            if e.get("ratio") is None or not e.get("flop_ratio"):
                continue
            need = KERNEL_FRACTION * e["flop_ratio"]
            arm = "VQ" if e["config"] == "kernel" else e["config"].split(":", 1)[1]
            rows.append({"target": f"kernel {arm}/{base} at T={e['T']} >= 80% of FLOP ratio {e['flop_ratio']:.2f}",
                         "required": need, "measured": e["ratio"], "status": "met" if e["ratio"] >= need else "not met"})
    lo, hi, frac = SCALING
    vq = {r["T"]: r for r in points if r["level"] == "kernel" and r.get("arm", r["attn"]) == "vq"}
    t = {"target": f"kernel VQ tokens/s at T={hi} >= {frac} x tokens/s at T={lo}", "required": frac}
    if lo in vq and hi in vq and _ok(vq[lo]) and _ok(vq[hi]):
        t["measured"] = vq[hi]["tokens_per_s"] / vq[lo]["tokens_per_s"]
        t["status"] = "met" if t["measured"] >= frac else "not met"
    else:
        missing = [T for T in (lo, hi) if T not in vq or not _ok(vq[T])]
        t["measured"] = None
        t["status"] = "not measured (" + ", ".join(
            f"T={T}: {vq[T]['status'] if T in vq else 'not in the grid'}" for T in missing) + ")"
    rows.append(t)
    model = [e for e in rat if e["level"] == "model" and e["baseline"] == "full"]
    configs = sorted({e["config"] for e in model})
    for config in configs:
        for head, req in PAPER_MODEL.items():
            for T, need in req.items():
                e = next((x for x in model if x["config"] == config and x["head_type"] == head and x["T"] == T), None)
                if e is None:
                    continue                 # this head type / length is not part of the grid
                row = {"target": f"model {config}/{head} VQ/full at T={T} > {need:g}x (paper)", "required": need,
                       "measured": e.get("ratio")}
                row["status"] = ("not measured (" + e.get("why", "") + ")" if e.get("ratio") is None
                                 else "met" if e["ratio"] > need else "not met")
                rows.append(row)
    return rows


def _fmt(x, spec=".3g", none="–"):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return none
    return format(x, spec)


def markdown(result: dict) -> str:
    meta, pts, rat, tg = result["meta"], result["points"], result["ratios"], result["targets"]
    mm = result.get("matmul") or {}
    lines = [f"# Throughput: {meta.get('device_tag', meta['device'])}", "",
             f"- command: `{meta.get('command', '?')}`",
             f"- commit: `{meta.get('git', {}).get('commit')}`" + (" (working tree dirty)" if meta.get("git", {}).get("dirty") else ""),
             f"- machine: {meta.get('cpu_model')} ({meta.get('cpu_count')} cores), {meta.get('gpu', 'no GPU')}, "
             f"torch {meta.get('torch')}, {meta.get('torch_threads')} thread(s), dtype {meta.get('dtype')}, "
             f"device {meta['device']}",
             f"- dense matmul peak ({mm.get('n')}³, {mm.get('dtype')}): {_fmt((mm.get('flops_per_s') or 0) / 1e9, '.1f')} GFLOP/s",
             f"- timing: median of the timed repeats after warm-up (shared machine: medians, noisy); "
             f"peak memory: {meta.get('mem_method', '?')}, increase over the memory held before the step",
             f"- load average at start / end: {meta.get('loadavg_start')} / {meta.get('loadavg_end')}", "",
             "## Targets", "", "| target | required | measured | status |", "|---|---|---|---|"]
    for t in tg:
        lines.append(f"| {t['target']} | {_fmt(t['required'])} | {_fmt(t.get('measured'))} | **{t['status']}** |")
    for level, title in (("kernel", "Kernel (attention op, forward + backward)"),
                         ("layer", "Layer (one AttentionUnit, forward + backward)"),
                         ("model", "Model (full training step)")):
        lr = [e for e in rat if e["level"] == level]
        if not lr:
            continue
        lines += ["", f"## {title}", "", "| config | head | T | baseline | FLOP ratio | VQ tok/s | baseline tok/s | "
                  "VQ/baseline | % of FLOP ratio |", "|---|---|---|---|---|---|---|---|---|"]
        for e in lr:
            lines.append(f"| {e['config']} | {e['head_type'] or '–'} | {e['T']} | {e['baseline']} | {_fmt(e['flop_ratio'], '.2f')} | "
                         f"{_fmt(e.get('vq_tokens_per_s'), '.4g')} | {_fmt(e.get('base_tokens_per_s'), '.4g')} | "
                         f"{_fmt(e.get('ratio'), '.2f', e.get('why', '–'))} | "
                         f"{_fmt(100 * e['frac_of_flop_ratio'] if e.get('frac_of_flop_ratio') else None, '.0f')} |")
    lines += ["", "## Every point", "", "| level | arm | T | status | s/step (median) | tok/s | GFLOP/s (% matmul peak) | "
              "mem +MiB | page faults/step |", "|---|---|---|---|---|---|---|---|---|"]
    for r in pts:
        fl = (f"{r['flops_per_s'] / 1e9:.1f} ({100 * r['frac_of_matmul_peak']:.0f}%)"
              if r.get("flops_per_s") and r.get("frac_of_matmul_peak") else "–")
        lines.append(f"| {r['level']} | {r['arm']} | {r['T']} | {r['status']} | {_fmt(r.get('time_median_s'), '.4g')} | "
                     f"{_fmt(r.get('tokens_per_s'), '.4g')} | {fl} | {_fmt(r.get('mem_delta_mb'), '.0f')} | "
                     f"{_fmt(r.get('minor_faults_per_step'), '.3g')} |")
    return "\n".join(lines) + "\n"


def write(result: dict, out_dir: Path) -> dict[str, Path]:
    """Write points.csv, results.json and table.md into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "points.csv", "json": out_dir / "results.json", "table": out_dir / "table.md"}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in result["points"]:
            w.writerow({k: r.get(k, "") for k in COLUMNS})
    paths["json"].write_text(json.dumps(result, indent=1, default=str) + "\n")
    paths["table"].write_text(markdown(result))
    return paths
