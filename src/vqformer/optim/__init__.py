"""Optimizers and the learning-rate schedule with the official semantics (plain PyTorch).

``build_optimizer(model, cfg)`` reads the ``optim`` config group: AdamW or Adafactor, both with the
official decoupled decay on parameters with ``ndim != 1``; the codebook is a buffer, never a parameter.
"""
from __future__ import annotations

import torch
from torch import nn

from .adafactor import Adafactor
from .adamw import AdamWConstantDecay, param_groups
from .schedule import warmup_cosine

OPTIMIZERS = ("adamw", "adafactor")


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "adamw":
        return AdamWConstantDecay(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    if cfg.name == "adafactor":
        return Adafactor(groups, lr=cfg.lr)
    raise ValueError(f"optim.name={cfg.name!r} is invalid: choose one of {list(OPTIMIZERS)}")


def schedule_end(cfg, max_steps: int) -> int:
    """The cosine's end: ``optim.decay_end_step`` when set (official ``n_max_step``), else the run's length."""
    return getattr(cfg, "decay_end_step", None) or max_steps


__all__ = ["Adafactor", "AdamWConstantDecay", "OPTIMIZERS", "build_optimizer", "param_groups", "schedule_end",
           "warmup_cosine"]
