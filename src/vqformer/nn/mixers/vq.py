"""``attn_type: vq``: Transformer-VQ attention over quantized keys in linear time.

docs/transformer_vq.md (quantizer, linear-time attention, cache): keys are replaced by their nearest EMA
codeword (straight-through), every query attends exactly to the current and previous block (the XL bias
inside the band d <= L) and, with ``agg_cache``, to all older blocks through per-code value sums. The knobs
of the paper (``n_code``, ``block_len``, ``agg_cache``, ``grad_thru_cache``, ``c_gamma``, ``kernel``) are
model-level: they keep the official names and the codebook/block config groups set them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..functional import vq_attention
from ..quantizer import VectorQuantizer
from .base import MixerConfig, MixerOutput, register_mixer
from .xl import XLMixer


@dataclass
class VQConfig(MixerConfig):
    nope: bool = False      # no relative position bias (the OVQ paper's sw-vq baseline)


@register_mixer("vq")
class VQMixer(XLMixer):
    config_class = VQConfig

    def __init__(self, model_cfg, dims, cfg):
        super().__init__(model_cfg, dims, cfg)
        self.quantizer = VectorQuantizer(dims.n_kv, model_cfg.n_code, dims.d_k, model_cfg.c_gamma)

    def forward(self, q, k, v, state=None, sin_mask=None, mask=None):
        m, L = self.model_cfg, self.model_cfg.block_len
        qu, qv, k = self.queries_keys(q, k)
        vq = self.quantizer(k, mask)
        band = None if self.cfg.nope else self.rel_scores(qv, torch.arange(L + 1, device=q.device), sin_mask)
        o, state = vq_attention(qu, vq.k_hat, v, vq.codes, self.quantizer.codebook.to(q.dtype), L,
                                band_bias=band, agg_cache=m.agg_cache, state=state,
                                grad_thru_cache=m.grad_thru_cache, kernel=m.kernel)
        return MixerOutput(o, state, vq.commit_loss, vq.stats)

    def state_bytes(self, length):
        """Two blocks of keys and values, and per-code value sums and counts when the cache aggregates."""
        m, d = self.model_cfg, self.dims
        return 4 * (2 * m.block_len * d.per_token + (m.n_code * (d.d_v + 1) * d.n_kv if m.agg_cache else 0))

    def n_distances(self, pos, length):
        return 0 if self.cfg.nope else self.model_cfg.block_len + 1


__all__ = ["VQConfig", "VQMixer"]
