"""Run lifecycle on clusters (docs/cluster.md): each fault injected for real, nothing lost.

Signals go to real subprocesses (SIGTERM, SIGUSR1, SIGKILL), checkpoints are truncated on disk, a second
process launches the same command, a learning rate of 1e5 diverges, the checkpoint directory is a file.
A run killed and resumed is compared value by value with an uninterrupted one: final metrics and every
row of metrics.csv.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from conftest import make_cfg
from conftest import TINY, Crash, read_metrics, tiny_cfg
from vqformer.lit.atomic import atomic_write_bytes, remove_stale_temporaries
from vqformer.lit.checkpoint import HASH_KEY, CheckpointMismatch, config_model_hash, load_module
from vqformer.lit.checkpoint_io import AtomicCheckpointIO, CheckpointError, non_finite_tensors
from vqformer.lit.guard import Diverged
from vqformer.lit.lock import LOCK_FILE, RunLock, RunLocked
from vqformer.lit.runner import DONE, evaluate, paste_command, train

REPO = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parent
# 8 batches of 2 updates; a checkpoint every 2 batches, a validation every 4 batches, a row every batch.
RUN = ["trainer.max_steps=16", "ckpt_every=4", "trainer.val_check_interval=4", "trainer.log_every_n_steps=1"]
TIMING = ("train/tokens_per_s",)   # wall-clock rates differ between any two runs


class Slow(L.Callback):
    """Keeps a subprocess busy long enough for a signal to land mid-run (numerics untouched)."""

    def __init__(self, seconds: float = 0.3):
        self.seconds = seconds

    def on_train_batch_end(self, *args):
        time.sleep(self.seconds)


class Gate(L.Callback):
    """Holds training after the first batch until ``path`` exists (the test decides when the run goes on)."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_batch_end(self, *args):
        while not self.path.exists():
            time.sleep(0.05)


class KillAt(L.Callback):
    """SIGKILL this process at the start of training batch ``batch`` (no handler can run)."""

    def __init__(self, batch: int):
        self.batch = batch

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


def env(**extra) -> dict:
    path = os.pathsep.join(str(p) for p in (REPO / "src", TESTS, REPO / "tests"))   # + conftest for test_lifecycle
    return {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": path, **extra}


def cli(tmp_path: Path, *args: str, run_dir: Path | None = None) -> list[str]:
    """The training command line of the in-process ``tiny_cfg`` runs (same composed config)."""
    where = [f"hydra.run.dir={run_dir}"] if run_dir else []
    return [sys.executable, "-m", "vqformer.train", *TINY, f"paths.data_dir={tmp_path / 'data'}",
            f"paths.log_dir={tmp_path / 'logs'}", "logger=csv", *args, *where]


def slow(seconds: float) -> list[str]:
    return ["+callbacks.slow._target_=test_lifecycle.Slow", f"+callbacks.slow.seconds={seconds}"]


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    end = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) first:\n{proc.stdout.read()[-3000:]}")
        if time.time() > end:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


def assert_same_metrics(run: Path, reference: Path) -> None:
    got, want = read_metrics(run), read_metrics(reference)
    assert [r["step"] for r in got] == [r["step"] for r in want]
    assert set(got[0]) == set(want[0])
    for g, w in zip(got, want):
        for k in w:
            if k in TIMING or w[k] == "":
                assert (g[k] == "") == (w[k] == ""), (k, g, w)
                continue
            assert float(g[k]) == pytest.approx(float(w[k]), rel=1e-6, abs=1e-9), (k, g["step"])
    final, ref = json.loads((run / DONE).read_text()), json.loads((reference / DONE).read_text())
    assert final.keys() == ref.keys()
    for k in ref:
        assert final[k] == pytest.approx(ref[k], rel=1e-6, abs=1e-9), k


def all_checkpoints_finite(ckpt_dir: Path) -> list[str]:
    names = []
    for p in sorted(ckpt_dir.glob("*.ckpt")):
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
        assert not non_finite_tensors({"s": ckpt["state_dict"], "o": ckpt["optimizer_states"]}), p
        names.append(p.name)
    return names


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, single_thread) -> Path:
    tmp = tmp_path_factory.mktemp("straight")
    train(tiny_cfg(tmp, *RUN), tmp / "run")
    return tmp / "run"


# ---------------------------------------------------------------- 1, 6: preemption and complete metrics
def test_sigterm_checkpoints_and_the_same_command_continues_exactly(tmp_path, uninterrupted):
    run = tmp_path / "run"
    cmd = cli(tmp_path, *RUN, *slow(0.4), run_dir=run)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: (run / "checkpoints" / "step4.ckpt").exists(), proc)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=240)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "run the same command again" in out and not (run / DONE).exists()
    assert not (run / LOCK_FILE).exists()
    again = subprocess.run(cmd, cwd=REPO, env=env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming from" in again.stdout
    assert_same_metrics(run, uninterrupted)


def test_sigusr1_under_slurm_checkpoints_and_requeues(tmp_path, uninterrupted):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'requeued'}\n")
    (bin_dir / "scontrol").chmod(0o755)
    run = tmp_path / "run"
    cmd = cli(tmp_path, *RUN, *slow(0.4), run_dir=run)
    e = env(OMP_NUM_THREADS="1", SLURM_JOB_ID="4242", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.Popen(cmd, cwd=REPO, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: (run / "checkpoints" / "step4.ckpt").exists(), proc)
    proc.send_signal(signal.SIGUSR1)
    out = proc.communicate(timeout=240)[0]
    assert proc.returncode == 128 + signal.SIGUSR1, out[-3000:]
    assert (tmp_path / "requeued").read_text().split() == ["requeue", "4242"]
    # SLURM starts the same command again.
    again = subprocess.run(cmd, cwd=REPO, env=e, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert_same_metrics(run, uninterrupted)


def test_sigkill_after_a_header_without_validation_fields_loses_no_row(tmp_path, uninterrupted):
    """The killed attempt wrote metrics.csv with training fields only (its first validation is at batch 3);
    the rerun adds the validation fields, replaces the rows after the checkpoint and keeps the others."""
    run = tmp_path / "run"
    script = (f"import sys; sys.path[:0] = [{str(TESTS)!r}, {str(REPO / 'tests')!r}]\n"
              "from pathlib import Path\n"
              "from test_lifecycle import KillAt, RUN\nfrom conftest import tiny_cfg\n"
              "from vqformer.lit.runner import train\n"
              f"train(tiny_cfg(Path({str(tmp_path)!r}), *RUN), Path({str(run)!r}), extra_callbacks=[KillAt(3)])\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env(OMP_NUM_THREADS="1"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == ["0", "1", "2"] and not any(k.startswith("val/") for k in rows[0])
    assert (run / LOCK_FILE).exists()   # left behind by the killed process: taken over below (dead pid)
    train(tiny_cfg(tmp_path, *RUN), run)
    assert_same_metrics(run, uninterrupted)


# ---------------------------------------------------------------- 2, 7: divergence
DIVERGE = ["trainer.max_steps=20", "trainer.val_check_interval=100", "ckpt_every=2", "optim.lr=1e5",
           "optim.warmup_steps=1000", "optim.grad_clip=null"]


def test_diverging_run_stops_without_done_or_a_non_finite_checkpoint(tmp_path, single_thread):
    run = tmp_path / "run"
    with pytest.raises(Diverged, match=r"non-finite .* at step \d+.*Last finite checkpoint: .*last\.ckpt \(step \d+\)"):
        train(tiny_cfg(tmp_path, *DIVERGE), run)
    assert not (run / DONE).exists()
    names = all_checkpoints_finite(run / "checkpoints")
    assert "last.ckpt" in names and len(names) <= 3   # last + the 2 newest step checkpoints
    # The same command again: not "already finished", the same clear error and a non-zero exit.
    out = subprocess.run(cli(tmp_path, *DIVERGE, run_dir=run), cwd=REPO, env=env(OMP_NUM_THREADS="1"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "already finished" not in out.stdout
    assert "training diverged" in out.stderr + out.stdout
    assert not (run / DONE).exists() and all_checkpoints_finite(run / "checkpoints") == names


def test_skip_policy_skips_non_finite_updates_then_stops(tmp_path, single_thread, capsys):
    run = tmp_path / "run"
    with pytest.raises(Diverged, match="after 2 skipped updates in a row"):
        train(tiny_cfg(tmp_path, *DIVERGE, "callbacks.guard.policy=skip", "callbacks.guard.max_skips=2"), run)
    assert capsys.readouterr().out.count("update skipped") == 2
    all_checkpoints_finite(run / "checkpoints")
    with pytest.raises(ValueError, match="callbacks.guard.policy"):
        train(tiny_cfg(tmp_path, "callbacks.guard.policy=ignore"), tmp_path / "bad")


def test_checkpoint_writer_refuses_non_finite_tensors(tmp_path):
    io = AtomicCheckpointIO()
    good = {"state_dict": {"w": torch.ones(3)}, "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(3)}}}],
            "callbacks": {"kth_value": torch.tensor(float("inf"))}, "global_step": 4}   # callback infinities are fine
    io.save_checkpoint(good, tmp_path / "ok.ckpt")
    assert torch.load(tmp_path / "ok.ckpt", weights_only=False)["global_step"] == 4
    bad = {**good, "optimizer_states": [{"state": {0: {"exp_avg": torch.tensor([1.0, float("nan")])}}}]}
    with pytest.raises(CheckpointError, match=r"non-finite values in optimizer_states\[0\]/state/0/exp_avg"):
        io.save_checkpoint(bad, tmp_path / "bad.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.ckpt"]


# ---------------------------------------------------------------- 3: checkpoints that survive any crash
def test_truncated_last_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, single_thread, capsys):
    args = ["trainer.max_steps=12", "trainer.val_check_interval=100", "ckpt_every=2",
            "callbacks.milestones.every_n_train_steps=4"]
    straight = train(tiny_cfg(tmp_path, *args), tmp_path / "straight")
    # Retention: last.ckpt, the 2 newest step checkpoints, every milestone.
    assert sorted(p.name for p in (tmp_path / "straight" / "checkpoints").iterdir()) == [
        "last.ckpt", "milestone-step12.ckpt", "milestone-step4.ckpt", "milestone-step8.ckpt",
        "step10.ckpt", "step12.ckpt"]

    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated preemption"):
        train(tiny_cfg(tmp_path, *args), run, extra_callbacks=[Crash(at=8)])
    last = run / "checkpoints" / "last.ckpt"
    os.truncate(last, 1000)   # `truncate -s 1000 checkpoints/last.ckpt`
    capsys.readouterr()
    resumed = train(tiny_cfg(tmp_path, *args), run)
    out = capsys.readouterr().out
    # Crash(at=8) stops before the step-8 checkpoint is written: the newest intact one is step 6.
    assert f"{last} is unreadable" in out and "step6.ckpt, the newest intact checkpoint" in out
    assert resumed["step"] == 12
    for k in straight:
        assert resumed[k] == pytest.approx(straight[k], rel=1e-6, abs=1e-9), k


def test_kill_during_a_checkpoint_write_leaves_the_previous_file_intact(tmp_path):
    target = tmp_path / "last.ckpt"
    atomic_write_bytes(target, b"previous checkpoint")
    script = ("import os, signal, sys\nfrom pathlib import Path\nfrom vqformer.lit.atomic import atomic_write\n"
              "def half(f):\n    f.write(b'x' * 100000); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
              f"atomic_write(Path({str(target)!r}), half)\n")
    out = subprocess.run([sys.executable, "-c", script], env=env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert target.read_bytes() == b"previous checkpoint"
    leftovers = [p for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1 and leftovers[0].parent == target.parent   # the temporary file: same directory
    assert remove_stale_temporaries(tmp_path) == leftovers and list(tmp_path.iterdir()) == [target]


def _unwritable_targets():
    yield "file"   # `checkpoints` is a regular file: no directory can be made there, whoever runs
    if os.path.isdir("/sys/kernel") and subprocess.run(["touch", "/sys/kernel/.probe"], capture_output=True).returncode:
        yield "sysfs"   # a directory where file creation fails even for root (tests run as root)


@pytest.mark.parametrize("kind", list(_unwritable_targets()))
def test_unwritable_checkpoint_directory_stops_before_training(tmp_path, kind):
    run = tmp_path / "run"
    run.mkdir()
    if kind == "file":
        (run / "checkpoints").write_text("not a directory")
    else:
        (run / "checkpoints").symlink_to("/sys/kernel")
    cfg = tiny_cfg(tmp_path, "trainer.max_steps=2", "ckpt_every=2")
    with pytest.raises(CheckpointError, match=r"checkpoint directory .*checkpoints is not writable"):
        train(cfg, run)
    assert not (run / DONE).exists() and not (run / "config.yaml").exists() and not (run / "csv").exists()
    assert not (tmp_path / "data").exists()   # stopped before any data or model work
    assert not (run / LOCK_FILE).exists()


# ---------------------------------------------------------------- 4: one process per run directory
def test_second_launch_of_the_same_command_stops_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    go = tmp_path / "go"
    cmd = cli(tmp_path, "trainer.max_steps=8", "ckpt_every=2", "trainer.val_check_interval=2",
              "trainer.log_every_n_steps=1", "+callbacks.gate._target_=test_lifecycle.Gate",
              f"+callbacks.gate.path={go}", run_dir=run)
    first = subprocess.Popen(cmd, cwd=REPO, env=env(OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    # config.yaml is written once the lock is held; the gate then holds the first run after its first batch.
    wait_for(lambda: (run / "config.yaml").exists(), first)
    second = subprocess.run(cmd, cwd=REPO, env=env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert second.returncode != 0
    msg = second.stdout + second.stderr
    assert f"pid {first.pid}" in msg and f"host {socket.gethostname()}" in msg and "in use by another run" in msg
    assert first.poll() is None
    go.touch()
    out = first.communicate(timeout=300)[0]
    assert first.returncode == 0, out[-3000:]
    steps = [r["step"] for r in read_metrics(run) if r.get("train/loss")]
    assert steps == [str(i) for i in range(4)]   # every row once: the second launch wrote nothing
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step6.ckpt", "step8.ckpt"]
    assert not (run / LOCK_FILE).exists()


def test_stale_locks_are_taken_over_and_live_ones_are_not(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / LOCK_FILE
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "start": 0, "token": "x"}))
    with RunLock(tmp_path) as held:               # dead process on this host
        assert json.loads(lock.read_text())["token"] == held.info["token"]
    assert not lock.exists()

    lock.write_text(json.dumps({"host": "other-node", "pid": 1, "start": 0, "token": "y"}))
    with pytest.raises(RunLocked, match="host other-node, pid 1"):   # another node, fresh heartbeat
        RunLock(tmp_path, stale_after_s=60).acquire()
    old = time.time() - 120
    os.utime(lock, (old, old))
    with RunLock(tmp_path, stale_after_s=60):      # heartbeat older than the timeout
        pass

    # A held lock is touched by its heartbeat thread and so stays fresh.
    with RunLock(tmp_path, heartbeat_s=0.1, stale_after_s=60):
        os.utime(lock, (old, old))
        time.sleep(0.5)
        assert time.time() - lock.stat().st_mtime < 5
        probe = (f"from vqformer.lit.lock import RunLock\nRunLock({str(tmp_path)!r}, stale_after_s=60).acquire()")
        out = subprocess.run([sys.executable, "-c", probe], env=env(), capture_output=True, text=True, timeout=120)
        assert out.returncode != 0 and f"pid {os.getpid()}" in out.stderr and "RunLocked" in out.stderr


# ---------------------------------------------------------------- 9: evaluation only of the run's own model
def test_evaluate_and_sample_refuse_a_checkpoint_of_another_model(tmp_path, single_thread):
    short = ["trainer.max_steps=2", "trainer.val_check_interval=100", "ckpt_every=2"]
    train(tiny_cfg(tmp_path, *short), tmp_path / "a")
    train(tiny_cfg(tmp_path, *short, "model.d_model=48"), tmp_path / "b")
    other = tmp_path / "b" / "checkpoints" / "last.ckpt"
    stamped = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert stamped[HASH_KEY] == config_model_hash(OmegaConf.load(tmp_path / "a" / "config.yaml"))
    with pytest.raises(CheckpointMismatch, match=r"model\.d_model: 48 in the checkpoint, 32 in the run"):
        evaluate(tmp_path / "a", ckpt=str(other))
    os.replace(other, tmp_path / "a" / "checkpoints" / "last.ckpt")   # a swapped last.ckpt
    with pytest.raises(CheckpointMismatch, match=str(tmp_path / "a" / "config.yaml")):
        load_module(tmp_path / "a")   # what vqformer.sample loads
    out = subprocess.run([sys.executable, "-m", "vqformer.evaluate", f"run_dir={tmp_path / 'a'}"], cwd=REPO,
                         env=env(), capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "refusing" in out.stderr + out.stdout
    assert not (tmp_path / "a" / "eval_validation.json").exists()


def test_printed_evaluate_command_can_be_pasted_back(tmp_path):
    out = subprocess.run(cli(tmp_path, "trainer.max_steps=2", "trainer.val_check_interval=100", "ckpt_every=2"),
                         cwd=REPO, env=env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if "evaluate it with:" in x)
    argv = shlex.split(line.split("evaluate it with:", 1)[1])
    printed = next(x for x in out.stdout.splitlines() if "run directory:" in x)
    run_dir = Path(printed.split("run directory: ")[1].split("  (")[0])
    assert "=" in run_dir.name and "," in run_dir.name and (run_dir / DONE).exists()
    assert argv[:3] == ["python", "-m", "vqformer.evaluate"]
    ev = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert json.loads((run_dir / "eval_test.json").read_text())["metrics"]["test/bpb"] > 0

    # Composed by Hydra (quotes, backslashes and "${" included), the pasted value is the path itself.
    for path in [run_dir, Path("/tmp/a b/c=1,d='x'/e\\f/${oops}/g[0]"), Path("/x/it\\'s"), Path("/x/y\\"),
                 Path('/x/q"\\"')]:
        arg = shlex.split(paste_command("evaluate", path))[3]
        assert make_cfg(arg, config_name="eval").run_dir == str(path)
