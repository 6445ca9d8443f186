"""VQ attention over whole blocks as one FlexAttention call (``kernel="flex"``), the fused path for GPUs.

Spec: ``docs/transformer_vq.md`` (the blockwise form, §3.2 of the paper). The eager form in
``functional.py`` stays the definition; this computes the same softmax with a fused kernel that never
materialises score blocks.

Layout. FlexAttention attends one query sequence to one key sequence; the compressive cache differs per
block (block n reads the per-code value means U_n/N_n of all blocks before n-1), so the key sequence holds
one copy of the codebook per query block, then the local keys with the state's previous block first:

    keys   = [C (block 0) | C (block 1) | ... | C (block R-1) | k_{-1} | k_0 | ... | k_{R-1}]
    values = [U_0/N_0     | U_1/N_1     | ... | U_{R-1}/N_{R-1} | v_{-1} | v_0 | ... | v_{R-1}]

(R·S + (R+1)·L keys: linear in T). The block mask lets query block n see its own codebook copy and local
blocks n-1 and n (causal); ``score_mod`` adds log N_n on the codeword keys and the band bias on local
keys at distance d <= L, and -inf on empty slots (before the start of the sequence) and on empty codes.

FlexAttention runs on CPU only through ``torch.compile``, in fp32/bf16/fp16 and without backward
(torch 2.13). So on CPU: float64 without gradient goes through torch's own eager FlexAttention (a dense
evaluation of the same mods), gradients through ``_blockwise`` (the same ``score_mod`` and mask evaluated
block by block with autograd, linear memory). The fused backward itself is checked by the ``gpu`` tests.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

NEG_INF = float("-inf")
BACKENDS = ("auto", "compiled", "eager", "blockwise")
_compiled = None


def _compiled_flex():
    global _compiled
    if _compiled is None:      # one compiled function per process; dynamo caches one graph per shape
        _compiled = torch.compile(flex_attention, dynamic=False)
    return _compiled


def _mods(R: int, L: int, S: int, G: int, C: int, log_n: Tensor | None, bias: Tensor | None, empty: Tensor):
    """``score_mod`` and ``mask_mod`` of the layout above, as plain closures over ints and tensors (what
    FlexAttention and torch.compile expect: no per-call objects to guard on). ``C`` codeword keys come
    first (R·S with the cache, else 0); query head h reads key/value head h // G."""

    def score_mod(score, b, h, q_idx, kv_idx):
        hk, n = h // G, q_idx // L
        j = (kv_idx - C).clamp(min=0)               # local key j is token j - L of the piece
        d = q_idx + L - j
        local = score
        if bias is not None:
            band = bias[b, h, q_idx, d.clamp(0, L)]
            local = local + torch.where((d >= 0) & (d <= L), band, torch.zeros_like(band))
        local = torch.where(empty[b, hk, j], NEG_INF, local)
        if C == 0:
            return local
        return torch.where(kv_idx < C, score + log_n[b, hk, n, kv_idx % S], local)

    def mask_mod(b, h, q_idx, kv_idx):
        n = q_idx // L
        j = kv_idx - C
        d = q_idx + L - j
        local = (j >= n * L) & (d >= 0)             # blocks n-1 and n, causal
        if C == 0:
            return local & (d <= L)                  # no cache: only the band
        return ((kv_idx < C) & (kv_idx // S == n)) | ((kv_idx >= C) & local)

    return score_mod, mask_mod


def _kv_index(R: int, L: int, S: int, C: int, device) -> Tensor:
    """[R, S+2L] (or [R, 2L]): the keys query block n may see, for the blockwise evaluation."""
    n = torch.arange(R, device=device)[:, None]
    loc = C + n * L + torch.arange(2 * L, device=device)[None, :]
    if C == 0:
        return loc
    return torch.cat([n * S + torch.arange(S, device=device)[None, :], loc], dim=1)


def _blockwise(q: Tensor, K: Tensor, V: Tensor, R: int, L: int, S: int, C: int, score_mod, mask_mod,
               acc: torch.dtype) -> Tensor:
    """The mods evaluated on each query block's [B,H,G,L,S+2L] scores, with plain autograd."""
    B, Hq, T, Dk = q.shape
    H = K.shape[1]
    G = Hq // H
    idx = _kv_index(R, L, S, C, q.device)                            # [R, J]
    Kb, Vb = K[:, :, idx], V[:, :, idx]                              # [B,H,R,J,D]
    qb = q.reshape(B, H, G, R, L, Dk)
    s = torch.einsum("bhgrid,bhrjd->bhgrij", qb, Kb).to(acc)
    ar = lambda n, dim: torch.arange(n, device=q.device).view([-1 if i == dim else 1 for i in range(6)])
    b, h = ar(B, 0), ar(H, 1) * G + ar(G, 2)
    q_idx = ar(R, 3) * L + ar(L, 4)
    kv = idx.view(1, 1, 1, R, 1, -1)
    s = score_mod(s, b, h, q_idx, kv).masked_fill(~mask_mod(b, h, q_idx, kv), NEG_INF)
    w = torch.softmax(s, dim=-1)
    out = torch.einsum("bhgrij,bhrjd->bhgrid", w, Vb.to(acc))
    return out.reshape(B, Hq, T, -1)


def vq_attention_flex(q: Tensor, k: Tensor, v: Tensor, z: Tensor, bias: Tensor | None, prev_k: Tensor,
                      prev_v: Tensor, prev_z: Tensor, agg_sum: Tensor | None, agg_cnt: Tensor | None,
                      codebook: Tensor, block_len: int, backend: str = "auto",
                      max_value_dim: int | None = None) -> Tensor:
    """R whole blocks: q [B,Hq,T,Dk], k/v/z over H key/value heads, bias [B,Hq,T,L+1] or None, the state's
    previous block ``prev_* [B,H,L,...]``, the cache each block reads ``agg_sum [B,H,R,S,Dv]``,
    ``agg_cnt [B,H,R,S]`` (fp32/fp64; None without the cache). Returns [B,Hq,T,Dv] in the accumulation dtype.

    ``backend``: ``compiled`` (torch.compile'd FlexAttention, the GPU path), ``eager`` (torch's dense
    FlexAttention, no gradient on CPU), ``blockwise`` (same mods, autograd); ``auto`` picks compiled on
    CUDA and, on CPU, blockwise when a gradient is needed, eager for float64, compiled otherwise.
    ``max_value_dim`` splits wide values (shga's D_v = 1536) into several calls over the same scores, each
    exact; default 256 on CUDA, where the fused kernel keeps a value tile per block in shared memory.
    """
    if backend not in BACKENDS:
        raise ValueError(f"vq_attention_flex: backend={backend!r} is unknown; choose one of {BACKENDS}")
    B, Hq, T, Dk = q.shape
    H, L, S = k.shape[1], block_len, codebook.shape[1]
    R, G = T // L, Hq // H
    acc = torch.float64 if v.dtype == torch.float64 else torch.float32
    agg = agg_sum is not None
    K, V = torch.cat([prev_k, k], 2), torch.cat([prev_v, v], 2)
    empty = torch.cat([prev_z, z], 2) == S
    log_n = None
    if agg:
        # Sums and counts stay in the accumulation dtype; their mean goes into the value product.
        K = torch.cat([codebook.to(K.dtype)[None, :, None].expand(B, H, R, S, Dk).reshape(B, H, R * S, Dk), K], 2)
        V = torch.cat([(agg_sum / agg_cnt.clamp_min(1)[..., None]).to(V.dtype).flatten(2, 3), V], 2)
        log_n = torch.where(agg_cnt > 0, agg_cnt.clamp_min(1).log(), torch.full_like(agg_cnt, NEG_INF)).to(acc)
    C = R * S if agg else 0
    score_mod, mask_mod = _mods(R, L, S, G, C, log_n, None if bias is None else bias.to(acc), empty)

    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                 for t in (q, K, V, bias))
    if backend == "auto":
        if q.device.type == "cuda":
            backend = "compiled"
        else:
            backend = "blockwise" if needs_grad else ("eager" if acc == torch.float64 else "compiled")
    if backend == "blockwise":
        return _blockwise(q, K, V, R, L, S, C, score_mod, mask_mod, acc)

    if needs_grad and q.device.type != "cuda":
        raise NotImplementedError("vq_attention_flex: FlexAttention has no backward on CPU (torch 2.13); "
                                  "use backend='blockwise' (the default on CPU) or model.kernel=chunked")
    if not needs_grad:       # FlexAttention refuses CPU inputs that require grad even under no_grad
        q, K, V = q.detach(), K.detach(), V.detach()
    # Low precision (autocast) for the two products; FlexAttention keeps the softmax statistics in fp32.
    dev = q.device.type
    low = (torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev)
           else q.dtype if q.dtype in (torch.bfloat16, torch.float16) else None)
    if low is not None and acc != torch.float64:
        q, K, V = q.to(low), K.to(low), V.to(low)
    else:
        q, K, V = q.to(acc), K.to(acc), V.to(acc)
    # Past ~64M entries build the mask block by block (compiled) instead of as one dense [T, keys] tensor.
    mask = create_block_mask(mask_mod, None, None, T, K.shape[2], device=q.device,
                             BLOCK_SIZE=min(128, L) if dev != "cuda" else 128, _compile=T * K.shape[2] > 1 << 26)
    fn = _compiled_flex() if backend == "compiled" else flex_attention
    width = max_value_dim or (256 if dev == "cuda" else V.shape[-1])
    with torch.autocast(dev, enabled=False):
        out = torch.cat([fn(q, K, Vc, score_mod=score_mod, block_mask=mask, scale=1.0, enable_gqa=G > 1)
                         for Vc in V.split(width, dim=-1)], dim=-1)
    return out.to(acc)


__all__ = ["vq_attention_flex", "BACKENDS"]
