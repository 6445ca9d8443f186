"""The byte-level LRA speed/memory script as a module (``python -m vqformer.benchmark.lra_4k``): each run
appends one JSON line to its output file, under logs/ by default; no timing is asserted."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from vqformer.benchmark.lra_4k import main

SMALL = ["--level", "layer", "--T", "256", "--batch", "1", "--repeats", "1"]


def test_each_arm_appends_one_line(tmp_path):
    out = tmp_path / "points.jsonl"
    main(["--arm", "longvq", *SMALL, "--out", str(out)])
    main(["--arm", "mega", *SMALL, "--out", str(out)])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["arm"] for r in lines] == ["longvq", "mega"]
    assert all(r["T"] == 256 and r["median_s"] > 0 and r["tokens_per_s"] > 0 for r in lines)


def test_runs_as_a_module_and_writes_under_logs(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    proc = subprocess.run([sys.executable, "-m", "vqformer.benchmark.lra_4k", "--arm", "mega_chunk", *SMALL],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()] == \
        ["logs/bench/lra_4k/points.jsonl"]
    assert json.loads((tmp_path / "logs/bench/lra_4k/points.jsonl").read_text())["arm"] == "mega_chunk"
