"""The attention unit (GAU / MQA / MHA) around a registered token mixer, and the squared-ReLU MLP.

docs/transformer_vq.md (attention unit, head types, initialisation): pre-RMSNorm, the q, k, v (and, for
shga, gate) projections, SiLU values and gate, the output projection and residual dropout are the unit's and
shared by every mixer; what happens between the projections (quantized, full, windowed or online-VQ
attention; ``nn/mixers/``) is the mixer's, picked by name from the registry. The caller adds the residual.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .linear import dense
from .mixers import HeadDims, mixer_class
from .norm import RMSNorm

HEAD_TYPES = ("shga", "mqa", "mha")


def head_dims(head_type: str, d_model: int, d_k: int, d_v: int) -> HeadDims:
    """The head layout of the head types' table: shga one head of width d_v; mqa d_model/d_k query heads
    sharing one key/value head; mha d_model/d_k heads of everything (values of width d_k)."""
    if head_type == "shga":
        return HeadDims(1, 1, 1, d_k, d_v)
    n = d_model // d_k
    return HeadDims(n, 1, 1, d_k, d_k) if head_type == "mqa" else HeadDims(n, n, n, d_k, d_k)


class AttentionUnit(nn.Module):
    """``y = Dropout_res((mixer(q, k, v) ⊙ g) W_O)``; the mixer is ``attn_type`` (default: the config's)."""

    def __init__(self, cfg, attn_type: str | None = None):
        super().__init__()
        self.cfg = cfg
        self.attn_type = attn_type or cfg.attn_type
        D = cfg.d_model
        self.dims = d = head_dims(cfg.head_type, D, cfg.d_k, cfg.d_v)
        self.gated = cfg.head_type == "shga"
        self.norm = RMSNorm(D)
        self.w_q = dense(D, d.n_q * d.d_k)
        self.w_k = dense(D, d.n_kv * d.d_k)
        self.w_v = dense(D, d.n_kv * d.d_v)
        self.w_g = dense(D, d.n_q * d.d_v) if self.gated else None
        self.w_o = dense(d.n_q * d.d_v, D)
        self.mixer = mixer_class(self.attn_type)(cfg, d, cfg.mixer_config(self.attn_type))

    @property
    def quantizer(self):
        return self.mixer.quantizer

    def state_bytes(self, length: int) -> int:
        """Bytes of attention state this unit keeps per sequence after ``length`` tokens (fp32 tensors)."""
        return self.mixer.state_bytes(length)

    def _heads(self, x: Tensor, h: int) -> Tensor:
        return x.view(*x.shape[:2], h, -1).transpose(1, 2)          # [B,T,h·d] -> [B,h,T,d]

    def forward(self, x: Tensor, state=None, sin_mask: Tensor | None = None, mask: Tensor | None = None):
        """x [B,T,D] -> (y [B,T,D], commit loss, codebook statistics, new state); ``mask`` [B,T]: real tokens."""
        d = self.dims
        h = self.norm(x)
        q = self._heads(self.w_q(h), d.n_q)
        k = self._heads(self.w_k(h), d.n_kv)
        v = self._heads(self.w_v(h), d.n_kv)
        if self.gated:
            v = F.silu(v)
        out = self.mixer(q, k, v, state, sin_mask, mask)
        o = out.out.transpose(1, 2).reshape(*x.shape[:2], -1)            # [B,T,Hq·Dv]
        if self.gated:
            o = o * F.silu(self.w_g(h))
        y = F.dropout(self.w_o(o), self.cfg.p_dropres, self.training)
        commit = x.new_zeros(()) if out.commit_loss is None else out.commit_loss
        return y, commit, out.stats or {}, out.state


class MLP(nn.Module):
    """RMSNorm -> Dense -> squared ReLU -> Dense, no biases (§1.3)."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.norm = RMSNorm(d_model)
        self.w_in = dense(d_model, d_ff)
        self.w_out = dense(d_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_out(F.relu(self.w_in(self.norm(x))).square())


__all__ = ["AttentionUnit", "MLP", "head_dims", "HEAD_TYPES"]
