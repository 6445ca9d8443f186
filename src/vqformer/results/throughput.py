"""Throughput tables and plots from a benchmark record (``results.json`` of ``python -m vqformer.bench``):
VQ / quadratic ratios, the targets met or not, ``table.md`` and ``throughput.png``.

    python -m vqformer.results throughput [BENCH_DIR ...] [--out logs/results/throughput]

rebuilds each record's table and plot (default: every record under ``experiments/throughput/``) into
``<out>/<record folder>/``; ``python -m vqformer.bench`` calls ``write`` after measuring.

The paper's claims (``results/paper.py``; docs/transformer_vq.md): VQ over full attention > 3x at 8k and
> 12x at 32k for SHGA, > 6x at 8k for MQA / MHA. The per-block cost behind the FLOP ratio ``(T/2)/(S + 2L)`` is
``benchmark/grid.py``. Targets, each marked met / not met / not measured:

* kernel: VQ/SDPA speed ratio >= 80% of the FLOP ratio at every length where SDPA was measured
  (S = L = 512: >= 2.1x at 8k, >= 8.5x at 32k, >= 34x at 131k); reported the same way against the
  materialised quadratic arm, the paper's kind of baseline;
* kernel: VQ tokens/s at 131k >= 0.8 x its tokens/s at 4k (linear scaling);
* model: VQ/full training-step ratio next to the paper's.

The plot has logarithmic axes (base 2 for length): a linear-time arm is a flat tokens/s line and a memory line
of slope 1; a quadratic arm falls with slope -1 and rises with slope 2. Skipped points are left out (their
reasons are in ``table.md``).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, NullLocator  # noqa: E402

from ..benchmark import report  # noqa: E402
from ..benchmark.grid import flop_ratio, fmt_len  # noqa: E402
from ..data.files import atomic_write_text  # noqa: E402
from . import paper  # noqa: E402

KERNEL_FRACTION = 0.8                    # of the FLOP ratio
SCALING = (4096, 131072, 0.8)            # tokens/s at 131k >= 0.8 × at 4k
HEAD_ORDER = {"": 0, "shga": 1, "mqa": 2, "mha": 3}


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
        for head, req in paper.THROUGHPUT_SPEEDUP.items():
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
             f"- load average at start / end: {meta.get('loadavg_start')} / {meta.get('loadavg_end')}",
             *([f"- {meta['cpu_heap']}"] if meta.get("cpu_heap") else []), "",
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


def flop_params(bench: dict) -> dict[str, dict]:
    """n_code / block_len per config name (from the record's ``bench`` config), for each level's FLOP ratio."""
    out = {}
    if bench.get("kernel"):
        out["kernel"] = {"n_code": bench["kernel"]["n_code"], "block_len": bench["kernel"]["block_len"]}
    if bench.get("layer"):
        out["layer"] = dict(bench["layer"]["model"])
    if bench.get("model"):
        for name, c in bench["model"]["configs"].items():
            if c is not None:
                out[name] = dict(c["model"])
    return out


LEVEL_TITLES = {"kernel": "kernel (attention op)", "layer": "layer (AttentionUnit)", "model": "model (training step)"}
STYLE = {"vq": ("-", "o"), "sdpa": ("--", "s"), "quadratic": (":", "^"), "full": ("--", "s")}


def plot(points: list[dict], path: Path, title: str = "") -> Path:
    """Tokens/s and peak memory against sequence length, one line per arm, one row per level."""
    levels = [lv for lv in LEVEL_TITLES if any(r["level"] == lv for r in points)]
    fig, axes = plt.subplots(len(levels) or 1, 2, figsize=(12, 3.8 * max(1, len(levels))), squeeze=False)
    for i, level in enumerate(levels):
        rows = [r for r in points if r["level"] == level]
        arms = list(dict.fromkeys(r["arm"] for r in rows))
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        lengths = sorted({r["T"] for r in rows})
        n_pts = [0, 0]                          # points drawn per panel (log axes need at least one)
        for j, arm in enumerate(arms):
            ok = sorted((r for r in rows if r["arm"] == arm and r.get("status") == "ok"), key=lambda r: r["T"])
            attn = ok[0]["attn"] if ok else next(r["attn"] for r in rows if r["arm"] == arm)
            ls, mk = STYLE.get(attn, ("-", "o"))
            kw = dict(ls=ls, marker=mk, color=colors[j % len(colors)], label=arm, ms=4)
            axes[i, 0].plot([r["T"] for r in ok], [r["tokens_per_s"] for r in ok], **kw)
            mem = [r for r in ok if r.get("mem_delta_mb") not in (None, "")]
            axes[i, 1].plot([r["T"] for r in mem], [max(r["mem_delta_mb"], 1e-2) for r in mem], **kw)
            n_pts[0] += len(ok)
            n_pts[1] += len(mem)
        for k, ylabel in enumerate(("tokens / s", "peak memory over baseline (MiB)")):
            ax = axes[i, k]
            ax.set_xscale("log", base=2)
            if n_pts[k]:
                ax.set_yscale("log")
                lo, hi = ax.get_ylim()
                if hi < 10 * lo:               # show at least one decade: flat lines look flat
                    mid = (lo * hi) ** 0.5
                    ax.set_ylim(mid / 10 ** 0.5, mid * 10 ** 0.5)
            else:
                ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", va="center")
            ax.xaxis.set_major_locator(FixedLocator(lengths))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([fmt_len(t) for t in lengths])
            ax.set_xlabel("sequence length T")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{LEVEL_TITLES[level]}: {'throughput' if k == 0 else 'memory'}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
        if n_pts[0]:
            axes[i, 0].legend(fontsize=7, ncol=2 if len(arms) > 4 else 1)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(result: dict, out_dir: Path) -> dict[str, Path]:
    """Add ratios and targets to a benchmark record and write results.json, points.csv, table.md and
    throughput.png into ``out_dir``; returns their paths."""
    result["ratios"] = ratios(result["points"], flop_params(result["config"]))
    result["targets"] = targets(result["points"], result["ratios"])
    paths = report.write(result, out_dir)
    paths["table"] = atomic_write_text(out_dir / "table.md", markdown(result))
    meta = result["meta"]
    paths["png"] = plot(result["points"], out_dir / "throughput.png",
                        title=f"{meta.get('gpu') or meta.get('cpu_model')} · {meta.get('dtype')} · torch "
                              f"{meta.get('torch')} · {meta.get('torch_threads')} thread(s) · commit "
                              f"{meta.get('git', {}).get('commit')}")
    return paths


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vqformer.results throughput", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("records", nargs="*", type=Path,
                    help="benchmark folders holding results.json (default: every one under experiments/throughput)")
    ap.add_argument("--out", type=Path, default=Path("logs/results/throughput"),
                    help="each record's files go to <out>/<its folder name> (default: logs/results/throughput)")
    a = ap.parse_args(argv)
    records = a.records or sorted(p.parent for p in Path("experiments/throughput").glob("*/results.json"))
    if not records:
        raise SystemExit("no benchmark records: pass folders holding results.json (python -m vqformer.bench)")
    for rec in records:
        if not (rec / "results.json").is_file():
            raise SystemExit(f"{rec / 'results.json'} not found: pass a folder written by python -m vqformer.bench")
    for rec in records:
        result = json.loads((rec / "results.json").read_text())
        out = a.out / rec.resolve().name
        if out.resolve() == rec.resolve():
            raise SystemExit(f"--out would overwrite the record {rec}; choose another folder")
        paths = write(result, out)
        for t in result["targets"]:
            print(f"[results] {rec.name}: {t['target']}: {t['status']}")
        print(f"[results] wrote {', '.join(str(p) for p in paths.values())}")
