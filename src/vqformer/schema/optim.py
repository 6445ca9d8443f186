"""Schema of the ``optim`` group (conf/optim/*.yaml): optimizer, clipping and learning-rate schedule."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from ..optim import OPTIMIZERS
from .base import fail, in_range, is_number, nonneg_int, one_of

SCHEDULES = ("cosine", "linear")


@dataclass
class OptimSchema:
    name: str = "adamw"                  # adamw (decoupled decay, official) | adafactor
    lr: float = 4e-4                     # peak learning rate; > 0
    betas: Optional[List[float]] = None  # adamw: [beta1, beta2], each in [0, 1); null only for adafactor
    eps: Optional[float] = None          # adamw denominator term; > 0 (null only for adafactor)
    weight_decay: float = 0.0            # decay per update; in [0, 1)
    grad_clip: Optional[float] = None    # global gradient-norm clip; > 0, or null for none
    warmup_steps: int = 0                # linear warmup updates; >= 0
    warmup_from_zero: bool = True        # official: lr = peak·t/warmup (first update lr 0); false: (t+1)/warmup
    min_lr_ratio: float = 0.1            # cosine floor as a fraction of the peak lr; in [0, 1]
    decay_end_step: Optional[int] = None  # update where the cosine ends (official n_max_step); > warmup_steps, or null: trainer.max_steps
    schedule: Optional[str] = None       # null: the task's own (lm/recall: cosine; classify: linear) | cosine | linear

    @staticmethod
    def validate(o) -> None:
        one_of("optim.name", o.name, OPTIMIZERS)
        if not is_number(o.lr) or not o.lr > 0:
            fail("optim.lr", o.lr, "must be a number > 0")
        if o.name == "adamw" or o.betas is not None:
            b = list(o.betas) if o.betas is not None else None
            if b is None or len(b) != 2 or not all(is_number(x) and 0 <= x < 1 for x in b):
                fail("optim.betas", b, "must be a pair [beta1, beta2], each in [0, 1)")
        if o.name == "adamw" or o.eps is not None:
            if not is_number(o.eps) or not o.eps > 0:
                fail("optim.eps", o.eps, "must be a number > 0")
        in_range("optim.weight_decay", o.weight_decay, 0.0, 1.0, hi_open=True)
        if o.grad_clip is not None and (not is_number(o.grad_clip) or not o.grad_clip > 0):
            fail("optim.grad_clip", o.grad_clip, "must be > 0, or null for no clipping")
        nonneg_int("optim.warmup_steps", o.warmup_steps)
        in_range("optim.min_lr_ratio", o.min_lr_ratio, 0.0, 1.0)
        if o.decay_end_step is not None and o.decay_end_step <= o.warmup_steps:
            fail("optim.decay_end_step", o.decay_end_step, f"must be > optim.warmup_steps={o.warmup_steps}, or null")
        if o.schedule is not None:
            one_of("optim.schedule", o.schedule, SCHEDULES)
