"""Progress outside the data layer: benchmark sweeps count points done / total, the recall evaluation counts
tokens scored; both through vqformer.progress, so a log gets whole lines ending at 100 %.
(Evaluation of a whole split: tests/test_demo_threads.py.)"""
from __future__ import annotations

import re

import pytest

from test_bench import TINY as BENCH_TINY
from test_bench import bench_cfg
from test_recall import cfg_for
from vqformer.benchmark.runner import run_benchmark
from vqformer.lit.runner import train


def bars(err: str, desc: str) -> list[tuple[float, float]]:
    """(done, total) of every line of the bar ``desc`` in a captured stderr (tqdm's "1.54k" read as 1540)."""
    assert "\r" not in err, "a redraw in a log"
    def num(v):
        return float(v[:-1]) * 1000 if v.endswith("k") else float(v)
    return [(num(a), num(b)) for a, b in re.findall(rf"^{re.escape(desc)}:\s+\d+%.*?\| *([\d.]+k?)/([\d.]+k?) \[", err, re.M)]


def test_benchmark_counts_points_done_of_total(capfd):
    cfg = bench_cfg(*BENCH_TINY, "bench.layer.enabled=false", "bench.model.enabled=false", "bench.matmul_n=0")
    result = run_benchmark(cfg, log=lambda *a: None)
    lines = bars(capfd.readouterr().err, "bench")
    n = len(result["points"])
    assert n == 6 and lines[-1] == (n, n), lines          # 3 kernel arms x T in {64, 128}
    assert [d for d, _ in lines] == sorted(d for d, _ in lines) and all(t == n for _, t in lines)


def test_recall_evaluation_counts_tokens(tmp_path, capfd):
    from vqformer.results.recall import main
    train(cfg_for(tmp_path, "model=recall_tvq", "trainer.max_steps=2", "trainer.enable_progress_bar=false"),
          tmp_path / "runs" / "a")
    capfd.readouterr()
    main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--lengths", "128:4",
          "--n-examples", "4", "--passkey", "256"])
    err = capfd.readouterr().err
    lines = bars(err, "recall a")   # 4 MQAR examples of 128 tokens, 4 passkeys of 256
    assert len(lines) >= 2 and lines[-1][0] == lines[-1][1] == pytest.approx(4 * 128 + 4 * 256, rel=0.01), err[-2000:]
    assert [d for d, _ in lines] == sorted(d for d, _ in lines)
