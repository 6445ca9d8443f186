"""``hardware=auto`` (the default) resolves to what the machine has: the CPU without CUDA, every GPU with
bf16 autocast and DDP with it; the run's saved config and its first line say what was chosen."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from conftest import make_cfg
from conftest import REPO, TINY, tiny_cfg
from vqformer.config import ConfigError
from vqformer.lit.runner import DONE, train


def fake_cuda(monkeypatch, n: int, bf16: bool = True):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


def resolved_trainer(*overrides: str) -> dict:
    cfg = make_cfg(*overrides)
    return {k: cfg.trainer[k] for k in ("accelerator", "devices", "num_nodes", "strategy", "precision",
                                         "use_distributed_sampler")}


def test_auto_is_the_default_and_resolves_to_the_cpu_without_cuda(monkeypatch):
    fake_cuda(monkeypatch, 0)
    assert make_cfg().hydra.runtime.choices.hardware == "auto"
    assert resolved_trainer() == {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto",
                                  "precision": "32-true", "use_distributed_sampler": False}


@pytest.mark.parametrize("n, strategy", [(4, "ddp"), (1, "auto")])
def test_auto_takes_every_gpu_with_bf16_and_ddp(monkeypatch, n, strategy):
    fake_cuda(monkeypatch, n)
    assert resolved_trainer("experiment=tvq/enwik8") == {
        "accelerator": "gpu", "devices": n, "num_nodes": 1, "strategy": strategy, "precision": "bf16-mixed",
        "use_distributed_sampler": False}


def test_auto_on_gpus_without_bf16_trains_in_fp32(monkeypatch):
    fake_cuda(monkeypatch, 2, bf16=False)
    assert resolved_trainer()["precision"] == "32-true"


def test_unknown_hardware_key_names_the_resolver():
    cfg = OmegaConf.create({"x": "${vqformer.hardware:gpus}"})
    with pytest.raises(Exception, match=r"ConfigError .*vqformer.hardware:gpus\}: unknown key; choose one of"):
        cfg.x


def test_the_run_saves_and_prints_the_resolved_choice(tmp_path, monkeypatch, capsys):
    fake_cuda(monkeypatch, 0)
    cfg = tiny_cfg(tmp_path, "trainer.max_steps=2", "trainer.val_check_interval=100", "ckpt_every=2")
    assert cfg.hydra.runtime.choices.hardware == "auto"
    train(cfg, tmp_path / "run")
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "vqformer.hardware" not in saved
    assert OmegaConf.load(tmp_path / "run" / "config.yaml").trainer.accelerator == "cpu"
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[vqformer] hardware:")]
    assert lines == ["[vqformer] hardware: cpu x 1 on 1 node(s), strategy auto, precision 32-true"]


def test_submitit_local_multirun_runs_two_jobs_end_to_end(tmp_path):
    """``hydra/launcher=submitit_local``: the submitit path SLURM jobs take, each job its own process."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "vqformer.train", "-m", "hydra/launcher=submitit_local", *TINY,
           f"paths.data_dir={tmp_path / 'data'}", f"paths.log_dir={tmp_path / 'logs'}", "logger=csv",
           "trainer.max_steps=2", "trainer.val_check_interval=100", "ckpt_every=2", "seed=0,1"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted(p.parent for p in (tmp_path / "logs" / "multiruns").rglob(DONE))
    assert len(runs) == 2 and sorted(OmegaConf.load(r / "config.yaml").seed for r in runs) == [0, 1]
    for r in runs:
        assert json.loads((r / DONE).read_text())["step"] == 2
    # Each job ran in a process submitit started and logged (its pickled result says it finished).
    results = list((tmp_path / "logs" / "multiruns").rglob(".submitit/*/*_result.pkl"))
    assert len(results) == 2, sorted((tmp_path / "logs").rglob("*"))


@pytest.mark.parametrize("experiment", ["tvq/enwik8", "recall/mqar_L64_D4", "longvq/lra_listops"])
def test_ddp_with_lightnings_sampler_fails_naming_the_key(experiment):
    """Lightning's sampler would shard the rank-sharded data again (a different data stream, half the eval)."""
    from vqformer.lit.tasks import task_class
    cfg = make_cfg(f"experiment={experiment}", "trainer.devices=2", "trainer.strategy=ddp",
                   "trainer.use_distributed_sampler=true")
    with pytest.raises(ConfigError, match="trainer.use_distributed_sampler=false"):
        task_class(cfg.task).validate_config(cfg)
