"""The fast path of ``vq_attention`` over whole blocks (``kernel="chunked"``), with a flash-style backward.

Spec: ``shared/research/transformer_vq.md`` §3.2. The eager form in ``functional.py`` stays the
definition; this computes the same thing (tests compare both with ``vq_attention_reference`` in float64).

Per block n, the keys and values it attends form one matrix each,

    K_n = [C ; k_{n-1} ; k_n]      V_n = [U_n / N_n ; v_{n-1} ; v_n]      ([S + 2L] rows),

with U_n, N_n the per-code value sums and counts of all blocks before n-1. One score matrix
``s = q_n K_nᵀ + a_n`` takes a single softmax, where the additive term a_n holds log N_n on the codeword
columns and, on the 2L local columns, the band bias, the causal mask and the empty-slot mask. The
local columns of row i and column j are at distance ``d = i + L - j`` for both blocks at once.

Blocks are processed in chunks whose score tensor stays under a byte budget. Forward keeps only its
inputs, the output, the row log-sum-exp and one cache snapshot per chunk; backward recomputes each
chunk's scores (one matmul more than plain autograd's six). The working memory is therefore one chunk,
reused chunk after chunk. On CPU this matters more than the extra matmul: tensors sized by the whole
sequence are fresh mappings the kernel must fault in on every step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

NEG_INF = float("-inf")
DEFAULT_CHUNK_BYTES = {"cpu": 8 << 20, "cuda": 1 << 30}   # CPU: well under glibc's 32 MiB mmap threshold


def _local_layout(L: int, M: int, agg_cache: bool, device) -> tuple[Tensor, Tensor]:
    """Band-bias index [M, 2L] (L+1: outside the band, a zero column) and the hidden local keys: [M, L] of
    the current block (future keys) with the cache, [M, 2L] without it (also keys farther than L)."""
    i = torch.arange(M, device=device)[:, None] % L              # in-block row (rows are G groups of L)
    d = i + L - torch.arange(2 * L, device=device)[None, :]      # prev block 1..2L-1, current block <= L-1
    idx = torch.where((d >= 0) & (d <= L), d, torch.full_like(d, L + 1))
    hidden = (d < 0)[:, L:] if agg_cache else (d < 0) | (d > L)
    return idx, hidden


def _block_sums(z: Tensor, v: Tensor, S: int) -> Tensor:
    """Per-code value sums of each block: z [..., L], v [..., L, Dv] -> [..., S, Dv] (code S = empty slot)."""
    idx = z.unsqueeze(-1).expand(*z.shape, v.shape[-1])
    return v.new_zeros(*z.shape[:-1], S + 1, v.shape[-1]).scatter_add_(-2, idx, v)[..., :S, :]


def _block_counts(z: Tensor, S: int, dtype) -> Tensor:
    return torch.zeros(*z.shape[:-1], S + 1, dtype=dtype, device=z.device).scatter_add_(
        -1, z, torch.ones_like(z, dtype=dtype))[..., :S]


class _Chunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k_ext, v_ext, z_ext, bias, codebook, agg_sum0, agg_cnt0, L, agg_cache, grad_thru_cache,
                chunk_bytes):
        B, H, R, M, Dk = q.shape
        S, acc = codebook.shape[1], agg_sum0.dtype
        n_cols = (S if agg_cache else 0) + 2 * L
        per_block = B * H * M * n_cols * torch.finfo(acc).bits // 8
        C = max(1, min(R, chunk_bytes // max(per_block, 1)))
        idx, hidden = _local_layout(L, M, agg_cache, q.device)
        ctx.geometry = (L, S, C, agg_cache, grad_thru_cache)

        out = q.new_empty(B, H, R, M, v_ext.shape[-1], dtype=acc)
        lse = q.new_empty(B, H, R, M, dtype=acc)
        run_sum, run_cnt, snapshots = agg_sum0, agg_cnt0, []
        for n0 in range(0, R, C):
            n1 = min(R, n0 + C)
            snapshots.append((run_sum, run_cnt))
            s, V, _, (run_sum, run_cnt) = _scores(q, k_ext, v_ext, z_ext, bias, codebook, run_sum, run_cnt,
                                                  n0, n1, idx, hidden, L, S, agg_cache)
            m = s.amax(dim=-1, keepdim=True)                  # finite: a row always sees its own key
            e = s.sub_(m).exp_()
            l = e.sum(dim=-1, keepdim=True)
            out[:, :, n0:n1] = (e @ V).div_(l)
            lse[:, :, n0:n1] = (m + l.log()).squeeze(-1)
        ctx.snapshots = snapshots
        ctx.save_for_backward(q, k_ext, v_ext, z_ext, bias, codebook, out, lse)
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k_ext, v_ext, z_ext, bias, codebook, out, lse = ctx.saved_tensors
        L, S, C, agg_cache, grad_thru_cache = ctx.geometry
        B, H, R, M, Dk = q.shape
        acc = out.dtype
        idx, hidden = _local_layout(L, M, agg_cache, q.device)
        d_out = d_out.to(acc)
        dq = torch.zeros_like(q, dtype=acc)
        dk = torch.zeros_like(k_ext, dtype=acc)
        dv = torch.zeros_like(v_ext, dtype=acc)
        dbias = None if bias is None else torch.zeros_like(bias, dtype=acc)
        dcode = torch.zeros_like(codebook, dtype=acc)
        carry = torch.zeros_like(ctx.snapshots[0][0])            # Σ dL/dU_n over the blocks after this chunk
        S_cols = S if agg_cache else 0
        want_code = agg_cache and ctx.needs_input_grad[5]
        for c in reversed(range(len(ctx.snapshots))):
            n0, n1 = c * C, min(R, (c + 1) * C)
            run_sum, run_cnt = ctx.snapshots[c]
            s, V, K, (cnt, _) = _scores(q, k_ext, v_ext, z_ext, bias, codebook, run_sum, run_cnt,
                                        n0, n1, idx, hidden, L, S, agg_cache, keep_counts=True)
            p = s.sub_(lse[:, :, n0:n1, :, None]).exp_()
            do = d_out[:, :, n0:n1]
            dV = p.transpose(-1, -2) @ do                               # [B,H,c,S_cols+2L,Dv]
            ds = do @ V.transpose(-1, -2)
            ds.sub_((do * out[:, :, n0:n1]).sum(-1, keepdim=True)).mul_(p)   # softmax backward
            dq[:, :, n0:n1] = ds @ K
            # The codebook is usually a buffer (EMA-updated): then only the local keys' gradient is needed.
            k0 = 0 if want_code else S_cols
            dK = ds[..., k0:].transpose(-1, -2) @ q[:, :, n0:n1].to(acc)
            dk[:, :, n0:n1] += dK[..., S_cols - k0:S_cols - k0 + L, :]          # previous block's keys
            dk[:, :, n0 + 1:n1 + 1] += dK[..., S_cols - k0 + L:, :]             # current block's keys
            dv[:, :, n0:n1] += dV[..., S_cols:S_cols + L, :]
            dv[:, :, n0 + 1:n1 + 1] += dV[..., S_cols + L:, :]
            if bias is not None:
                pad = ds.new_zeros(*ds.shape[:-1], L + 2)
                pad.scatter_add_(-1, idx.expand(*ds.shape[:-1], 2 * L), ds[..., S_cols:])
                dbias[:, :, n0:n1] = pad[..., :L + 1]
            if agg_cache:
                if want_code:
                    dcode += dK[..., :S, :].sum(dim=(0, 2))
                # U_n = U_0 + Σ_{m<n} (sums of ext block m): dL/d(sums of block m) = Σ_{n>m} dL/dU_n.
                d_agg = dV[..., :S, :] / cnt.clamp_min(1)[..., None]                  # dL/dU_n, n in chunk
                suffix = d_agg.flip(2).cumsum(2).flip(2) + carry[:, :, None]       # Σ_{n'>=n}
                d_sums = torch.cat([suffix[:, :, 1:], carry[:, :, None]], dim=2)   # block m gets suffix[m+1]
                carry = suffix[:, :, 0]
                if grad_thru_cache:
                    z = z_ext[:, :, n0:n1]
                    padded = torch.cat([d_sums, d_sums.new_zeros(*d_sums.shape[:-2], 1, d_sums.shape[-1])], -2)
                    dv[:, :, n0:n1] += torch.gather(padded, -2, z.unsqueeze(-1).expand(*z.shape, padded.shape[-1]))
        grads = [dq.to(q.dtype), dk.to(k_ext.dtype), dv.to(v_ext.dtype), None,
                 None if bias is None else dbias.to(bias.dtype), dcode.to(codebook.dtype) if agg_cache else None,
                 carry if agg_cache else None, None, None, None, None, None]
        return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad))


def _scores(q, k_ext, v_ext, z_ext, bias, codebook, run_sum, run_cnt, n0, n1, idx, hidden, L, S, agg_cache,
            keep_counts=False):
    """Scores [B,H,c,M,S+2L] (additive terms included), V and K of blocks n0..n1-1, and the cache after them."""
    B, H, _, M, Dk = q.shape
    acc = run_sum.dtype
    win = lambda x: x[:, :, n0:n1 + 1].flatten(2, 3).unfold(2, 2 * L, L).movedim(-1, -2)   # [B,H,c,2L,D]
    K, V = win(k_ext).to(acc), win(v_ext).to(acc)
    c = n1 - n0
    z_prev = z_ext[:, :, n0:n1]
    if agg_cache:
        sums = _block_sums(z_prev, v_ext[:, :, n0:n1].to(acc), S)        # ext block m feeds blocks > m
        cnts = _block_counts(z_prev, S, acc)
        U = run_sum[:, :, None] + F.pad(sums.cumsum(2)[:, :, :-1], (0, 0, 0, 0, 1, 0))   # blocks before n
        N = run_cnt[:, :, None] + F.pad(cnts.cumsum(2)[:, :, :-1], (0, 0, 1, 0))
        K = torch.cat([codebook.to(acc)[None, :, None].expand(B, H, c, S, Dk), K], dim=-2)
        V = torch.cat([U / N.clamp_min(1)[..., None], V], dim=-2)
        after = (U[:, :, -1] + sums[:, :, -1], N[:, :, -1] + cnts[:, :, -1])
    else:
        N, after = None, (run_sum, run_cnt)
    s = q[:, :, n0:n1].to(acc) @ K.transpose(-1, -2)
    S_cols = S if agg_cache else 0
    loc = s[..., S_cols:]
    if bias is not None:
        b = bias[:, :, n0:n1].to(acc)
        b = torch.cat([b, b.new_zeros(*b.shape[:-1], 1)], dim=-1)
        loc += torch.gather(b, -1, idx.expand(*b.shape[:-1], 2 * L))
    loc[..., 2 * L - hidden.shape[-1]:].masked_fill_(hidden, NEG_INF)
    empty = z_prev == S                                                  # slots before the sequence start
    if empty.any():
        s[..., S_cols:S_cols + L].masked_fill_(empty[:, :, :, None, :], NEG_INF)
    if agg_cache:
        s[..., :S] += torch.where(N > 0, N.clamp_min(1).log(), torch.full_like(N, NEG_INF))[:, :, :, None, :]
    return s, V, K, ((N, None) if keep_counts else after)


def vq_attention_chunked(q: Tensor, k_ext: Tensor, v_ext: Tensor, z_ext: Tensor, bias: Tensor | None,
                         codebook: Tensor, agg_sum0: Tensor, agg_cnt0: Tensor, block_len: int, agg_cache: bool,
                         grad_thru_cache: bool, chunk_bytes: int | None = None) -> Tensor:
    """q [B,H,R,M,Dk] (M = G·L rows per block), k_ext/v_ext/z_ext with the previous block first ([.., R+1, L, ..]),
    bias [B,H,R,M,L+1] or None, the cache before the piece ``agg_sum0 [B,H,S,Dv]``, ``agg_cnt0 [B,H,S]``.
    Returns [B,H,R,M,Dv] in the accumulation dtype."""
    if chunk_bytes is None:
        chunk_bytes = DEFAULT_CHUNK_BYTES.get(q.device.type, DEFAULT_CHUNK_BYTES["cpu"])
    return _Chunked.apply(q, k_ext, v_ext, z_ext, bias, codebook, agg_sum0, agg_cnt0, block_len, agg_cache,
                          grad_thru_cache, chunk_bytes)
