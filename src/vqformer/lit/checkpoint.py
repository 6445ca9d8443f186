"""Loading our own runs back: the run's composed config and a checkpoint of it, checked to be its model.

Every checkpoint a run writes carries ``model_hash`` (task + model config); ``load_module`` refuses a
checkpoint whose model differs from the run's ``config.yaml``, naming both, so ``evaluate``/``sample`` never
score another model into this run's directory. Only checkpoints written by this repository's runs should be
loaded (lightning>=2.6.6 is pinned because earlier releases executed code stored in checkpoint
hyperparameters).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from .checkpoint_io import read_checkpoint
from .tasks import task_class

HASH_KEY = "vqformer_model_hash"


class CheckpointMismatch(ValueError):
    pass


def model_hash(task: str, model: dict) -> str:
    blob = json.dumps({"task": task, "model": model}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def config_model_hash(cfg: DictConfig) -> str:
    return model_hash(cfg.get("task", "lm"), OmegaConf.to_container(cfg.model, resolve=True))


class ModelStamp(L.Callback):
    """Writes the run's model hash into every checkpoint."""

    def __init__(self, digest: str):
        self.digest = digest

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        checkpoint[HASH_KEY] = self.digest


def run_config(run_dir: str | Path) -> DictConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"run_dir={run_dir}: no config.yaml there (is it a vqformer training run directory?)")
    return OmegaConf.load(path)


def checkpoint_path(run_dir: str | Path, ckpt: str = "last") -> Path:
    p = Path(ckpt)
    if not p.is_absolute() and not p.exists():
        p = Path(run_dir) / "checkpoints" / (ckpt if ckpt.endswith(".ckpt") else f"{ckpt}.ckpt")
    if not p.exists():
        raise FileNotFoundError(f"ckpt={ckpt}: {p} does not exist")
    return p


def check_same_model(run_dir: str | Path, path: Path) -> None:
    """Raise ``CheckpointMismatch`` unless the checkpoint at ``path`` holds the model of ``run_dir``."""
    run = run_config(run_dir)
    ckpt = read_checkpoint(path)
    if ckpt is None:
        raise CheckpointMismatch(f"ckpt={path} does not load (truncated or corrupt)")
    task = run.get("task", "lm")
    model = (ckpt.get("hyper_parameters") or {}).get("model") or {}
    stored = ckpt.get(HASH_KEY) or model_hash(task, model)   # older checkpoints: from their hyperparameters
    want = config_model_hash(run)
    if stored != want:
        ours = OmegaConf.to_container(run.model, resolve=True)
        diff = sorted(k for k in set(ours) | set(model) if ours.get(k) != model.get(k))
        shown = ", ".join(f"model.{k}: {model.get(k)!r} in the checkpoint, {ours.get(k)!r} in the run"
                          for k in diff[:6])
        raise CheckpointMismatch(f"refusing {path}: its model (hash {stored}) is not the model of run_dir={run_dir} "
                                 f"(hash {want}, {Path(run_dir) / 'config.yaml'})" + (f"; {shown}" if shown else ""))


def load_module(run_dir: str | Path, ckpt: str = "last", map_location: str | torch.device = "cpu"):
    cls = task_class(run_config(run_dir).get("task", "lm"))
    path = checkpoint_path(run_dir, ckpt)
    check_same_model(run_dir, path)
    module = cls.load_from_checkpoint(str(path), map_location=map_location)
    return module.eval()
