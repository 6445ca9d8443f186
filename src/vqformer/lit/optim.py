"""Optimizers and the learning-rate schedule with the official semantics.

Spec: ``docs/transformer_vq.md`` §4.2: AdamW (β 0.9/0.98, ε 1e-9) whose decoupled weight decay
is a fixed fraction per update (``p ← p − lr_t·dir − wd·p``: not multiplied by the learning rate or the
schedule) on parameters with ``ndim != 1`` only; Adafactor as the alternative; the codebook is no
optimizer parameter (it is a buffer); linear warmup then cosine from 1 to ``min_lr_ratio``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

OPTIMIZERS = ("adamw", "adafactor")


class AdamWConstantDecay(torch.optim.AdamW):
    """AdamW with the decay applied as ``p ← (1 − wd)·p`` before each update, independent of the lr."""

    def __init__(self, params, lr: float, betas=(0.9, 0.98), eps: float = 1e-9, weight_decay: float = 0.0):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=0.0)
        for group in self.param_groups:
            group.setdefault("constant_decay", weight_decay)

    @torch.no_grad()
    def step(self, closure=None):
        # Decaying first gives exactly p − wd·p − lr·dir: the Adam direction does not depend on p.
        for group in self.param_groups:
            if group["constant_decay"]:
                for p in group["params"]:
                    p.mul_(1.0 - group["constant_decay"])
        return super().step(closure)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Matrices, embeddings and scalars decay; vectors (biases, norm gains, XL u and v) do not."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim != 1]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim == 1]
    return [{"params": decay, "constant_decay": weight_decay}, {"params": rest, "constant_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    if cfg.name == "adamw":
        return AdamWConstantDecay(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    if cfg.name == "adafactor":
        # torch's Adafactor (no parameter-scale rule, unlike optax/HF): the closest built-in analogue.
        return torch.optim.Adafactor(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"optim.name={cfg.name!r} is invalid: choose one of {list(OPTIMIZERS)}")


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.1):
    """Multiplier of the peak lr: linear 0→1 over the warmup, then cosine 1→``min_ratio`` at ``total_steps``."""
    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        frac = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
    return fn
