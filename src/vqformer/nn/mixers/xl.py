"""What the softmax mixers with Transformer-XL positions (vq, full, swa) share.

docs/transformer_vq.md (attention unit, relative positions): q and k RMS-normalised without gain and scaled
by D_k^-1/4 each (so ``q·k`` needs no further scale); the content term uses ``q + u``, the position term
``(q + v')·r_d`` with ``r_d = W_r·sin(d)`` for each distance d the mixer reads; u, v' are 1-D parameters
(no weight decay by the optimizer's ndim rule), zero at init.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..linear import dense
from ..norm import rms_norm
from ..position import sin_emb
from .base import HeadDims, Mixer, MixerConfig


class XLMixer(Mixer):
    def __init__(self, model_cfg, dims: HeadDims, cfg: MixerConfig):
        super().__init__(model_cfg, dims, cfg)
        # Only a mixer that reads positions owns their projection and offset: a parameter without gradient
        # stalls DDP. w_r is drawn anyway so that the other weights' initial values do not depend on it.
        rel = not getattr(cfg, "nope", False)
        w_r = dense(model_cfg.d_model, dims.n_rel * dims.d_k)
        self.w_r = w_r if rel else None
        self.xl_u = nn.Parameter(torch.zeros(dims.n_q * dims.d_k))
        self.xl_v = nn.Parameter(torch.zeros(dims.n_q * dims.d_k)) if rel else None

    def queries_keys(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(q + u, q + v', k): the content queries, the position queries and the keys, normalised and scaled."""
        scale = self.dims.d_k ** -0.25
        q, k = rms_norm(q) * scale, rms_norm(k) * scale
        qu = q + self.xl_u.view(self.dims.n_q, 1, -1) * scale
        qv = q + self.xl_v.view(self.dims.n_q, 1, -1) * scale if self.xl_v is not None else None
        return qu, qv, k

    def rel_scores(self, qv: Tensor, distances: Tensor, sin_mask: Tensor | None) -> Tensor:
        """``(q + v')·r_d`` for each distance d in ``distances`` -> [B,n_q,T,len(distances)].

        ``sin_mask`` [B, >=len(distances), D]: this unit's per-example sinusoid-dropout mask (rows = distances).
        """
        m, n = self.model_cfg, len(distances)
        table = sin_emb(distances, m.d_model, m.pe_lam).to(qv.dtype)                  # [n, D]
        if sin_mask is None:
            r = self.w_r(table).view(n, self.dims.n_rel, -1).transpose(0, 1) * self.dims.d_k ** -0.25
            return torch.einsum("bhtd,hnd->bhtn", qv, r.expand(self.dims.n_q, -1, -1))
        table = table * sin_mask[:, :n].to(table.dtype)                                 # [B, n, D]
        r = self.w_r(table).view(-1, n, self.dims.n_rel, self.dims.d_k).transpose(1, 2) * self.dims.d_k ** -0.25
        return torch.einsum("bhtd,bhnd->bhtn", qv, r.expand(-1, self.dims.n_q, -1, -1))

__all__ = ["XLMixer"]
