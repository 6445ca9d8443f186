"""AdamW with the official decoupled decay (docs/transformer_vq.md §4.2).

The official chain is ``clip → AdamW(lr_max, wd=0) → × schedule → add −wd·p``: every update does
``p ← p − lr_t·dir − wd·p``, the decay neither multiplied by the learning rate nor by the schedule, and
only on parameters with ``ndim != 1``.
"""
from __future__ import annotations

import torch
from torch import nn


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
