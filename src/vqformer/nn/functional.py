"""Attention kernels: linear-time VQ attention, its quadratic reference, and full attention.

Spec: ``docs/transformer_vq.md``
  §3.1  the quadratic definition (``vq_attention_reference``),
  §3.2  the blockwise linear-time form (``vq_attention``): present block, previous block and a
        compressive cache of per-code value sums and counts shifted by two blocks, one joint softmax,
  §3.3  the incremental cache update, carried between calls in ``VQAttentionState``,
  §3.5  sampling with the same state machine one token at a time.

Shapes: ``q [B, Hq, T, Dk]`` and ``k_hat, v, codes`` over ``H`` key/value heads with ``Hq = G·H``
(G = 1 for shga and mha; G = Hq for mqa, where all query heads share one codebook), ``codebook
[H, S, Dk]``, ``band_bias [B, Hq, T, L+1]`` indexed by the distance ``d = t - j``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

NEG_INF = float("-inf")
KERNELS = ("eager", "chunked", "flex")


def _softmax_dtype(x: Tensor) -> torch.dtype:
    # fp32 softmax statistics under bf16/fp16; float64 stays float64 for the exactness tests.
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------
# Quadratic definitions (tests and documentation)
# --------------------------------------------------------------------------------------------


def _expand_kv(x: Tensor, hq: int) -> Tensor:
    """Repeat the H key/value heads for the G query heads of each group: [B,H,...] -> [B,Hq,...]."""
    g = hq // x.shape[1]
    return x if g == 1 else x.repeat_interleave(g, dim=1)


def vq_attention_reference(q: Tensor, k_hat: Tensor, v: Tensor, block_len: int, *,
                           band_bias: Tensor | None = None, agg_cache: bool = True) -> Tensor:
    """§3.1: ``out[t] = sum_{j<=t} softmax_j(q_t·k_hat_j + [t-j<=L]·band_bias[t,t-j]) v_j``.

    Without the compressive cache only keys with ``t - j <= L`` are attended. O(T²) time and memory.
    """
    T, L = q.shape[2], block_len
    k_hat, v = _expand_kv(k_hat, q.shape[1]), _expand_kv(v, q.shape[1])
    s = (q @ k_hat.transpose(-1, -2)).to(_softmax_dtype(q))
    t = torch.arange(T, device=q.device)
    dist = t[:, None] - t[None, :]
    if band_bias is not None:
        in_band = (dist >= 0) & (dist <= L)
        b = torch.gather(band_bias.to(s.dtype), -1, dist.clamp(0, L).expand(*s.shape[:2], T, T))
        s = s + torch.where(in_band, b, torch.zeros_like(b))
    visible = dist >= 0 if agg_cache else (dist >= 0) & (dist <= L)
    w = torch.softmax(s.masked_fill(~visible, NEG_INF), dim=-1)
    return (w @ v.to(w.dtype)).to(v.dtype)


def full_attention_reference(q: Tensor, k: Tensor, v: Tensor, *, bias: Tensor | None = None) -> Tensor:
    """Dense causal softmax attention ``softmax(q·k + bias)`` over ``j <= t`` (fresh sequence)."""
    T = q.shape[2]
    k, v = _expand_kv(k, q.shape[1]), _expand_kv(v, q.shape[1])
    s = (q @ k.transpose(-1, -2)).to(_softmax_dtype(q))
    if bias is not None:
        s = s + bias.to(s.dtype)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    w = torch.softmax(s.masked_fill(~causal, NEG_INF), dim=-1)
    return (w @ v.to(w.dtype)).to(v.dtype)


# --------------------------------------------------------------------------------------------
# State carried between calls
# --------------------------------------------------------------------------------------------


@dataclass
class _TensorState:
    def detach(self):
        return type(self)(**{f.name: (getattr(self, f.name).detach()
                                      if isinstance(getattr(self, f.name), Tensor) else getattr(self, f.name))
                             for f in fields(self)})


@dataclass
class VQAttentionState(_TensorState):
    """What the next call of ``vq_attention`` needs (§3.5).

    ``pos`` tokens have been processed; the current (partial) block holds ``r = pos % L`` of them in
    ``cur_*``; ``prev_*`` is the last complete block (codes == S mark empty slots before the start of
    the sequence); ``agg_sum [B,H,S,Dv]`` and ``agg_count [B,H,S]`` (fp32) summarise every block before
    that one.
    """
    pos: int
    prev_k: Tensor
    prev_v: Tensor
    prev_z: Tensor
    cur_k: Tensor
    cur_v: Tensor
    cur_z: Tensor
    agg_sum: Tensor
    agg_count: Tensor

    @classmethod
    def empty(cls, k_hat: Tensor, v: Tensor, codebook: Tensor, block_len: int) -> "VQAttentionState":
        B, H, _, Dk = k_hat.shape
        S, Dv, acc = codebook.shape[1], v.shape[-1], _softmax_dtype(v)
        return cls(
            pos=0,
            prev_k=k_hat.new_zeros(B, H, block_len, Dk),
            prev_v=v.new_zeros(B, H, block_len, Dv),
            prev_z=torch.full((B, H, block_len), S, dtype=torch.long, device=k_hat.device),
            cur_k=k_hat.new_zeros(B, H, 0, Dk),
            cur_v=v.new_zeros(B, H, 0, Dv),
            cur_z=torch.zeros(B, H, 0, dtype=torch.long, device=k_hat.device),
            agg_sum=v.new_zeros(B, H, S, Dv, dtype=acc),
            agg_count=v.new_zeros(B, H, S, dtype=acc),
        )


@dataclass
class FullAttentionState(_TensorState):
    """Every key and value seen so far (the quadratic baseline's KV cache)."""
    pos: int
    k: Tensor
    v: Tensor


# --------------------------------------------------------------------------------------------
# Linear-time VQ attention (§3.2)
# --------------------------------------------------------------------------------------------


def _code_sums(z: Tensor, v: Tensor, n_code: int) -> tuple[Tensor, Tensor]:
    """Per-code sums of values and counts over the last-but-one axis; code ``n_code`` is ignored.

    z [..., n], v [..., n, Dv] -> ([..., S, Dv], [..., S]) in the accumulation dtype.
    """
    acc = _softmax_dtype(v)
    idx = z.unsqueeze(-1).expand(*z.shape, v.shape[-1])
    sums = v.new_zeros(*z.shape[:-1], n_code + 1, v.shape[-1], dtype=acc).scatter_add(-2, idx, v.to(acc))
    counts = v.new_zeros(*z.shape[:-1], n_code + 1, dtype=acc).scatter_add(
        -1, z, torch.ones_like(z, dtype=acc))
    return sums[..., :n_code, :], counts[..., :n_code]


def _attend_blocks(q: Tensor, row0: int, k_cur: Tensor, v_cur: Tensor, k_prev: Tensor, v_prev: Tensor,
                   prev_valid: Tensor, agg_sum: Tensor | None, agg_count: Tensor | None, codebook: Tensor,
                   band_bias: Tensor | None, block_len: int) -> Tensor:
    """One joint softmax over [compressive cache | previous block | current block] for R blocks.

    q [B,H,R,G,n,Dk] are the queries at in-block rows ``row0 .. row0+n-1``; the current block's keys
    k_cur [B,H,R,row0+n,Dk] start at the block boundary; k_prev [B,H,R,L,Dk] is the block before;
    agg_* [B,H,R,S,(Dv)] summarise all blocks before that (None: no compressive cache, and previous-block
    keys farther than L are masked). band_bias [B,H,R,G,n,L+1].
    """
    L, n = block_len, q.shape[-2]
    acc = _softmax_dtype(q)
    rows = torch.arange(row0, row0 + n, device=q.device)[:, None]
    d_cur = rows - torch.arange(k_cur.shape[-2], device=q.device)[None, :]      # 0..L-1 or future
    d_prev = rows + L - torch.arange(L, device=q.device)[None, :]               # 1..2L-1

    s_cur = torch.einsum("bhrgid,bhrjd->bhrgij", q, k_cur).to(acc)
    s_prev = torch.einsum("bhrgid,bhrjd->bhrgij", q, k_prev).to(acc)
    if band_bias is not None:
        bias = band_bias.to(acc)
        s_cur = s_cur + torch.gather(bias, -1, d_cur.clamp(0, L).expand(*s_cur.shape))
        b_prev = torch.gather(bias, -1, d_prev.clamp(max=L).expand(*s_prev.shape))
        s_prev = s_prev + torch.where(d_prev <= L, b_prev, torch.zeros_like(b_prev))
    s_cur = s_cur.masked_fill(d_cur < 0, NEG_INF)
    prev_mask = ~prev_valid[:, :, :, None, None, :]
    if agg_sum is None:
        prev_mask = prev_mask | (d_prev > L)
    s_prev = s_prev.masked_fill(prev_mask, NEG_INF)

    parts = [s_prev, s_cur]
    if agg_sum is not None:
        # exp(q·C_s + log N_s)·mean_s = exp(q·C_s)·sum_s: the stable form of the official code.
        log_n = torch.where(agg_count > 0, agg_count.clamp_min(1).log(), torch.full_like(agg_count, NEG_INF))
        s_agg = torch.einsum("bhrgid,hsd->bhrgis", q, codebook.to(q.dtype)).to(acc) + log_n[:, :, :, None, None, :]
        parts.insert(0, s_agg)
    w = torch.softmax(torch.cat(parts, dim=-1), dim=-1)
    w_parts = w.split([p.shape[-1] for p in parts], dim=-1)

    # Under autocast each value product runs in low precision; the three parts are summed in fp32.
    out = torch.einsum("bhrgij,bhrjd->bhrgid", w_parts[-1], v_cur.to(acc)).to(acc)
    out = out + torch.einsum("bhrgij,bhrjd->bhrgid", w_parts[-2], v_prev.to(acc)).to(acc)
    if agg_sum is not None:
        mean = agg_sum / agg_count.clamp_min(1)[..., None]
        out = out + torch.einsum("bhrgis,bhrsd->bhrgid", w_parts[0], mean).to(acc)
    return out


def _split_heads(x: Tensor | None, h: int) -> Tensor | None:
    """[B, G·H, T, ...] -> [B, H, G, T, ...] (query heads of one group are contiguous)."""
    if x is None:
        return None
    return x.view(x.shape[0], h, x.shape[1] // h, *x.shape[2:])


def _aligned(q, k, v, z, bias, codebook, st: VQAttentionState, L: int, agg_cache: bool, grad_thru_cache: bool,
             kernel: str = "eager", chunk_bytes: int | None = None, row_tiles: int | None = None):
    """A piece of R whole blocks starting at a block boundary: all blocks in one batched pass."""
    B, H, G, T, Dk = q.shape
    R, S = T // L, codebook.shape[1]
    # Block -1 (relative) is the state's previous block; blocks 0..R-1 are the new ones.
    k_ext = torch.cat([st.prev_k[:, :, None], k.reshape(B, H, R, L, Dk)], dim=2)
    v_ext = torch.cat([st.prev_v[:, :, None], v.reshape(B, H, R, L, -1)], dim=2)
    z_ext = torch.cat([st.prev_z[:, :, None], z.reshape(B, H, R, L)], dim=2)
    qb = q.reshape(B, H, G, R, L, Dk).transpose(2, 3)
    bb = None if bias is None else bias.reshape(B, H, G, R, L, -1).transpose(2, 3)
    if kernel == "chunked":
        return _aligned_chunked(qb, bb, k_ext, v_ext, z_ext, codebook, st, L, agg_cache, grad_thru_cache,
                                chunk_bytes, row_tiles)

    # Per-block code sums, prefix-summed: block n reads the cache of blocks <= n-2 (§3.2: shift by two).
    blk_sum, blk_cnt = _code_sums(z_ext, v_ext if grad_thru_cache else v_ext.detach(), S)
    cum_sum, cum_cnt = blk_sum.cumsum(2), blk_cnt.cumsum(2)
    agg_sum = st.agg_sum[:, :, None] + F.pad(cum_sum[:, :, : R - 1], (0, 0, 0, 0, 1, 0))
    agg_cnt = st.agg_count[:, :, None] + F.pad(cum_cnt[:, :, : R - 1], (0, 0, 1, 0))

    if kernel == "flex":
        from .vq_flex import vq_attention_flex

        o = vq_attention_flex(q.flatten(1, 2), k, v, z, None if bias is None else bias.flatten(1, 2),
                              st.prev_k, st.prev_v, st.prev_z, agg_sum if agg_cache else None,
                              agg_cnt if agg_cache else None, codebook, L)
        out = o.view(B, H, G, R, L, -1).transpose(2, 3)
    else:
        out = _attend_blocks(qb, 0, k_ext[:, :, 1:], v_ext[:, :, 1:], k_ext[:, :, :-1], v_ext[:, :, :-1],
                             z_ext[:, :, :-1] < S, agg_sum if agg_cache else None,
                             agg_cnt if agg_cache else None, codebook, bb, L)
    new = VQAttentionState(pos=st.pos + T, prev_k=k_ext[:, :, -1], prev_v=v_ext[:, :, -1], prev_z=z_ext[:, :, -1],
                           cur_k=st.cur_k, cur_v=st.cur_v, cur_z=st.cur_z,
                           agg_sum=st.agg_sum + cum_sum[:, :, R - 1], agg_count=st.agg_count + cum_cnt[:, :, R - 1])
    return out.transpose(2, 3).reshape(B, H, G, T, -1), new


def _aligned_chunked(qb, bb, k_ext, v_ext, z_ext, codebook, st: VQAttentionState, L: int, agg_cache: bool,
                     grad_thru_cache: bool, chunk_bytes: int | None, row_tiles: int | None):
    """``_aligned`` through the chunked kernel with a recomputing backward (``vq_chunked.py``)."""
    from .vq_chunked import vq_attention_chunked

    B, H, R, G = qb.shape[:4]
    S, M = codebook.shape[1], G * L
    bias = None if bb is None else bb.reshape(B, H, R, M, L + 1)
    out = vq_attention_chunked(qb.reshape(B, H, R, M, -1), k_ext, v_ext, z_ext, bias, codebook,
                               st.agg_sum, st.agg_count, L, agg_cache, grad_thru_cache, chunk_bytes, row_tiles)
    # The cache after the piece: every block but the last (which becomes the previous block).
    v_old = v_ext[:, :, :R] if grad_thru_cache else v_ext[:, :, :R].detach()
    sums, counts = _code_sums(z_ext[:, :, :R].flatten(2), v_old.flatten(2, 3), S)
    new = VQAttentionState(pos=st.pos + R * L, prev_k=k_ext[:, :, -1], prev_v=v_ext[:, :, -1], prev_z=z_ext[:, :, -1],
                           cur_k=st.cur_k, cur_v=st.cur_v, cur_z=st.cur_z,
                           agg_sum=st.agg_sum + sums, agg_count=st.agg_count + counts)
    return out.reshape(B, H, R, G, L, -1).transpose(2, 3).reshape(B, H, G, R * L, -1), new


def _in_block(q, k, v, z, bias, codebook, st: VQAttentionState, L: int, agg_cache: bool, grad_thru_cache: bool):
    """A piece that stays inside the current block (sampling, or the ragged ends of a piece)."""
    S, r, n = codebook.shape[1], st.pos % L, q.shape[3]
    k_cur, v_cur, z_cur = (torch.cat([st.cur_k, k], 2), torch.cat([st.cur_v, v], 2), torch.cat([st.cur_z, z], 2))
    add = lambda x: x[:, :, None]
    out = _attend_blocks(add(q), r, add(k_cur), add(v_cur), add(st.prev_k), add(st.prev_v), add(st.prev_z < S),
                         add(st.agg_sum) if agg_cache else None, add(st.agg_count) if agg_cache else None,
                         codebook, None if bias is None else add(bias), L)
    if r + n < L:
        new = VQAttentionState(st.pos + n, st.prev_k, st.prev_v, st.prev_z, k_cur, v_cur, z_cur,
                               st.agg_sum, st.agg_count)
    else:  # the block is complete: the previous block joins the cache, the current one becomes previous
        s, c = _code_sums(st.prev_z, st.prev_v if grad_thru_cache else st.prev_v.detach(), S)
        new = VQAttentionState(st.pos + n, k_cur, v_cur, z_cur, k_cur[:, :, :0], v_cur[:, :, :0], z_cur[:, :, :0],
                               st.agg_sum + s, st.agg_count + c)
    return out[:, :, 0], new


def vq_attention(q: Tensor, k_hat: Tensor, v: Tensor, codes: Tensor, codebook: Tensor, block_len: int, *,
                 band_bias: Tensor | None = None, agg_cache: bool = True, state: VQAttentionState | None = None,
                 grad_thru_cache: bool = True, kernel: str = "chunked", chunk_bytes: int | None = None,
                 row_tiles: int | None = None) -> tuple[Tensor, VQAttentionState]:
    """Causal softmax attention over quantized keys in time and memory linear in T (§3.2).

    Equals ``vq_attention_reference`` on the whole history: calling it on consecutive pieces with the
    returned state (whole blocks, single tokens, or any split) gives the output of one call. Work per
    block is O(L·(S + 2L)); no T×T tensor is formed. ``grad_thru_cache=False`` stops the gradient into
    values through the compressive cache (the official ``grad_thru_cache=0``; the two local blocks keep it).

    ``kernel`` picks the implementation of whole-block pieces: ``"eager"`` is the readable definition
    (all blocks batched, plain autograd); ``"chunked"`` (``vq_chunked.py``) computes the same in chunks
    of blocks with a recomputing backward, so its working memory does not grow with T (``chunk_bytes``
    bounds one chunk's working set: scores, keys, values and cache tensors; default 8 MiB on CPU, 1 GiB on CUDA; ``row_tiles`` splits each block's
    rows so that most of the causal mask is skipped; default 2 for L >= 64); ``"flex"`` (``vq_flex.py``)
    is one fused FlexAttention call, the GPU path. Pieces inside one block (sampling, ragged ends) always
    take the eager path.

    Mixed precision: under autocast (bf16/fp16) the score and value products run in the low precision;
    scores are cast to fp32 before the softmax, whose statistics (max, log-sum-exp), the codebook counts
    and the per-code value sums stay in fp32 in every kernel.
    """
    if kernel not in KERNELS:
        raise ValueError(f"vq_attention: kernel={kernel!r} is unknown; choose one of {KERNELS}")
    B, Hq, T, Dk = q.shape
    H, L = k_hat.shape[1], block_len
    if Hq % H or codebook.shape[0] != H or codes.shape != k_hat.shape[:3]:
        raise ValueError(f"vq_attention: incompatible shapes q {tuple(q.shape)}, k_hat {tuple(k_hat.shape)}, "
                         f"codes {tuple(codes.shape)}, codebook {tuple(codebook.shape)}")
    if band_bias is not None and band_bias.shape != (B, Hq, T, L + 1):
        raise ValueError(f"vq_attention: band_bias must be {(B, Hq, T, L + 1)}, got {tuple(band_bias.shape)}")
    st = VQAttentionState.empty(k_hat, v, codebook, L) if state is None else state
    qg, bg = _split_heads(q, H), _split_heads(band_bias, H)

    outs, t = [], 0
    while t < T:
        r = st.pos % L
        n = (T - t) // L * L if r == 0 and T - t >= L else min(L - r, T - t)
        sl = slice(t, t + n)
        args = (qg[:, :, :, sl], k_hat[:, :, sl], v[:, :, sl], codes[:, :, sl],
                None if bg is None else bg[:, :, :, sl], codebook, st, L, agg_cache, grad_thru_cache)
        o, st = (_aligned(*args, kernel=kernel, chunk_bytes=chunk_bytes, row_tiles=row_tiles)
                 if r == 0 and n >= L else _in_block(*args))
        outs.append(o)
        t += n
    if not outs:
        return v.new_zeros(B, Hq, 0, v.shape[-1]), st
    out = torch.cat(outs, dim=3) if len(outs) > 1 else outs[0]
    return out.reshape(B, Hq, T, -1).to(v.dtype), st


# --------------------------------------------------------------------------------------------
# Full (quadratic) attention, the paper's baseline
# --------------------------------------------------------------------------------------------


def full_attention(q: Tensor, k: Tensor, v: Tensor, *, bias: Tensor | None = None,
                   state: FullAttentionState | None = None) -> tuple[Tensor, FullAttentionState]:
    """Causal softmax attention over every earlier key, through ``scaled_dot_product_attention``.

    ``bias [B,Hq,T,P+T]`` is added to the scores against all P cached and T new keys (the module builds
    the Transformer-XL relative term there). Scores are ``q·k`` unscaled: the module has already scaled q
    and k by D_k^-1/4 each. The state keeps every key and value (quadratic memory: it is the baseline).
    """
    B, Hq, T, _ = q.shape
    if state is not None:
        k, v = torch.cat([state.k, k], 2), torch.cat([state.v, v], 2)
    P = k.shape[2] - T
    new = FullAttentionState(pos=(0 if state is None else state.pos) + T, k=k, v=v)
    ke, ve = _expand_kv(k, Hq), _expand_kv(v, Hq)
    if bias is None and P == 0:
        return F.scaled_dot_product_attention(q, ke, ve, is_causal=True, scale=1.0), new
    causal = torch.ones(T, P + T, dtype=torch.bool, device=q.device).tril(diagonal=P)
    mask = torch.zeros(T, P + T, dtype=q.dtype, device=q.device).masked_fill(~causal, NEG_INF)
    if bias is not None:
        mask = mask + bias.to(q.dtype)
    return F.scaled_dot_product_attention(q, ke, ve, attn_mask=mask, scale=1.0), new


def relative_distances(t_q: int, pos: int, t_k: int, device=None) -> Tensor:
    """Distance ``d = t - j`` between the T query positions ``pos..pos+T-1`` and key positions ``0..t_k-1``
    counted from ``pos + t_q - t_k`` (the first key held); negative for future keys."""
    tq = torch.arange(pos, pos + t_q, device=device)[:, None]
    tk = torch.arange(pos + t_q - t_k, pos + t_q, device=device)[None, :]
    return tq - tk


__all__ = ["vq_attention", "vq_attention_reference", "full_attention", "full_attention_reference",
           "VQAttentionState", "FullAttentionState", "relative_distances"]

