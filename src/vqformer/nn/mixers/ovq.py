"""``attn_type: ovq``: online vector-quantized attention over per-sequence dictionaries.

docs/ovq.md (layer): L2-normalised q and k, no positions (NoPE), key/value dictionaries grown during the
forward pass (``nn/ovq.py``; every uncertain choice of the reconstruction is a knob here), the read-out
inverse temperature β fixed or learned per query head.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..ovq import GROWTH, READS, SEEDING, STEPS, OVQOptions, ovq_attention
from .base import Mixer, MixerConfig, MixerOutput, invalid, register_mixer


@dataclass
class OVQConfig(MixerConfig):
    n_max: int = 64                     # dictionary rows per head
    chunk_len: int = 64                 # tokens merged at once; a chunk reads the dictionary of earlier chunks
    growth: str = "saturating"          # saturating s·t/(s+t) | dp s·log(1+t/s) | linear
    growth_scale: float | None = None   # s of the schedule; null: n_max
    seeding: str = "farthest"           # farthest | random
    step: str = "count"                 # count (running mean) | constant
    step_const: float = 0.1             # the constant step size
    read: str = "gmr"                   # gmr | cosine | dot
    local: bool = False                 # also attend exactly to the earlier tokens of the own chunk
    beta: float = 8.0                   # read-out inverse temperature (initial value when learned)
    beta_learned: bool = True

    def validate(self, key):
        super().validate(key)
        for name in ("n_max", "chunk_len"):
            if getattr(self, name) < 1:
                raise invalid(f"{key}.{name}", getattr(self, name), "must be a positive integer")
        for name, allowed in (("growth", GROWTH), ("seeding", SEEDING), ("step", STEPS), ("read", READS)):
            if getattr(self, name) not in allowed:
                raise invalid(f"{key}.{name}", getattr(self, name), f"choose one of {list(allowed)}")
        if self.growth_scale is not None and not self.growth_scale > 0:
            raise invalid(f"{key}.growth_scale", self.growth_scale, "must be > 0 or null")
        if not 0.0 < self.step_const <= 1.0:
            raise invalid(f"{key}.step_const", self.step_const, "must be in (0, 1]")
        if not self.beta > 0:
            raise invalid(f"{key}.beta", self.beta, "must be > 0")

    def options(self) -> OVQOptions:
        return OVQOptions(n_max=self.n_max, chunk_len=self.chunk_len, growth=self.growth,
                          growth_scale=self.growth_scale, seeding=self.seeding, step=self.step,
                          step_const=self.step_const, read=self.read, local=self.local)


@register_mixer("ovq")
class OVQMixer(Mixer):
    config_class = OVQConfig

    def __init__(self, model_cfg, dims, cfg):
        super().__init__(model_cfg, dims, cfg)
        # 1-D: no weight decay, like the XL u and v
        self.log_beta = nn.Parameter(torch.full((dims.n_q,), math.log(cfg.beta))) if cfg.beta_learned else None

    def forward(self, q, k, v, state=None, sin_mask=None, mask=None):
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        beta = self.log_beta.exp() if self.log_beta is not None else self.cfg.beta
        o, state = ovq_attention(q, k, v, self.cfg.options(), beta=beta, state=state)
        return MixerOutput(o, state)

    def state_bytes(self, length):
        """Dictionary rows with their counts (+ the partial chunk when it is attended exactly)."""
        c, d = self.cfg, self.dims
        return 4 * (c.n_max * (d.per_token + d.n_kv) + (c.chunk_len * d.per_token if c.local else 0))


__all__ = ["OVQConfig", "OVQMixer"]
