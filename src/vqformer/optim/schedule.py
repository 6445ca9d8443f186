"""The learning-rate schedule of the official code (docs/transformer_vq.md §4.2), as a multiplier of
the peak lr at update ``t`` (0-based: the first update uses t = 0):

    warmup (t < w):  t / w                  (official: the first update has lr 0)
    then:            a + (1 − a)·½·(1 + cos(π·min(t − w, D) / D)),   D = end − w,  a = ``min_ratio``

``end`` is the official ``n_max_step`` (the cosine's end), its own knob and not necessarily the
number of updates trained. ``from_zero=False`` gives the earlier (t + 1) / w warmup.
"""
from __future__ import annotations

import math


def warmup_cosine(warmup_steps: int, end_step: int, min_ratio: float = 0.1, from_zero: bool = True):
    def fn(t: int) -> float:
        if t < warmup_steps:
            return (t if from_zero else t + 1) / warmup_steps
        decay = max(1, end_step - warmup_steps)
        frac = min(t - warmup_steps, decay) / decay
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
    return fn
