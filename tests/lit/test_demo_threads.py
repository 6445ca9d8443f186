"""The demo on any machine: threads from the cores and the load, progress lines with ETA in a log, and how
long the run took."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, TINY
from vqformer.lit.runner import duration
from vqformer.threads import ENV, choose_threads, set_threads


def test_threads_follow_the_physical_cores_and_the_load():
    idle = dict(env={}, physical=2, usable=4, load=0.2)   # 2 cores with hyper-threading, nothing else running
    assert choose_threads(**idle)[0] == 2
    n, why = choose_threads(env={}, physical=2, usable=2, load=8.7)   # the loaded 2-core machine
    assert n == 1 and "load average 8.7" in why
    assert choose_threads(env={}, physical=8, usable=16, load=12.4)[0] == 3   # 16 - 12.4 leaves 3 free
    assert choose_threads(env={}, physical=16, usable=4, load=0.0)[0] == 4    # an affinity mask of 4 CPUs
    assert choose_threads(env={}, physical=8, usable=8, load=0.0, procs=2)[0] == 4   # CPU DDP: shared


def test_the_knob_and_the_environment_override_the_choice():
    busy = dict(physical=2, usable=2, load=30.0)
    assert choose_threads(3, env={ENV: "5"}, **busy) == (3, "set by threads=")
    assert choose_threads(None, env={ENV: "5"}, **busy) == (5, f"set by {ENV}")
    for bad in ("two", "0"):
        with pytest.raises(ValueError, match=ENV):
            choose_threads(None, env={ENV: bad}, **busy)


def test_set_threads_sets_torch(capsys):
    import torch
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        assert "[vqformer] CPU threads: 1 (set by threads=" in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)


def test_duration_reads_like_a_person_wrote_it():
    assert [duration(s) for s in (4.4, 59.6, 252, 3600 + 3 * 60 + 9)] == ["4 s", "1 min 0 s", "4 min 12 s", "1 h 03 min"]


def test_a_run_in_a_log_prints_threads_progress_with_eta_and_its_duration(tmp_path):
    """stdout/stderr are pipes here (no terminal), as in a cluster log."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), ENV: "1"}
    tiny = [o for o in TINY if o != "trainer.enable_progress_bar=false"]
    cmd = [sys.executable, "-m", "vqformer.train", *tiny, f"paths.data_dir={tmp_path / 'data'}",
           f"paths.log_dir={tmp_path / 'logs'}", "logger=csv", "trainer.max_steps=40",
           "trainer.val_check_interval=20", "ckpt_every=20", "threads=null", "run_name=demo"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert f"[vqformer] CPU threads: 1 (set by {ENV}" in out.stdout
    assert "\r" not in log   # whole lines, no redraws
    steps = [int(m) for m in re.findall(r"^train:\s+\d+%.*?\| *(\d+)/40 \[.*<", out.stderr, re.M)]
    assert steps and steps[-1] == 40 and len(steps) <= 100 // 5 + 2, steps   # about one line per 5 %
    assert len(steps) >= 5 and steps == sorted(steps)
    assert re.search(r"^validation:\s+\d+%.*\d+/\d+ \[", out.stderr, re.M), "no validation progress line"
    assert re.search(r"^\[vqformer\] done in \d+ (s|min \d+ s)$", out.stdout, re.M), out.stdout[-500:]
    # evaluating the whole split shows its batches the same way
    run_dir = next((tmp_path / "logs").rglob("DONE")).parent
    cmd = [sys.executable, "-m", "vqformer.evaluate", f"run_dir={run_dir}", "split=test"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    batches = [int(m) for m in re.findall(r"^test:\s+\d+%.*?\| *(\d+)/\d+ \[.*<", out.stderr, re.M)]
    assert batches and batches == sorted(batches) and "\r" not in out.stderr, out.stderr[-2000:]
