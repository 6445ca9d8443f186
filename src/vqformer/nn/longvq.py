"""The LongVQ block: MEGA's gated single-head attention with quantized keys and a windowed bias, then the
normalized FFN.

Spec: ``docs/longvq.md``
  §1.2(b)  gated attention: ``V = SiLU(X̃W_v)``, ``X' = SiLU(SSM(X̃) + ω⊙X̃)``, ``[U_φ, ZR, H_x] = X'W_mx``,
           ``φ = σ(U_φ)``, ``[Z, γ_r] = SiLU(ZR)``, ``Q = κ_q⊙Z + μ_q``, ``K = κ_k⊙Z + μ_k``,
           ``Ĥ = SiLU(H_x + (γ_r⊙O)W_h)``, ``Y = φ⊙Ĥ + (1 − φ)⊙X`` (post-norm: ``Norm(Y)``),
  §1.2(c)  "simple" relative bias (one scalar per signed offset, N(0, 0.02)),
  §1.2(e)  normalized FFN ``Y + W2·drop(SiLU(W1·Norm(Y)))`` (pre-norm) or ``Norm(Y + FFN(Y))`` (post-norm),
  §1.2(f)  norms: layernorm, scalenorm, rmsnorm, batchnorm,
  §1.4     LongVQ: ``K̂ = STE(C_z)`` with the Transformer-VQ quantizer (EMA codebook, commit loss), bias only
           inside the local window, linear-time evaluation (encoder: ``vq_attention_bidir``; decoder: the
           Transformer-VQ recurrence ``vqformer.nn.functional.vq_attention``, softmax only),
  §1.6     ``attn_type``: ``vq`` (LongVQ), ``chunk`` (MEGA-chunk: continuous keys, attention inside chunks),
           ``full`` (MEGA: continuous keys, every pair, bias at every offset up to ``max_len``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ema import build_ssm
from .functional import full_attention_reference, vq_attention, vq_attention_reference
from .norm import RMSNorm
from .quantizer import VectorQuantizer
from .vq_bidirectional import bidir_attention_reference, chunk_attention, vq_attention_bidir, window_span

NORMS = ("layernorm", "scalenorm", "rmsnorm", "batchnorm")


class ScaleNorm(nn.Module):
    """``g · x / sqrt(mean(x²) + eps)`` with one scalar gain (§1.2f)."""

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.g * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class SequenceNorm(nn.Module):
    """One of §1.2(f)'s norms on [B,T,D]; batchnorm normalizes each channel over the real (B,T) positions."""

    def __init__(self, kind: str, dim: int, eps: float = 1e-5):
        super().__init__()
        if kind not in NORMS:
            raise ValueError(f"norm={kind!r} is invalid: choose one of {list(NORMS)}")
        self.kind = kind
        self.norm = {"layernorm": lambda: nn.LayerNorm(dim, eps=eps), "scalenorm": lambda: ScaleNorm(eps),
                     "rmsnorm": lambda: RMSNorm(dim, eps=eps),
                     "batchnorm": lambda: nn.BatchNorm1d(dim, eps=eps)}[kind]()

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "batchnorm":
            return self.norm(x.transpose(1, 2)).transpose(1, 2)
        return self.norm(x)


def linear(d_in: int, d_out: int, bias: bool = True) -> nn.Linear:
    """MEGA's init: N(0, 0.02) weights, zero bias."""
    lin = nn.Linear(d_in, d_out, bias=bias)
    nn.init.normal_(lin.weight, 0.0, 0.02)
    if bias:
        nn.init.zeros_(lin.bias)
    return lin


@dataclass
class BlockState:
    """What a causal block carries to the next window of a sequence: the SSM's hidden state [B, D, N] and the
    attention state (``vqformer.nn.functional.VQAttentionState``); None where the sequence starts."""
    ssm: Tensor | None = None
    attn: object = None

    def detach(self) -> "BlockState":
        return BlockState(None if self.ssm is None else self.ssm.detach(),
                          None if self.attn is None else self.attn.detach())


class GatedVQAttention(nn.Module):
    """One MEGA/LongVQ token mixer with its gated residual (the caller adds nothing)."""

    def __init__(self, cfg, causal: bool):
        super().__init__()
        self.cfg, self.causal = cfg, causal
        D, Z, V = cfg.d_model, cfg.z_dim, cfg.v_dim
        self.norm = SequenceNorm(cfg.norm, D)
        self.ssm = build_ssm(cfg.ssm, D, cfg.n_dim, cfg.bidirectional and not causal, cfg.truncation)
        self.v_proj = linear(D, V)
        self.mx_proj = linear(D, D + Z + V + D)
        self.h_proj = linear(V, D)
        self.qk_weight = nn.Parameter(torch.randn(2, Z) * 0.02)
        self.qk_bias = nn.Parameter(torch.zeros(2, Z))
        n_bias = 0
        if cfg.local_bias == "simple":
            n_bias = (2 * cfg.max_len - 1 if cfg.attn_type == "full"
                      else cfg.block_len + 1 if causal else 2 * window_span(cfg.window, cfg.block_len) - 1)
        self.rel_bias = nn.Parameter(torch.randn(n_bias) * 0.02) if n_bias else None
        self.quantizer = VectorQuantizer(1, cfg.n_code, Z, cfg.c_gamma) if cfg.attn_type == "vq" else None

    def _bias(self, T: int) -> Tensor | None:
        """The bias table for a length-T call (the centre of the max_len table for full attention)."""
        if self.rel_bias is None or self.cfg.attn_type != "full":
            return self.rel_bias
        M = self.cfg.max_len
        return self.rel_bias[M - T: M + T - 1]

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor, reference: bool = False, state=None):
        """-> (O [B,T,v], commit loss, codebook stats, attention state). ``reference`` evaluates the O(T²)
        definition; ``state`` continues the causal recurrence (the state is returned by that path only)."""
        cfg, T = self.cfg, q.shape[1]
        commit, stats, codes = q.new_zeros(()), {}, None
        if self.quantizer is not None:   # one head; pads stay out of the commit loss and the EMA k-means
            vq = self.quantizer(k[:, None], mask)
            k, codes, commit, stats = vq.k_hat[:, 0], vq.codes[:, 0], vq.commit_loss, vq.stats
        bias = self._bias(T)
        if self.causal:
            q = q * cfg.z_dim ** -0.5
            if cfg.attn_type == "full":
                full_bias = None
                if bias is not None:   # table index (j − i) + T − 1
                    pos = torch.arange(T, device=q.device)
                    full_bias = bias[pos[None, :] - pos[:, None] + T - 1]
                o = full_attention_reference(q[:, None], k[:, None], v[:, None], bias=full_bias)
            else:
                band = None if bias is None else bias.expand(q.shape[0], 1, T, -1)
                if reference:
                    o = vq_attention_reference(q[:, None], k[:, None], v[:, None], cfg.block_len, band_bias=band)
                else:
                    o, state = vq_attention(q[:, None], k[:, None], v[:, None], codes[:, None],
                                            self.quantizer.codebook.to(q.dtype), cfg.block_len, band_bias=band,
                                            grad_thru_cache=cfg.grad_thru_cache, state=state)
                    return o[:, 0], commit, stats, state
            return o[:, 0], commit, stats, None
        if cfg.attn_type == "vq" and not reference:
            o = vq_attention_bidir(q, k, v, codes, self.quantizer.codebook[0].to(q.dtype), mask, cfg.block_len,
                                   bias=bias, attn_fn=cfg.attn_fn, window=cfg.window,
                                   grad_thru_cache=cfg.grad_thru_cache)
        elif cfg.attn_type == "chunk":
            o = chunk_attention(q, k, v, mask, cfg.block_len, bias=bias, attn_fn=cfg.attn_fn)
        else:
            o = bidir_attention_reference(q, k, v, mask, cfg.block_len if cfg.attn_type == "vq" else None,
                                          bias=bias, attn_fn=cfg.attn_fn, window=cfg.window)
        return o, commit, stats, None

    def forward(self, x: Tensor, mask: Tensor, reference: bool = False):
        """A whole sequence -> (Y, commit loss, stats)."""
        return self._run(x, mask, reference, None)[:3]

    def carry(self, x: Tensor, mask: Tensor, state: BlockState):
        """A window continuing a sequence from ``state`` (causal vq only; ``BlockState()`` where the sequence
        starts) -> (Y, commit loss, stats, the state after this window)."""
        return self._run(x, mask, False, state)

    def _run(self, x: Tensor, mask: Tensor, reference: bool, state: BlockState | None):
        cfg = self.cfg
        D, Z, V = cfg.d_model, cfg.z_dim, cfg.v_dim
        residual = x
        h = self.norm(x) if cfg.prenorm else x
        v = F.silu(self.v_proj(h))
        ssm_state = None
        if self.ssm is None:
            xs = h
        elif state is not None:
            xs, ssm_state = self.ssm.carry(h, mask, state.ssm)
        else:
            xs = self.ssm(h, mask)
        xs = F.dropout(xs, cfg.dropout, self.training)
        u, zr, hx = self.mx_proj(xs).split([D, Z + V, D], dim=-1)
        phi = torch.sigmoid(u)
        z, r = F.silu(zr).split([Z, V], dim=-1)
        q = z * self.qk_weight[0] + self.qk_bias[0]
        k = z * self.qk_weight[1] + self.qk_bias[1]
        o, commit, stats, attn_state = self.attend(q, k, v, mask, reference, None if state is None else state.attn)
        hh = F.silu(hx + self.h_proj(o * r))
        hh = F.dropout(hh, cfg.dropout, self.training)
        y = phi * hh + (1 - phi) * residual          # gated residual to the un-normalized input
        new = None if state is None else BlockState(ssm_state, attn_state)
        return (y if cfg.prenorm else self.norm(y)), commit, stats, new


class NormalizedFFN(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.norm = SequenceNorm(cfg.norm, cfg.d_model)
        self.fc1 = linear(cfg.d_model, cfg.d_ffn)
        self.fc2 = linear(cfg.d_ffn, cfg.d_model)

    def forward(self, x: Tensor) -> Tensor:
        p, train = self.cfg.dropout, self.training
        h = self.norm(x) if self.cfg.prenorm else x
        y = x + F.dropout(self.fc2(F.dropout(F.silu(self.fc1(h)), p, train)), p, train)
        return y if self.cfg.prenorm else self.norm(y)


class LongVQBlock(nn.Module):
    """Gated (VQ-)attention then the normalized FFN (§1.2e)."""

    def __init__(self, cfg, causal: bool = False):
        super().__init__()
        self.mixer = GatedVQAttention(cfg, causal)
        self.ffn = NormalizedFFN(cfg)

    def forward(self, x: Tensor, mask: Tensor, reference: bool = False):
        y, commit, stats = self.mixer(x, mask, reference)
        return self.ffn(y), commit, stats

    def carry(self, x: Tensor, mask: Tensor, state: BlockState):
        """The block on a window continuing a sequence (``GatedVQAttention.carry``)."""
        y, commit, stats, state = self.mixer.carry(x, mask, state)
        return self.ffn(y), commit, stats, state


__all__ = ["BlockState", "GatedVQAttention", "LongVQBlock", "NORMS", "NormalizedFFN", "ScaleNorm", "SequenceNorm"]
