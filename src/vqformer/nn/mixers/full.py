"""``attn_type: full``: causal softmax attention over every earlier key (the quadratic baseline).

docs/transformer_vq.md (baseline): the same unit with unquantized keys and the Transformer-XL bias at every
distance; the carried state keeps every key and value.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..functional import full_attention, relative_distances
from .base import MixerConfig, MixerOutput, register_mixer
from .xl import XLMixer


@dataclass
class FullConfig(MixerConfig):
    nope: bool = False      # no relative position bias (the OVQ paper's sw-nope reference)


@register_mixer("full")
class FullMixer(XLMixer):
    config_class = FullConfig

    def forward(self, q, k, v, state=None, sin_mask=None, mask=None):
        qu, qv, k = self.queries_keys(q, k)
        T = q.shape[2]
        pos = 0 if state is None else state.pos
        bias = None
        if not self.cfg.nope:
            rel = self.rel_scores(qv, torch.arange(pos + T, device=q.device), sin_mask)
            d = relative_distances(T, pos, pos + T, device=q.device)
            bias = torch.gather(rel, -1, d.clamp(min=0).expand(*rel.shape[:2], -1, -1))
        o, state = full_attention(qu, k, v, bias=bias, state=state)
        return MixerOutput(o, state)

    def state_bytes(self, length):
        return 4 * length * self.dims.per_token

    def n_distances(self, pos, length):
        return 0 if self.cfg.nope else pos + length


__all__ = ["FullConfig", "FullMixer"]
