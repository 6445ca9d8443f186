"""Loading our own runs back: the run's composed config and a checkpoint of it.

Only checkpoints written by this repository's runs should be loaded (lightning>=2.6.6 is pinned because
earlier releases executed code stored in checkpoint hyperparameters).
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .tasks import task_class


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


def load_module(run_dir: str | Path, ckpt: str = "last", map_location: str | torch.device = "cpu"):
    cls = task_class(run_config(run_dir).get("task", "lm"))
    module = cls.load_from_checkpoint(str(checkpoint_path(run_dir, ckpt)), map_location=map_location)
    return module.eval()
