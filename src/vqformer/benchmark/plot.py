"""``throughput.png``: tokens/s and peak memory against sequence length, one line per arm, per level.

Spec: ``docs/transformer_vq.md`` §5.4 (throughput against sequence length, VQ against the
quadratic baseline). Both axes are logarithmic (base 2 for length): a linear-time arm is a flat
tokens/s line and a memory line of slope 1; a quadratic arm falls with slope −1 and rises with slope 2.
Skipped points are left out (their reasons are in ``table.md``).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, NullLocator  # noqa: E402

from .grid import fmt_len  # noqa: E402

LEVEL_TITLES = {"kernel": "kernel (attention op)", "layer": "layer (AttentionUnit)", "model": "model (training step)"}
STYLE = {"vq": ("-", "o"), "sdpa": ("--", "s"), "quadratic": (":", "^"), "full": ("--", "s")}


def plot(points: list[dict], path: Path, title: str = "") -> Path:
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
