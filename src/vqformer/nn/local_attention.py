"""Exact causal sliding-window attention (the local layer of the OVQ hybrids) with a carried state.

Spec: ``docs/ovq.md`` §1.2 (layer-wise hybrid of SWA and OVQ; baselines ``sw-nope`` and
``sw-vq``) and §2.2 (Zoology's sliding window, state 2·d·W). Token t attends to keys j with
``0 <= t - j < window``; ``band_bias [B,Hq,T,window]`` is added by distance ``d = t - j`` (the module puts
the Transformer-XL relative term there). Queries are processed in blocks of ``window``, so memory is
O(T·window); the state keeps the last ``window - 1`` keys and values.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .functional import _TensorState


def _acc(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _expand(x: Tensor, hq: int) -> Tensor:
    g = hq // x.shape[1]
    return x if g == 1 else x.repeat_interleave(g, dim=1)


@dataclass
class LocalAttentionState(_TensorState):
    pos: int
    k: Tensor      # [B,H,<=window-1,Dk]: the most recent keys
    v: Tensor


def local_attention(q: Tensor, k: Tensor, v: Tensor, window: int, *, band_bias: Tensor | None = None,
                    state: LocalAttentionState | None = None) -> tuple[Tensor, LocalAttentionState]:
    """Softmax attention of q [B,Hq,T,Dk] over the last ``window`` keys (itself included) of k, v [B,H,T,.]."""
    B, Hq, T, _ = q.shape
    if state is not None:
        k, v = torch.cat([state.k, k], 2), torch.cat([state.v, v], 2)
    P = k.shape[2] - T
    acc = _acc(q)
    ke, ve = _expand(k, Hq), _expand(v, Hq)
    outs = []
    for s in range(0, T, window):
        e = min(s + window, T)
        j0 = max(0, P + s - window + 1)
        d = (torch.arange(P + s, P + e, device=q.device)[:, None]
             - torch.arange(j0, P + e, device=q.device)[None, :])          # distances, [e-s, keys]
        sc = (q[:, :, s:e] @ ke[:, :, j0:P + e].transpose(-1, -2)).to(acc)
        visible = (d >= 0) & (d < window)
        if band_bias is not None:
            sc = sc + torch.gather(band_bias[:, :, s:e].to(acc), -1,
                                   d.clamp(0, window - 1).expand(B, Hq, -1, -1))
        w = torch.softmax(sc.masked_fill(~visible, float("-inf")), -1)
        outs.append(w @ ve[:, :, j0:P + e].to(acc))
    out = torch.cat(outs, 2) if outs else q.new_zeros(B, Hq, 0, v.shape[-1], dtype=acc)
    keep = max(0, window - 1)
    new = LocalAttentionState((0 if state is None else state.pos) + T, k[:, :, k.shape[2] - min(keep, k.shape[2]):],
                              v[:, :, v.shape[2] - min(keep, v.shape[2]):])
    return out.to(v.dtype), new


def local_attention_reference(q: Tensor, k: Tensor, v: Tensor, window: int, *,
                              band_bias: Tensor | None = None) -> Tensor:
    """Dense T×T masked softmax on a fresh sequence (tests)."""
    T, Hq = q.shape[2], q.shape[1]
    ke, ve = _expand(k, Hq), _expand(v, Hq)
    s = (q @ ke.transpose(-1, -2)).to(_acc(q))
    t = torch.arange(T)
    d = t[:, None] - t[None, :]
    band = (d >= 0) & (d < window)
    if band_bias is not None:
        b = torch.gather(band_bias.to(s.dtype), -1, d.clamp(0, window - 1).expand(*s.shape))
        s = s + torch.where(band, b, torch.zeros_like(b))
    w = torch.softmax(s.masked_fill(~band, float("-inf")), -1)
    return (w @ ve.to(w.dtype)).to(v.dtype)


__all__ = ["local_attention", "local_attention_reference", "LocalAttentionState"]
