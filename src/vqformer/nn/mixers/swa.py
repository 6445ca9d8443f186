"""``attn_type: swa``: exact causal sliding-window attention, the local layer of the OVQ hybrids.

docs/ovq.md (hybrids): token t attends to the keys at distances 0..window-1 with the Transformer-XL bias
inside the window (``nn/local_attention.py``); the state keeps the last window - 1 keys and values.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..local_attention import local_attention
from .base import MixerConfig, MixerOutput, invalid, register_mixer
from .xl import XLMixer


@dataclass
class SWAConfig(MixerConfig):
    window: int = 64        # W: keys at distances 0..W-1

    def validate(self, key):
        super().validate(key)
        if self.window < 1:
            raise invalid(f"{key}.window", self.window, "must be a positive integer")


@register_mixer("swa")
class SWAMixer(XLMixer):
    config_class = SWAConfig

    def forward(self, q, k, v, state=None, sin_mask=None, mask=None):
        W = self.cfg.window
        qu, qv, k = self.queries_keys(q, k)
        band = self.rel_scores(qv, torch.arange(W, device=q.device), sin_mask)
        o, state = local_attention(qu, k, v, W, band_bias=band, state=state)
        return MixerOutput(o, state)

    def state_bytes(self, length):
        return 4 * min(self.cfg.window, length) * self.dims.per_token

    def n_distances(self, pos, length):
        return self.cfg.window


__all__ = ["SWAConfig", "SWAMixer"]
