"""Distributed training on CPU with 2 real processes (gloo): a 2-rank run is the 1-rank run of the same global
batch, resumes exactly, and evaluates sharded with the single-process sums; the recall arms train under DDP.

Each rank is a process of tests/lit/ddp_worker.py started with torchrun's environment (RANK, WORLD_SIZE, ...),
so the test can read what happened inside every rank; one test launches ``hardware=cpu_ddp`` the user's way
and lets Lightning start the second process.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_lra import TINY as LRA_TINY
from test_recall import TINY as RECALL_TINY
from conftest import REPO, TINY
from vqformer.lit.runner import DONE

WORKER = Path(__file__).resolve().parent / "ddp_worker.py"
# 2 updates per batch (update_len = sequence_len / 2), 2 micro-batches per rank in each: several
# manual_backward calls per update, as in the paper configs.
LM = [*TINY, "logger=csv", "update_len=32", "micro_batch_size=1", "trainer.val_check_interval=100", "ckpt_every=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, world: int, mode: str, run_dir: Path, *overrides: str, timeout: int = 300) -> list[dict]:
    """Runs ``world`` ranks of the worker (one process each) and returns their records, rank 0 first.

    Every rank is watched: one that fails stops the others at once (a crashed rank would otherwise leave the
    rest waiting for it in the process group) and the failure shows each rank's own log.
    """
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    base = {**os.environ, "PYTHONPATH": str(REPO / "src"), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    if world > 1:
        base.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), NODE_RANK="0")
    procs, logs = [], [out / f"rank{rank}.log" for rank in range(world)]
    for rank in range(world):
        env = {**base, **({"RANK": str(rank), "LOCAL_RANK": str(rank)} if world > 1 else {})}
        with open(logs[rank], "w") as log:
            procs.append(subprocess.Popen([sys.executable, str(WORKER), str(out), mode, str(run_dir), *overrides],
                                          cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.returncode not in (None, 0) for p in procs):
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    failed = [r for r, p in enumerate(procs) if p.returncode != 0]
    assert not failed, "".join(f"\n--- rank {r} (exit {procs[r].returncode}) ---\n{logs[r].read_text()[-3000:]}"
                               for r in range(world))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


def lm_cfg(tmp_path: Path, world: int, *extra: str) -> list[str]:
    hardware = ["hardware=cpu_ddp", "data.batch_size=2"] if world == 2 else ["hardware=cpu", "data.batch_size=4"]
    return [*LM, *hardware, f"paths.data_dir={tmp_path / 'data'}", f"paths.log_dir={tmp_path / 'logs'}", *extra]


def codebooks(params: dict) -> dict:
    return {k: v for k, v in params.items() if k.endswith(("c_sum", "c_count"))}


def _start(rank: int, barrier, base: Path, n: int, failures) -> None:
    os.environ["RANK"] = str(rank)   # what torchrun, Lightning's launcher or SLURM gives each process
    from omegaconf import OmegaConf

    from vqformer.lit.runner import start_run_dir
    for i in range(n):
        barrier.wait()
        try:
            start_run_dir(OmegaConf.create({"seed": 0}), base / f"run{i}", base / f"run{i}" / "checkpoints")
        except Exception as e:
            failures.put(f"rank {rank}, run {i}: {e!r}")


def test_ranks_starting_a_run_together_do_not_race_on_its_directory(tmp_path):
    """All ranks enter the harness at the same moment. Rank zero alone probes the checkpoint directory
    (making and removing it) and writes config.yaml; a second prober used to find the directory gone under it
    (FileNotFoundError in about a third of the starts, a 2-rank CI run hung waiting for the crashed rank)."""
    n = 40
    for i in range(n):
        (tmp_path / f"run{i}").mkdir()
    ctx = multiprocessing.get_context("fork")
    barrier, failures = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_start, args=(rank, barrier, tmp_path, n, failures)) for rank in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    errors = []
    while not failures.empty():
        errors.append(failures.get())
    assert not errors, errors
    for i in range(n):   # each run directory written once, the probe's directory removed again
        assert sorted(p.name for p in (tmp_path / f"run{i}").iterdir()) == ["config.yaml", "git.json"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """1 rank × batch 4 and 2 ranks × batch 2, 6 updates each (3 batches of 2 windows)."""
    tmp = tmp_path_factory.mktemp("ddp")
    one = launch(tmp / "one", 1, "train", tmp / "one_run", *lm_cfg(tmp, 1, "trainer.max_steps=6"))
    two = launch(tmp / "two", 2, "train", tmp / "two_run", *lm_cfg(tmp, 2, "trainer.max_steps=6"))
    return tmp, one[0], two


def test_two_ranks_equal_one_rank_of_the_same_global_batch(runs):
    _, one, (r0, r1) = runs
    assert r0["world_size"] == r1["world_size"] == 2 and r0["backend"] == "gloo"
    assert len(one["losses"]) == len(r0["losses"]) == 6
    # The logged loss is the global batch's, the same on both ranks and equal to the 1-rank run's.
    assert r0["losses"] == r1["losses"]
    assert r0["losses"] == pytest.approx(one["losses"], rel=1e-5)
    # Gradients were synced at every update (several manual_backward calls each): identical parameters.
    for k, v in r0["params"].items():
        assert torch.equal(v, r1["params"][k]), k
        assert torch.allclose(v, one["params"][k], rtol=1e-4, atol=1e-6), k
    cb0, cb1, cb = codebooks(r0["params"]), codebooks(r1["params"]), codebooks(one["params"])
    assert cb0 and all(torch.equal(cb0[k], cb1[k]) for k in cb0)
    for k in cb:
        assert torch.allclose(cb0[k], cb[k], rtol=1e-5, atol=1e-7), k
    # Each EMA statistic (acc_count, acc_sum) is all-reduced exactly once per update, nowhere else.
    n_quantizers = len(cb) // 2
    for r in (r0, r1):
        assert r["ema_reduces"] == [2] * (6 * n_quantizers) and r["stray_ema_reduces"] == 0
    assert one["ema_reduces"] == [0] * (6 * n_quantizers)   # one process: nothing to reduce
    # Rank 0 draws the single-process dropout seeds, rank 1 its own (else both drop the same units).
    assert r0["seeds"] == one["seeds"] and not set(r0["seeds"]) & set(r1["seeds"])


def test_gradient_is_the_global_token_mean_when_ranks_score_different_token_counts(tmp_path):
    """Rank 0's rows score 64 and 64 tokens per window, rank 1's 40 and 8 (padding, or recall's query
    masks): the synced gradient is still the 1-process gradient of the whole batch (float64)."""
    cfg = [*LM, "hardware=cpu", f"paths.data_dir={tmp_path / 'data'}"]
    one = launch(tmp_path / "one", 1, "grad", tmp_path, *cfg)[0]
    r0, r1 = launch(tmp_path / "two", 2, "grad", tmp_path, *cfg)
    assert len(one["grads"]) == len(r0["grads"]) == 2   # two updates (windows), 2 micro-batches per rank each
    for g1, g0, gr1 in zip(one["grads"], r0["grads"], r1["grads"]):
        assert g0.keys() == g1.keys()
        for k, v in g1.items():
            assert v.dtype == torch.float64
            assert torch.equal(g0[k], gr1[k]), k
            assert torch.allclose(g0[k], v, rtol=1e-9, atol=1e-12), k


def test_validation_is_sharded_and_sums_to_the_single_process_value(runs):
    tmp, one, (r0, r1) = runs
    m1, m2 = one["metrics"], r0["metrics"]
    assert m1["val/tokens"] == m2["val/tokens"] == r1["metrics"]["val/tokens"] == 2048
    assert m2["val/loss"] == pytest.approx(m1["val/loss"], rel=1e-5)
    assert m2["val/bpb"] == pytest.approx(m1["val/bpb"], rel=1e-5)
    # Each rank scored its half of the 2,048 tokens (final validation and the one at the end of fit).
    assert r0["scored_tokens"] == r1["scored_tokens"] == one["scored_tokens"] / 2
    # The same checkpoint scored by 1 and by 2 processes: the sharded sums equal the single-process ones.
    single = launch(tmp / "val1", 1, "validate", tmp / "two_run")[0]["metrics"]
    sharded = launch(tmp / "val2", 2, "validate", tmp / "two_run")
    assert sharded[0]["metrics"] == sharded[1]["metrics"]
    assert sharded[0]["metrics"]["val/tokens"] == single["val/tokens"] == 2048
    assert sharded[0]["metrics"]["val/loss"] == pytest.approx(single["val/loss"], rel=1e-6)
    assert sharded[0]["metrics"]["val/loss"] == pytest.approx(m2["val/loss"], rel=1e-6)


def test_resume_under_ddp_is_exact(runs):
    tmp, _, (r0, r1) = runs
    cfg = lm_cfg(tmp, 2, "trainer.max_steps=6")
    crashed = launch(tmp / "crash", 2, "crash@4", tmp / "resumed_run", *cfg)
    assert all(r.get("crashed") for r in crashed)
    assert not (tmp / "resumed_run" / DONE).exists()
    # Stopped after update 4, before its checkpoint: the run resumes from step 2 and redoes updates 3 and 4.
    assert sorted(p.name for p in (tmp / "resumed_run" / "checkpoints").iterdir()) == ["last.ckpt", "step2.ckpt"]
    resumed = launch(tmp / "resumed", 2, "train", tmp / "resumed_run", *cfg)
    assert crashed[0]["losses"] == r0["losses"][:4]
    assert resumed[0]["losses"] == resumed[1]["losses"] == r0["losses"][2:]   # exactly
    for r, straight in zip(resumed, (r0, r1)):
        for k, v in straight["params"].items():
            assert torch.equal(r["params"][k], v), k
        assert r["metrics"] == straight["metrics"]


RECALL = ["experiment=recall/mqar_L64_D4", *RECALL_TINY, "data.batch_size=4"]
ARMS = {   # task config (2 ranks), the metrics its evaluation reduces over ranks
    "recall_sw_ovq": ([*RECALL, "model=recall_sw_ovq"], ["val/acc", "val/acc/L32_D2", "val/acc/L64_D8", "val/loss"]),
    "recall_swa": ([*RECALL, "model=recall_swa"], ["val/acc", "val/acc/L32_D2", "val/acc/L64_D8", "val/loss"]),
    "lra_listops": ([*LRA_TINY, "data.batch_size=4", "data.limit_eval_examples=13", "trainer.max_steps=4"],
                    ["val/acc", "val/loss"]),
}


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_arms_train_under_ddp_and_evaluate_with_synced_metrics(tmp_path, arm):
    cfg, keys = ARMS[arm]
    cfg = [*cfg, "hardware=cpu_ddp", "logger=csv", f"paths.data_dir={tmp_path / 'data'}",
           f"paths.log_dir={tmp_path / 'logs'}", "trainer.enable_progress_bar=false",
           "trainer.enable_model_summary=false"]
    r0, r1 = launch(tmp_path / "out", 2, "train", tmp_path / "run", *cfg)
    assert r0["world_size"] == 2 and r0["metrics"]["step"] == 4
    for k, v in r0["params"].items():   # every parameter got its synced gradient (OVQ: none is unused)
        assert torch.equal(v, r1["params"][k]), k
    # Accuracy and loss reduced over both ranks' shards (an odd number of examples for LRA, so one rank
    # scores a padding example) equal what one process computes on the whole set.
    single = launch(tmp_path / "val1", 1, "validate", tmp_path / "run")[0]["metrics"]
    for key in keys:
        assert r0["metrics"][key] == pytest.approx(single[key], rel=1e-6, abs=1e-9), key
    assert r0["metrics"] == r1["metrics"]


@pytest.mark.parametrize("multirun", [False, True])
def test_cpu_ddp_launched_by_lightning(tmp_path, multirun):
    """``python -m vqformer.train hardware=cpu_ddp``: Lightning starts the second process itself, also inside
    a one-job ``-m`` (what ``make repro-enwik8`` runs with hardware=auto on a multi-GPU node)."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "vqformer.train", *(["-m"] if multirun else []),
           *lm_cfg(tmp_path, 2, "trainer.max_steps=2"), f"hydra.run.dir={tmp_path / 'logs' / 'run'}"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("[vqformer] hardware: cpu x 2 on 1 node(s), strategy ddp") == 1
    (done,) = (tmp_path / "logs").rglob(DONE)   # both ranks trained one run in one directory
    metrics = json.loads(done.read_text())
    assert metrics["step"] == 2 and metrics["val/tokens"] == 2048
    assert "sync_dist" not in out.stderr
