"""The fast path of ``vq_attention`` over whole blocks (``kernel="chunked"``), with a flash-style backward.

Spec: ``docs/transformer_vq.md`` §3.2. The eager form in ``functional.py`` stays the
definition; this computes the same thing (tests compare both with ``vq_attention_reference`` in float64).

Per block n, the keys and values it attends form one matrix each,

    K_n = [C ; k_{n-1} ; k_n]      V_n = [U_n / N_n ; v_{n-1} ; v_n]      ([S + 2L] rows),

with U_n, N_n the per-code value sums and counts of all blocks before n-1. One score matrix
``s = q_n K_nᵀ + a_n`` takes a single softmax, where the additive term a_n holds log N_n on the codeword
columns and, on the local columns, the band bias, the causal mask and the empty-slot mask. Local
column j of in-block row i is at distance ``d = i + L - j`` (previous block: j < L).

Two savings over the eager form:
- Blocks are processed in chunks whose working set (scores, keys, values and the per-block cache
  tensors: ``chunk_bytes_per_block``) stays under a byte budget. Forward keeps only its
  inputs, the output, the row log-sum-exp and one cache snapshot per chunk; backward recomputes each
  chunk's scores (one matmul more than plain autograd's six). The working memory is one chunk, reused
  chunk after chunk: on CPU, tensors sized by the whole sequence are fresh mappings the kernel must
  fault in on every step, which costs more than the extra matmul. (What stays T-sized, the inputs,
  outputs and gradients here and the model's activations around it, is reused across steps by keeping
  freed memory in the heap: ``vqformer/heap.py``. A smaller budget does not help with those.)
- The in-block rows are split into ``row_tiles`` tiles; rows ``r0..r1-1`` only need the current block's
  keys ``0..r1-1``, so the masked upper triangle of the current block is mostly never computed
  (2 tiles skip a quarter of it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

NEG_INF = float("-inf")
DEFAULT_CHUNK_BYTES = {"cpu": 8 << 20, "cuda": 1 << 30}   # CPU: well under glibc's 32 MiB mmap threshold


def _row_tiles(L: int, n: int) -> list[tuple[int, int]]:
    edges = sorted({round(L * t / n) for t in range(n + 1)})
    return list(zip(edges[:-1], edges[1:]))


def _local_layout(L: int, r0: int, r1: int, G: int, agg_cache: bool, device) -> tuple[Tensor, Tensor, int]:
    """For rows ``r0..r1-1`` of each of G groups and local columns ``0..L+r1-1``: the band-bias index
    (L+1: outside the band, a zero column), and the hidden keys from local column ``h0`` on (future keys;
    without the cache also keys farther than L; with it no previous-block key is hidden, so h0 = L)."""
    i = torch.arange(r0, r1, device=device).repeat(G)[:, None]
    d = i + L - torch.arange(L + r1, device=device)[None, :]
    idx = torch.where((d >= 0) & (d <= L), d, torch.full_like(d, L + 1))
    h0 = L if agg_cache else 0
    hidden = (d < 0)[:, h0:] if agg_cache else (d < 0) | (d > L)
    return idx, hidden, h0


def _rows(x: Tensor, G: int, r0: int, r1: int) -> Tensor:
    """Rows r0..r1-1 of every group: [..., G·L, D] -> [..., G·(r1-r0), D] (a view until flattened)."""
    return x.unflatten(-2, (G, -1))[..., r0:r1, :]


def _block_sums(z: Tensor, v: Tensor, S: int) -> Tensor:
    """Per-code value sums of each block: z [..., L], v [..., L, Dv] -> [..., S, Dv] (code S = empty slot)."""
    idx = z.unsqueeze(-1).expand(*z.shape, v.shape[-1])
    return v.new_zeros(*z.shape[:-1], S + 1, v.shape[-1]).scatter_add_(-2, idx, v)[..., :S, :]


def _block_counts(z: Tensor, S: int, dtype) -> Tensor:
    return torch.zeros(*z.shape[:-1], S + 1, dtype=dtype, device=z.device).scatter_add_(
        -1, z, torch.ones_like(z, dtype=dtype))[..., :S]


def chunk_bytes_per_block(B: int, H: int, M: int, L: int, S: int, Dk: int, Dv: int, agg_cache: bool,
                          itemsize: int) -> int:
    """Bytes one block adds to a chunk's working set, forward or backward, whichever is larger (backward).

    Not only the score tensor: per block the cache alone is a handful of [S, Dv] tensors (block sums, their
    prefix sum, the padded copy, U_n, the means, and in backward their gradient and its suffix sums), and
    the keys and values the scores read ([S+2L] x (Dk+Dv), with their gradients). With S = 512 these are
    several times the scores; counting only the scores made chunks at long T far larger than the budget.
    """
    cols = (S if agg_cache else 0) + 2 * L
    n = (2 * M * cols                        # scores, and in backward the score gradient next to them
         + 2 * cols * (Dk + Dv)              # concatenated K, V (and dK, dV in backward)
         + M * (Dk + 2 * Dv)                 # query rows, e @ V, the output tile
         + (7 * S * Dv + 4 * S if agg_cache else 0))   # sums, cumsum, padded, U, means, d_mean, suffix; counts
    return B * H * n * itemsize


def chunk_blocks(B, H, R, M, L, S, Dk, Dv, agg_cache, itemsize, chunk_bytes) -> int:
    """Blocks per chunk so that a chunk's working set stays within ``chunk_bytes`` (at least one block)."""
    per_block = chunk_bytes_per_block(B, H, M, L, S, Dk, Dv, agg_cache, itemsize)
    return max(1, min(R, chunk_bytes // per_block))


class _Chunk:
    """Keys, values and cache of blocks n0..n1-1; ``scores`` gives one row tile's scores."""

    def __init__(self, q, k_ext, v_ext, z_ext, bias, codebook, run_sum, run_cnt, n0, n1, L, agg_cache):
        acc = run_sum.dtype
        self.L, self.G, self.S, self.agg = L, q.shape[3] // L, codebook.shape[1], agg_cache
        self.q, self.bias = q[:, :, n0:n1], None if bias is None else bias[:, :, n0:n1]
        win = lambda x: x[:, :, n0:n1 + 1].flatten(2, 3).unfold(2, 2 * L, L).movedim(-1, -2)   # [B,H,c,2L,D]
        self.k_loc, self.v_loc = win(k_ext).to(acc), win(v_ext).to(acc)
        z_prev = z_ext[:, :, n0:n1]
        empty = z_prev == self.S                                             # slots before the start
        self.empty = empty if bool(empty.any()) else None
        if agg_cache:
            sums = _block_sums(z_prev, v_ext[:, :, n0:n1].to(acc), self.S)   # ext block m feeds blocks > m
            cnts = _block_counts(z_prev, self.S, acc)
            U = run_sum[:, :, None] + F.pad(sums.cumsum(2)[:, :, :-1], (0, 0, 0, 0, 1, 0))   # blocks before n
            self.N = run_cnt[:, :, None] + F.pad(cnts.cumsum(2)[:, :, :-1], (0, 0, 1, 0))
            self.after = (U[:, :, -1] + sums[:, :, -1], self.N[:, :, -1] + cnts[:, :, -1])
            B, H, c = z_prev.shape[:3]
            self.code_k = codebook.to(acc)[None, :, None].expand(B, H, c, *codebook.shape[1:])
            self.code_v = U / self.N.clamp_min(1)[..., None]
            self.log_n = torch.where(self.N > 0, self.N.clamp_min(1).log(), torch.full_like(self.N, NEG_INF))
        else:
            self.after = (run_sum, run_cnt)

    def tile(self, r0: int, r1: int, layout):
        """Scores [B,H,c,G·(r1-r0),S+L+r1] with every additive term, and the K and V they came from."""
        L, G, S_cols = self.L, self.G, self.S if self.agg else 0
        K, V = self.k_loc[..., :L + r1, :], self.v_loc[..., :L + r1, :]
        if self.agg:
            K, V = torch.cat([self.code_k, K], dim=-2), torch.cat([self.code_v, V], dim=-2)
        q = _rows(self.q, G, r0, r1).flatten(3, 4).to(K.dtype)
        s = (q @ K.transpose(-1, -2)).to(K.dtype)    # under autocast a bf16 product; the softmax stays fp32
        idx, hidden, h0 = layout
        loc = s[..., S_cols:]
        if self.bias is not None:
            b = _rows(self.bias, G, r0, r1).flatten(3, 4).to(s.dtype)
            loc += torch.gather(F.pad(b, (0, 1)), -1, idx.expand(*b.shape[:-1], L + r1))
        loc[..., h0:].masked_fill_(hidden, NEG_INF)
        if self.empty is not None:
            s[..., S_cols:S_cols + L].masked_fill_(self.empty[:, :, :, None, :], NEG_INF)
        if self.agg:
            s[..., :S_cols] += self.log_n[:, :, :, None, :]
        return s, q, K, V


class _Chunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k_ext, v_ext, z_ext, bias, codebook, agg_sum0, agg_cnt0, L, agg_cache, grad_thru_cache,
                chunk_bytes, row_tiles):
        B, H, R, M, Dk = q.shape
        S, acc = codebook.shape[1], agg_sum0.dtype
        C = chunk_blocks(B, H, R, M, L, S, Dk, v_ext.shape[-1], agg_cache, torch.finfo(acc).bits // 8, chunk_bytes)
        tiles = _row_tiles(L, row_tiles)
        ctx.geometry = (L, S, C, tiles, agg_cache, grad_thru_cache)
        dev = q.device.type     # backward runs outside autocast: it re-enters it for the same products
        ctx.amp = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
        layouts = {t: _local_layout(L, *t, M // L, agg_cache, q.device) for t in tiles}

        out = q.new_empty(B, H, R, M, v_ext.shape[-1], dtype=acc)
        lse = q.new_empty(B, H, R, M, 1, dtype=acc)
        run, snapshots = (agg_sum0, agg_cnt0), []
        for n0 in range(0, R, C):
            n1 = min(R, n0 + C)
            snapshots.append(run)
            chunk = _Chunk(q, k_ext, v_ext, z_ext, bias, codebook, *run, n0, n1, L, agg_cache)
            for r0, r1 in tiles:
                s, _, _, V = chunk.tile(r0, r1, layouts[r0, r1])
                m = s.amax(dim=-1, keepdim=True)          # finite: a row always sees its own key
                e = s.sub_(m).exp_()
                l = e.sum(dim=-1, keepdim=True)
                G = M // L
                _rows(out[:, :, n0:n1], G, r0, r1)[:] = (e @ V).to(l.dtype).div_(l).unflatten(3, (G, -1))
                _rows(lse[:, :, n0:n1], G, r0, r1)[:] = (m + l.log()).unflatten(3, (G, -1))
            run = chunk.after
        ctx.snapshots = snapshots
        ctx.save_for_backward(q, k_ext, v_ext, z_ext, bias, codebook, out, lse)
        return out

    @staticmethod
    def backward(ctx, d_out):
        dev = d_out.device.type
        with torch.autocast(dev, dtype=ctx.amp or torch.get_autocast_dtype(dev), enabled=ctx.amp is not None):
            return _Chunked._backward(ctx, d_out)

    @staticmethod
    def _backward(ctx, d_out):
        q, k_ext, v_ext, z_ext, bias, codebook, out, lse = ctx.saved_tensors
        L, S, C, tiles, agg_cache, grad_thru_cache = ctx.geometry
        R, M = q.shape[2], q.shape[3]
        G, acc = M // L, out.dtype
        S_cols = S if agg_cache else 0
        want_code = agg_cache and ctx.needs_input_grad[5]     # usually a buffer (EMA-updated): no gradient
        d_out = d_out.to(acc)
        delta = (d_out * out).sum(-1, keepdim=True)           # softmax backward: rowsum(dO ⊙ O)
        dq = torch.zeros_like(q, dtype=acc)
        dk = torch.zeros_like(k_ext, dtype=acc)
        dv = torch.zeros_like(v_ext, dtype=acc)
        dbias = None if bias is None else torch.zeros_like(bias, dtype=acc)
        dcode = torch.zeros_like(codebook, dtype=acc)
        carry = torch.zeros_like(ctx.snapshots[0][0])          # Σ dL/dU_n over the blocks after this chunk
        layouts = {t: _local_layout(L, *t, G, agg_cache, q.device) for t in tiles}
        for c in reversed(range(len(ctx.snapshots))):
            n0, n1 = c * C, min(R, (c + 1) * C)
            chunk = _Chunk(q, k_ext, v_ext, z_ext, bias, codebook, *ctx.snapshots[c], n0, n1, L, agg_cache)
            d_mean = 0.0
            for r0, r1 in tiles:
                s, qt, K, V = chunk.tile(r0, r1, layouts[r0, r1])
                rows = lambda x: _rows(x[:, :, n0:n1], G, r0, r1).flatten(3, 4)
                p = s.sub_(rows(lse)).exp_()
                do = rows(d_out)
                dV = p.transpose(-1, -2) @ do                           # [B,H,c,S_cols+L+r1,Dv]
                ds = (do @ V.transpose(-1, -2)).to(acc).sub_(rows(delta)).mul_(p)
                _rows(dq[:, :, n0:n1], G, r0, r1)[:] = (ds @ K).unflatten(3, (G, -1))
                k0 = 0 if want_code else S_cols
                dK = ds[..., k0:].transpose(-1, -2) @ qt
                dk[:, :, n0:n1] += dK[..., S_cols - k0:S_cols - k0 + L, :]          # previous block's keys
                dk[:, :, n0 + 1:n1 + 1, :r1] += dK[..., S_cols - k0 + L:, :]        # current block's keys
                dv[:, :, n0:n1] += dV[..., S_cols:S_cols + L, :]
                dv[:, :, n0 + 1:n1 + 1, :r1] += dV[..., S_cols + L:, :]
                if bias is not None:
                    idx = layouts[r0, r1][0]
                    pad = ds.new_zeros(*ds.shape[:-1], L + 2)
                    pad.scatter_add_(-1, idx.expand(*ds.shape[:-1], L + r1), ds[..., S_cols:])
                    _rows(dbias[:, :, n0:n1], G, r0, r1)[:] = pad[..., :L + 1].unflatten(3, (G, -1))
                if agg_cache:
                    d_mean = d_mean + dV[..., :S, :]
                    if want_code:
                        dcode += dK[..., :S, :].sum(dim=(0, 2))
            if agg_cache:
                # U_n = U_0 + Σ_{m<n} (sums of ext block m): dL/d(sums of block m) = Σ_{n>m} dL/dU_n.
                d_agg = d_mean / chunk.N.clamp_min(1)[..., None]                   # dL/dU_n, n in chunk
                suffix = d_agg.flip(2).cumsum(2).flip(2) + carry[:, :, None]       # Σ_{n'>=n}
                d_sums = torch.cat([suffix[:, :, 1:], carry[:, :, None]], dim=2)   # block m gets suffix[m+1]
                carry = suffix[:, :, 0]
                if grad_thru_cache:
                    z = z_ext[:, :, n0:n1]
                    padded = F.pad(d_sums, (0, 0, 0, 1))                            # row S: empty slots
                    dv[:, :, n0:n1] += torch.gather(padded, -2, z.unsqueeze(-1).expand(*z.shape, padded.shape[-1]))
        grads = [dq.to(q.dtype), dk.to(k_ext.dtype), dv.to(v_ext.dtype), None,
                 None if bias is None else dbias.to(bias.dtype), dcode.to(codebook.dtype) if agg_cache else None,
                 carry if agg_cache else None, None, None, None, None, None, None]
        return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad))


def vq_attention_chunked(q: Tensor, k_ext: Tensor, v_ext: Tensor, z_ext: Tensor, bias: Tensor | None,
                         codebook: Tensor, agg_sum0: Tensor, agg_cnt0: Tensor, block_len: int, agg_cache: bool,
                         grad_thru_cache: bool, chunk_bytes: int | None = None, row_tiles: int | None = None) -> Tensor:
    """q [B,H,R,M,Dk] (M = G·L rows per block), k_ext/v_ext/z_ext with the previous block first ([.., R+1, L, ..]),
    bias [B,H,R,M,L+1] or None, the cache before the piece ``agg_sum0 [B,H,S,Dv]``, ``agg_cnt0 [B,H,S]``.
    Returns [B,H,R,M,Dv] in the accumulation dtype."""
    if chunk_bytes is None:
        chunk_bytes = DEFAULT_CHUNK_BYTES.get(q.device.type, DEFAULT_CHUNK_BYTES["cpu"])
    if row_tiles is None:
        row_tiles = 2 if block_len >= 64 else 1       # small blocks: the saving does not pay for two matmuls
    return _Chunked.apply(q, k_ext, v_ext, z_ext, bias, codebook, agg_sum0, agg_cnt0, block_len, agg_cache,
                          grad_thru_cache, chunk_bytes, row_tiles)
