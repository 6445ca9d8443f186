"""Bidirectional (encoder) attention over quantized keys in linear time, its O(n²) reference, and the
chunked continuous-key attention of MEGA-chunk.

Spec: ``docs/longvq.md`` §1.4 (linear-time evaluation, bidirectional encoder) and
§1.2(b)6 (attention functions). Every key is visible to every query; a learned scalar bias per signed offset
``b[j − i]`` is added only inside the query's window ``W(i)``:

* ``window="chunk"``: the chunk of ``c`` positions holding ``i`` (offsets ``−(c−1) .. c−1``),
* ``window="band"``: that chunk and its two neighbours (offsets ``−(2c−1) .. 2c−1``).

Outside the window the score ``Q_i·K̂_j·scale`` depends on ``j`` only through its code ``z_j``, so the far keys
are summarised per code by counts ``N_s`` and value sums ``G_s`` of the whole sequence minus the window's own:

* softmax: one joint softmax over the window scores and the per-code scores ``Q_i·C_s·scale + log(N_s − N_s^W)``,
* laplace / relu2 (element-wise ``f``, no normaliser): ``Σ_{j∈W} f(s_ij) V_j + Σ_s f(Q_i·C_s·scale)(G_s − G_s^W)``.

Cost O(T·(w + S)·(z + v)) for window width w. ``scale`` is ``z^{-1/2}`` for softmax and ``1/n_valid`` (the
number of real keys of the sequence) for laplace and relu2, as in MEGA. Shapes: q, k_hat [B,T,z], v [B,T,v],
codes [B,T], codebook [S,z], key_mask [B,T] (True = real token), bias table [2·span − 1]; T must be a multiple
of c (the model pads).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

ATTN_FNS = ("softmax", "laplace", "relu2")
WINDOWS = ("chunk", "band")
NEG_INF = float("-inf")


def laplace(x: Tensor, mu: float = math.sqrt(0.5), std: float = math.sqrt(0.25 / math.pi)) -> Tensor:
    """MEGA's laplace attention function: ``0.5·(1 + erf((x − μ)/(σ√2)))`` fit to relu² at x = √2."""
    return 0.5 * (1.0 + torch.erf((x - mu) / (std * math.sqrt(2.0))))


def relu2(x: Tensor) -> Tensor:
    return F.relu(x).square()


def elementwise(attn_fn: str):
    return {"laplace": laplace, "relu2": relu2}[attn_fn]


def score_scale(attn_fn: str, z_dim: int, key_mask: Tensor) -> Tensor:
    """Per-sequence multiplier of ``q·k``: [B,1,1]."""
    if attn_fn == "softmax":
        return key_mask.new_full((key_mask.shape[0], 1, 1), z_dim ** -0.5, dtype=torch.float64)
    return 1.0 / key_mask.sum(-1).clamp_min(1).to(torch.float64)[:, None, None]


def window_span(window: str, c: int) -> int:
    """Largest |offset| + 1 inside a window: the bias table has ``2·span − 1`` entries."""
    return c if window == "chunk" else 2 * c


def _masked_softmax(s: Tensor) -> Tensor:
    """Softmax over the last axis that gives zeros (not NaN) for rows with no visible key."""
    m = s.amax(-1, keepdim=True)
    e = torch.exp(s - torch.where(torch.isfinite(m), m, torch.zeros_like(m)))
    return e / e.sum(-1, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)


def _windows(x: Tensor, band: bool) -> Tensor:
    """[B,R,c,...] chunks -> [B,R,w,...] window keys (w = c, or 3c with the neighbours; zeros off the ends)."""
    if not band:
        return x
    pad = torch.zeros_like(x[:, :1])
    return torch.cat([torch.cat([pad, x[:, :-1]], 1), x, torch.cat([x[:, 1:], pad], 1)], dim=2)


def _neighbour_sum(x: Tensor, band: bool) -> Tensor:
    """[B,R,...] per-chunk sums -> per-window sums."""
    if not band:
        return x
    pad = torch.zeros_like(x[:, :1])
    return x + torch.cat([pad, x[:, :-1]], 1) + torch.cat([x[:, 1:], pad], 1)


def _window_offsets(c: int, band: bool, device) -> Tensor:
    """Offset ``j − i`` of window key kk from in-chunk query i: [c, w]."""
    i = torch.arange(c, device=device)[:, None]
    kk = torch.arange(3 * c if band else c, device=device)[None, :]
    return kk - (c if band else 0) - i


def vq_attention_bidir(q: Tensor, k_hat: Tensor, v: Tensor, codes: Tensor, codebook: Tensor, key_mask: Tensor,
                       block_len: int, *, bias: Tensor | None = None, attn_fn: str = "softmax",
                       window: str = "chunk", grad_thru_cache: bool = True) -> Tensor:
    """Linear-time bidirectional attention over quantized keys (see the module docstring) -> [B,T,v].

    ``grad_thru_cache=False`` stops the gradient into the values through the far (per-code) term; the keys
    of far tokens never receive a gradient here (their codes are constants, as in Transformer-VQ's cache).
    """
    B, T, Z = q.shape
    c, S, band = block_len, codebook.shape[0], window == "band"
    if T % c:
        raise ValueError(f"vq_attention_bidir: block_len={c} must divide the sequence length {T}")
    R = T // c
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = score_scale(attn_fn, Z, key_mask).to(acc)                     # [B,1,1]
    m = key_mask.to(acc)

    # Per-chunk code counts and value sums -> whole-sequence and per-window aggregates -> far = whole − window.
    onehot = F.one_hot(codes, S).to(acc) * m[..., None]                  # [B,T,S]
    vv = v.to(acc) if grad_thru_cache else v.detach().to(acc)
    cnt = onehot.view(B, R, c, S).sum(2)                                  # [B,R,S]
    sums = torch.einsum("brjs,brjd->brsd", onehot.view(B, R, c, S), vv.view(B, R, c, -1))
    far_cnt = cnt.sum(1, keepdim=True) - _neighbour_sum(cnt, band)
    far_sum = sums.sum(1, keepdim=True) - _neighbour_sum(sums, band)

    qb = q.to(acc).view(B, R, c, Z)
    kw = _windows(k_hat.to(acc).view(B, R, c, Z), band)                   # [B,R,w,Z]
    vw = _windows(v.to(acc).view(B, R, c, -1), band)
    mw = _windows(key_mask.view(B, R, c), band)                           # [B,R,w]
    s_loc = torch.einsum("brid,brjd->brij", qb, kw) * scale[:, :, :, None]
    if bias is not None:
        off = _window_offsets(c, band, q.device) + window_span(window, c) - 1
        s_loc = s_loc + bias.to(acc)[off]
    s_far = torch.einsum("brid,sd->bris", qb, codebook.to(acc)) * scale[:, :, :, None]

    if attn_fn == "softmax":
        s_loc = s_loc.masked_fill(~mw[:, :, None, :], NEG_INF)
        # Counts are sums of ones: > 0.5 is exact even in float32.
        log_n = torch.where(far_cnt > 0.5, far_cnt.clamp_min(1).log(), torch.full_like(far_cnt, NEG_INF))
        w = _masked_softmax(torch.cat([s_loc, s_far + log_n[:, :, None, :]], -1))
        w_loc, w_far = w.split([s_loc.shape[-1], S], -1)
        mean = far_sum / far_cnt.clamp_min(1)[..., None]
        out = w_loc @ vw + w_far @ mean
    else:
        f = elementwise(attn_fn)
        w_loc = f(s_loc) * mw[:, :, None, :].to(acc)
        out = w_loc @ vw + f(s_far) @ far_sum
    return out.reshape(B, T, -1).to(v.dtype)


def bidir_attention_reference(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, block_len: int | None, *,
                              bias: Tensor | None = None, attn_fn: str = "softmax", window: str = "chunk",
                              local_only: bool = False) -> Tensor:
    """O(T²) definition: ``w_ij = f(q_i·k_j·scale + [j ∈ W(i)]·b[j − i])`` over real keys j.

    ``block_len=None`` is one window covering the whole sequence (MEGA without chunking); ``local_only``
    restricts the keys to the window (MEGA-chunk). With quantized keys this is what ``vq_attention_bidir``
    computes in linear time.
    """
    B, T, Z = q.shape
    c = block_len or T
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = (q.to(acc) @ k.to(acc).transpose(1, 2)) * score_scale(attn_fn, Z, key_mask).to(acc)
    pos = torch.arange(T, device=q.device)
    chunk = pos // c
    diff = chunk[None, :] - chunk[:, None]
    in_win = diff == 0 if window == "chunk" else diff.abs() <= 1
    if bias is not None:
        off = (pos[None, :] - pos[:, None]).clamp(-(window_span(window, c) - 1), window_span(window, c) - 1)
        s = s + torch.where(in_win, bias.to(acc)[off + window_span(window, c) - 1], torch.zeros_like(s))
    visible = key_mask[:, None, :] & (in_win if local_only else torch.ones_like(in_win))
    if attn_fn == "softmax":
        w = _masked_softmax(s.masked_fill(~visible, NEG_INF))
    else:
        w = elementwise(attn_fn)(s) * visible.to(acc)
    return (w @ v.to(acc)).to(v.dtype)


def chunk_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, block_len: int, *,
                    bias: Tensor | None = None, attn_fn: str = "softmax") -> Tensor:
    """MEGA-chunk: continuous keys, attention only inside each chunk of ``block_len`` (O(T·c)).

    For laplace / relu2 the scale is ``1/n_valid`` of the chunk, as in MEGA's chunked path.
    """
    B, T, Z = q.shape
    c = block_len
    R = T // c
    qb, kb, vb, mb = q.view(B * R, c, Z), k.view(B * R, c, Z), v.view(B * R, c, -1), key_mask.view(B * R, c)
    out = bidir_attention_reference(qb, kb, vb, mb, None, bias=bias, attn_fn=attn_fn, window="chunk")
    return out.view(B, T, -1)


__all__ = ["ATTN_FNS", "WINDOWS", "bidir_attention_reference", "chunk_attention", "laplace", "relu2",
           "vq_attention_bidir", "window_span"]
