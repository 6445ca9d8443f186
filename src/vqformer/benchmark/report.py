"""The benchmark's record on disk: ``points.csv`` (one row per measured point) and ``results.json`` (machine,
config, points, profile). Tables and plots are made from it by ``vqformer.results.throughput``.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..data.files import atomic_write_text

COLUMNS = ["level", "config", "arm", "attn", "head_type", "T", "batch", "tokens", "status", "n_warmup",
           "n_repeat", "time_median_s", "time_min_s", "time_max_s", "tokens_per_s", "flops", "flops_per_s",
           "frac_of_matmul_peak", "mem_base_mb", "mem_peak_mb", "mem_delta_mb", "mem_method",
           "minor_faults_per_step"]


def write(result: dict, out_dir: Path) -> dict[str, Path]:
    """Write points.csv and results.json into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in result["points"]:
        w.writerow({k: r.get(k, "") for k in COLUMNS})
    return {"csv": atomic_write_text(out_dir / "points.csv", buf.getvalue()),
            "json": atomic_write_text(out_dir / "results.json", json.dumps(result, indent=1, default=str) + "\n")}
