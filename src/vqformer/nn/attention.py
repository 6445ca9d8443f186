"""The attention unit (GAU / MQA / MHA with VQ or full attention) and the squared-ReLU MLP.

Spec: ``shared/research/transformer_vq.md``
  §1.2  one GAU: pre-RMSNorm, q and k RMSNorm without gain scaled by D_k^-1/4, SiLU values and gate,
        quantized keys, attention, output projection, residual dropout,
  §1.3  head types shga / mqa / mha and the MLP that follows mqa and mha,
  §1.4  Transformer-XL relative bias ``(q + v')·r_d`` inside the band ``d <= L`` (all distances for full),
  §1.6  initialisation.
``shared/research/ovq_recall.md``
  §1.3  ``attn_type: ovq``: L2-normalised q and k, per-sequence online dictionaries (``nn/ovq.py``), no
        positions (NoPE); β fixed or learned per head,
  §1.2  ``attn_type: swa``: exact sliding window with the relative bias inside the window
        (``nn/local_attention.py``); ``global_nope`` drops the relative bias of full/vq units (``sw-nope``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .functional import full_attention, relative_distances, vq_attention
from .local_attention import local_attention
from .ovq import OVQOptions, ovq_attention
from .norm import RMSNorm, rms_norm
from .position import sin_emb
from .quantizer import VectorQuantizer

HEAD_TYPES = ("shga", "mqa", "mha")
ATTN_TYPES = ("vq", "full", "ovq", "swa")


def dense(d_in: int, d_out: int, bias: bool = False) -> nn.Linear:
    """Linear layer with the official N(0, 1/fan_in) kernel and zero bias (§1.6)."""
    lin = nn.Linear(d_in, d_out, bias=bias)
    nn.init.normal_(lin.weight, 0.0, d_in ** -0.5)
    if bias:
        nn.init.zeros_(lin.bias)
    return lin


def head_dims(head_type: str, d_model: int, d_k: int, d_v: int) -> tuple[int, int, int]:
    """(query heads, key/value heads = codebooks, value width per head) of §1.3's table."""
    if head_type == "shga":
        return 1, 1, d_v
    n = d_model // d_k
    return (n, 1, d_k) if head_type == "mqa" else (n, n, d_k)


class AttentionUnit(nn.Module):
    """``y = Dropout_res(((attention(q, k̂, v)) ⊙ g) W_O)``; the caller adds the residual."""

    def __init__(self, cfg, attn_type: str | None = None):
        super().__init__()
        self.cfg = cfg
        self.attn_type = attn_type or cfg.attn_type
        D, Dk = cfg.d_model, cfg.d_k
        self.h_q, self.h_kv, self.d_v = head_dims(cfg.head_type, D, Dk, cfg.d_v)
        self.gated = cfg.head_type == "shga"
        self.h_r = self.h_q if cfg.head_type == "mha" else 1
        self.norm = RMSNorm(D)
        self.w_q = dense(D, self.h_q * Dk)
        self.w_k = dense(D, self.h_kv * Dk)
        self.w_v = dense(D, self.h_kv * self.d_v)
        self.w_g = dense(D, self.h_q * self.d_v) if self.gated else None
        # Only units that use the relative position bias own its projection and offsets: a parameter
        # without gradient stalls DDP. w_r is drawn anyway so the other weights' init does not change.
        rel = self.attn_type == "swa" or (self.attn_type in ("full", "vq") and not cfg.global_nope)
        w_r = dense(D, self.h_r * Dk)
        self.w_r = w_r if rel else None
        self.w_o = dense(self.h_q * self.d_v, D)
        # 1-D like the official u, v: excluded from weight decay by the ndim rule (§4.2).
        self.xl_u = nn.Parameter(torch.zeros(self.h_q * Dk)) if self.attn_type != "ovq" else None
        self.xl_v = nn.Parameter(torch.zeros(self.h_q * Dk)) if rel else None
        self.quantizer = (VectorQuantizer(self.h_kv, cfg.n_code, Dk, cfg.c_gamma)
                          if self.attn_type == "vq" else None)
        self.ovq_opts, self.ovq_log_beta = None, None
        if self.attn_type == "ovq":
            self.ovq_opts = OVQOptions(cfg.ovq_n_max, cfg.ovq_chunk_len, cfg.ovq_growth, cfg.ovq_growth_scale,
                                       cfg.ovq_seeding, cfg.ovq_step, cfg.ovq_step_const, cfg.ovq_read, cfg.ovq_local)
            if cfg.ovq_beta_learned:   # 1-D: excluded from weight decay like xl_u, xl_v
                self.ovq_log_beta = nn.Parameter(torch.full((self.h_q,), math.log(cfg.ovq_beta)))

    def state_bytes(self, length: int) -> int:
        """Bytes of attention state this unit keeps per sequence after ``length`` tokens (fp32 tensors)."""
        cfg, per_tok = self.cfg, self.h_kv * (self.cfg.d_k + self.d_v)
        if self.attn_type == "full":
            n = length * per_tok
        elif self.attn_type == "swa":
            n = min(cfg.swa_window, length) * per_tok
        elif self.attn_type == "vq":   # two blocks of keys and values, per-code value sums and counts
            n = 2 * cfg.block_len * per_tok + (cfg.n_code * (self.d_v + 1) if cfg.agg_cache else 0) * self.h_kv
        else:                           # dictionary rows (+ the partial chunk when it is attended exactly)
            n = cfg.ovq_n_max * (per_tok + self.h_kv) + (cfg.ovq_chunk_len * per_tok if cfg.ovq_local else 0)
        return 4 * n

    def _heads(self, x: Tensor, h: int) -> Tensor:
        return x.view(*x.shape[:2], h, -1).transpose(1, 2)          # [B,T,h·d] -> [B,h,T,d]

    def _rel_scores(self, qv: Tensor, distances: Tensor, sin_mask: Tensor | None) -> Tensor:
        """``(q + v')·r_d`` for each distance d in ``distances`` -> [B,Hq,T,len(distances)]."""
        table = sin_emb(distances, self.cfg.d_model, self.cfg.pe_lam).to(qv.dtype)
        if sin_mask is not None:
            table = table * sin_mask[: table.shape[0]].to(table.dtype)
        r = self.w_r(table).view(len(distances), self.h_r, -1).transpose(0, 1) * self.cfg.d_k ** -0.25
        return torch.einsum("bhtd,hnd->bhtn", qv, r.expand(self.h_q, -1, -1))

    def forward(self, x: Tensor, state=None, sin_mask: Tensor | None = None):
        cfg, scale = self.cfg, self.cfg.d_k ** -0.25
        h = self.norm(x)
        if self.attn_type == "ovq":
            return self._ovq(x, h, state)
        q = rms_norm(self._heads(self.w_q(h), self.h_q)) * scale
        k = rms_norm(self._heads(self.w_k(h), self.h_kv)) * scale
        v = self._heads(self.w_v(h), self.h_kv)
        if self.gated:
            v = F.silu(v)
        qu = q + self.xl_u.view(self.h_q, 1, -1) * scale
        qv = q + self.xl_v.view(self.h_q, 1, -1) * scale if self.xl_v is not None else None

        nope = cfg.global_nope
        if self.attn_type == "swa":
            W = cfg.swa_window
            band = self._rel_scores(qv, torch.arange(W, device=x.device), sin_mask)
            o, state = local_attention(qu, k, v, W, band_bias=band, state=state)
            commit, stats = x.new_zeros(()), {}
        elif self.quantizer is not None:
            vq = self.quantizer(k)
            L = cfg.block_len
            band = None if nope else self._rel_scores(qv, torch.arange(L + 1, device=x.device), sin_mask)
            o, state = vq_attention(qu, vq.k_hat, v, vq.codes, self.quantizer.codebook.to(q.dtype), L,
                                    band_bias=band, agg_cache=cfg.agg_cache, state=state,
                                    grad_thru_cache=cfg.grad_thru_cache, kernel=cfg.kernel)
            commit, stats = vq.commit_loss, vq.stats
        else:
            pos = 0 if state is None else state.pos
            n_keys = pos + x.shape[1]
            bias = None
            if not nope:
                rel = self._rel_scores(qv, torch.arange(n_keys, device=x.device), sin_mask)
                d = relative_distances(x.shape[1], pos, n_keys, device=x.device)
                bias = torch.gather(rel, -1, d.clamp(min=0).expand(*rel.shape[:2], -1, -1))
            o, state = full_attention(qu, k, v, bias=bias, state=state)
            commit, stats = x.new_zeros(()), {}
        return self._output(x, h, o), commit, stats, state

    def _ovq(self, x: Tensor, h: Tensor, state):
        """OVQ unit: unit-norm q and k, online dictionaries, no positions (ovq_recall.md §1.2–1.3)."""
        q = F.normalize(self._heads(self.w_q(h), self.h_q), dim=-1)
        k = F.normalize(self._heads(self.w_k(h), self.h_kv), dim=-1)
        v = self._heads(self.w_v(h), self.h_kv)
        if self.gated:
            v = F.silu(v)
        beta = self.ovq_log_beta.exp() if self.ovq_log_beta is not None else self.cfg.ovq_beta
        o, state = ovq_attention(q, k, v, self.ovq_opts, beta=beta, state=state)
        return self._output(x, h, o), x.new_zeros(()), {}, state

    def _output(self, x: Tensor, h: Tensor, o: Tensor) -> Tensor:
        o = o.transpose(1, 2).reshape(*x.shape[:2], -1)                 # [B,T,Hq·Dv]
        if self.gated:
            o = o * F.silu(self.w_g(h))
        return F.dropout(self.w_o(o), self.cfg.p_dropres, self.training)


class MLP(nn.Module):
    """RMSNorm -> Dense -> squared ReLU -> Dense, no biases (§1.3)."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.norm = RMSNorm(d_model)
        self.w_in = dense(d_model, d_ff)
        self.w_out = dense(d_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_out(F.relu(self.w_in(self.norm(x))).square())


__all__ = ["AttentionUnit", "MLP", "dense", "head_dims", "HEAD_TYPES", "ATTN_TYPES"]
