"""Online vector-quantized attention (OVQ): per-sequence key/value dictionaries grown during the forward pass.

Spec: ``docs/ovq.md`` §1.3 (a reconstruction, marked so there; every uncertain choice is a
switch in ``OVQOptions``):
  1. read-out: ``o_t = Σ_i softmax_i(β·score(q_t, D_k[i]) + log n_i) D_v[i]`` over the active rows
     (``read``: ``gmr`` keeps the −½‖μ‖² term of the Gaussian-mixture-regression view, ``cosine`` reads
     renormalised centroids, ``dot`` drops the term),
  2. hard assignment of each key to the best row (the β→∞ limit of the same score, without counts),
  3. update: ``step="count"`` keeps each centroid the exact running mean (step m_i/n_i, the Newton step);
     ``step="constant"`` moves it by a fixed ``step_const`` per assigned token, in token order,
  4. growth to ``N(t)`` rows after ``t`` tokens (``saturating`` s·t/(s+t), ``dp`` s·log(1+t/s), ``linear``
     n_max·t/s; capped at ``n_max``), new rows seeded from the chunk's keys (``farthest``: max–min distance,
     k-means++-like; ``random``: a seeded uniform draw), each seed assigned to its own row,
  5. chunks of ``chunk_len`` tokens aligned to absolute positions: a chunk reads the dictionary left by the
     earlier chunks (plus, with ``local``, exact attention to its own earlier tokens), then is merged,
  6. gradients: assignments, growth, seeds and counts are constants; centroids are differentiable weighted
     means of keys and values, so gradients reach k and v through later reads and q through the read-out.

Counts and centroids are kept in fp32 (float64 inputs stay float64). ``ovq_attention`` processes a chunk at a
time with batched gathers and scatter-adds; ``ovq_attention_reference`` processes one token at a time with
Python loops and sequential running-mean updates, and is what the tests compare against.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

GROWTH = ("saturating", "dp", "linear")
SEEDING = ("farthest", "random")
STEPS = ("count", "constant")
READS = ("gmr", "cosine", "dot")


@dataclass(frozen=True)
class OVQOptions:
    n_max: int = 64
    chunk_len: int = 64
    growth: str = "saturating"
    growth_scale: float | None = None     # s of the schedule; None: n_max
    seeding: str = "farthest"
    step: str = "count"
    step_const: float = 0.1
    read: str = "gmr"
    local: bool = False
    seed: int = 0                         # random seeding draws from (seed, chunk start)


def growth_size(t: int, o: OVQOptions) -> int:
    """Active rows after ``t`` tokens: the plateauing schedule, at least 1 once a token is seen, <= t, <= n_max."""
    if t <= 0:
        return 0
    s = float(o.growth_scale or o.n_max)
    f = {"saturating": s * t / (s + t), "dp": s * math.log1p(t / s), "linear": o.n_max * t / s}[o.growth]
    return int(min(o.n_max, t, max(1, math.floor(f + 1e-9))))


def _acc(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _score(x: Tensor, mu: Tensor, read: str) -> Tensor:
    """Similarity of x [..., n, d] to centroids mu [..., N, d] -> [..., n, N] (β = 1, no counts)."""
    dots = x @ mu.transpose(-1, -2)
    if read == "gmr":
        return dots - 0.5 * mu.square().sum(-1).unsqueeze(-2)
    if read == "cosine":
        return dots / mu.norm(dim=-1).clamp_min(1e-12).unsqueeze(-2)
    return dots


def _random_scores(B: int, H: int, n: int, chunk_start: int, seed: int, device) -> Tensor:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + chunk_start)
    return torch.rand(B, H, n, generator=gen, dtype=torch.float64).to(device)


@dataclass
class OVQState:
    """The per-sequence dictionary: ``n_active`` rows of key/value centroids and counts (fp32), and the tokens
    of the current partial chunk (read exactly with ``local``; merged when the chunk completes)."""
    pos: int
    n_active: int
    keys: Tensor      # [B,H,n_max,Dk]
    values: Tensor    # [B,H,n_max,Dv]
    counts: Tensor    # [B,H,n_max]
    cur_k: Tensor     # [B,H,r,Dk]
    cur_v: Tensor     # [B,H,r,Dv]

    @classmethod
    def empty(cls, k: Tensor, v: Tensor, n_max: int) -> "OVQState":
        B, H, _, Dk = k.shape
        acc = _acc(v)
        return cls(0, 0, k.new_zeros(B, H, n_max, Dk, dtype=acc), v.new_zeros(B, H, n_max, v.shape[-1], dtype=acc),
                   v.new_zeros(B, H, n_max, dtype=acc), k.new_zeros(B, H, 0, Dk), v.new_zeros(B, H, 0, v.shape[-1]))

    def detach(self) -> "OVQState":
        return OVQState(self.pos, self.n_active, self.keys.detach(), self.values.detach(), self.counts.detach(),
                        self.cur_k.detach(), self.cur_v.detach())

    def nbytes(self) -> int:
        """Bytes the layer keeps per sequence once full (dictionary rows; the partial chunk is transient)."""
        B = self.keys.shape[0]
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values, self.counts)) // B


# --------------------------------------------------------------------------------------------
# Chunked form
# --------------------------------------------------------------------------------------------


def _read(q: Tensor, beta: Tensor, st: OVQState, k_loc: Tensor, v_loc: Tensor, row0: int, o: OVQOptions) -> Tensor:
    """q [B,H,G,n,Dk] at in-chunk rows row0.. read the dictionary (+ chunk tokens ``k_loc`` with ``local``)."""
    acc, N = _acc(q), st.n_active
    qa = q.to(acc)
    parts_s, parts_v = [], []
    if N:
        mu_k, mu_v = st.keys[:, :, :N], st.values[:, :, :N]
        s = _score(qa, mu_k[:, :, None], o.read) * beta + st.counts[:, :, None, None, :N].log()
        parts_s.append(s)
        parts_v.append(mu_v)
    if o.local:
        s = _score(qa, k_loc.to(acc)[:, :, None], o.read) * beta
        n, m = q.shape[-2], k_loc.shape[-2]
        future = torch.arange(m, device=q.device)[None, :] > torch.arange(row0, row0 + n, device=q.device)[:, None]
        parts_s.append(s.masked_fill(future, float("-inf")))
        parts_v.append(v_loc.to(acc))
    if not parts_s:
        return q.new_zeros(*q.shape[:-1], st.values.shape[-1], dtype=acc)
    w = torch.softmax(torch.cat(parts_s, -1), -1)
    return w @ torch.cat(parts_v, -2)[:, :, None]


def _merge(st: OVQState, k: Tensor, v: Tensor, c0: int, o: OVQOptions) -> OVQState:
    """Grow, seed, assign and merge the complete chunk k [B,H,C,Dk], v [B,H,C,Dv] that starts at c0 (§1.3 2–4)."""
    B, H, C, _ = k.shape
    acc, N0 = _acc(v), st.n_active
    ka, va = k.to(acc), v.to(acc)
    N1 = max(N0, growth_size(c0 + C, o))
    g = N1 - N0
    keys, values, counts = st.keys, st.values, st.counts
    with torch.no_grad():
        forced = torch.full((B, H, C), -1, dtype=torch.long, device=k.device)
        seeds = []
        if g:
            if o.seeding == "random":
                order = _random_scores(B, H, C, c0, o.seed, k.device).argsort(-1, descending=True)
                seeds = list(order[..., :g].unbind(-1))
            else:
                best = (_score(ka, keys[:, :, :N0], o.read).amax(-1) if N0
                        else ka.new_full((B, H, C), float("-inf")))
                taken = torch.zeros(B, H, C, dtype=torch.bool, device=k.device)
                for _ in range(g):
                    j = best.masked_fill(taken, float("inf")).argmin(-1)      # farthest from every row so far
                    seeds.append(j)
                    taken.scatter_(-1, j[..., None], True)
                    sk = ka.gather(2, j[..., None, None].expand(B, H, 1, ka.shape[-1]))
                    best = torch.maximum(best, _score(ka, sk, o.read)[..., 0])
            for r, j in enumerate(seeds):
                forced.scatter_(-1, j[..., None], N0 + r)
    if g:
        idx = torch.stack(seeds, -1)                                          # [B,H,g]
        seed_k = ka.gather(2, idx[..., None].expand(B, H, g, ka.shape[-1]))
        seed_v = va.gather(2, idx[..., None].expand(B, H, g, va.shape[-1]))
        pad = lambda x, y: torch.cat([x[:, :, :N0], y, x[:, :, N1:]], 2)
        keys, values = pad(keys, seed_k), pad(values, seed_v)
    with torch.no_grad():
        a = _score(ka, keys[:, :, :N1], o.read).argmax(-1)
        a = torch.where(forced >= 0, forced, a)                               # [B,H,C]
        onehot = torch.nn.functional.one_hot(a, st.keys.shape[2]).to(acc)    # [B,H,C,n_max]
        m = onehot.sum(2)                                                     # tokens per row
        new_counts = counts + m
        if o.step == "count":
            keep = torch.where(new_counts > 0, counts / new_counts.clamp_min(1), torch.ones_like(counts))
            w_tok = onehot / new_counts.clamp_min(1)[:, :, None]
        else:
            eta = o.step_const
            rank_from_end = (onehot.flip(2).cumsum(2).flip(2) - 1) * onehot  # later tokens assigned to the row
            keep = (1 - eta) ** m
            w_tok = onehot * eta * (1 - eta) ** rank_from_end
    # Only rows that received tokens change; the sums over assigned tokens carry the gradient to k and v.
    keys = keys * keep[..., None] + w_tok.transpose(-1, -2) @ ka
    values = values * keep[..., None] + w_tok.transpose(-1, -2) @ va
    return OVQState(st.pos, N1, keys, values, new_counts, st.cur_k, st.cur_v)


def ovq_attention(q: Tensor, k: Tensor, v: Tensor, opts: OVQOptions, *, beta: Tensor | float = 8.0,
                  state: OVQState | None = None) -> tuple[Tensor, OVQState]:
    """Chunked OVQ over unit-norm q [B,Hq,T,Dk], k [B,H,T,Dk], v [B,H,T,Dv]; Hq = G·H query heads share a
    dictionary. ``beta`` is a float or a tensor of per-query-head inverse temperatures [Hq]. Calling it on
    consecutive pieces with the returned state equals one call (chunks are aligned to absolute positions)."""
    B, Hq, T, Dk = q.shape
    H, C = k.shape[1], opts.chunk_len
    st = OVQState.empty(k, v, opts.n_max) if state is None else state
    qg = q.view(B, H, Hq // H, T, Dk)
    acc = _acc(v)
    beta = torch.as_tensor(beta, dtype=acc, device=q.device)
    beta = beta.view(H, Hq // H, 1, 1) if beta.dim() else beta
    outs, t = [], 0
    while t < T:
        r = st.pos % C
        n = min(C - r, T - t)
        sl = slice(t, t + n)
        k_loc, v_loc = torch.cat([st.cur_k, k[:, :, sl]], 2), torch.cat([st.cur_v, v[:, :, sl]], 2)
        outs.append(_read(qg[:, :, :, sl], beta, st, k_loc, v_loc, r, opts))
        st = OVQState(st.pos + n, st.n_active, st.keys, st.values, st.counts, k_loc, v_loc)
        if r + n == C:
            st = _merge(st, k_loc, v_loc, st.pos - C, opts)
            st = OVQState(st.pos, st.n_active, st.keys, st.values, st.counts, k_loc[:, :, :0], v_loc[:, :, :0])
        t += n
    out = torch.cat(outs, 3) if outs else q.new_zeros(B, H, Hq // H, 0, v.shape[-1], dtype=acc)
    return out.reshape(B, Hq, T, -1).to(v.dtype), st


# --------------------------------------------------------------------------------------------
# Token-by-token reference (tests): Python loops over batch, head and token
# --------------------------------------------------------------------------------------------


def ovq_attention_reference(q: Tensor, k: Tensor, v: Tensor, opts: OVQOptions, *, beta: Tensor | float = 8.0
                            ) -> Tensor:
    """The same layer on a fresh sequence, one token at a time: each token reads the dictionary as it stood at
    its chunk's start (and, with ``local``, its chunk's tokens up to itself); at a chunk's end the new rows are
    seeded greedily, every token is assigned against the chunk-start centroids, and the rows are updated one
    token at a time (running mean ``μ += (x − μ)/n`` or ``μ += η(x − μ)``)."""
    B, Hq, T, Dk = q.shape
    H, C = k.shape[1], opts.chunk_len
    G = Hq // H
    acc = _acc(v)
    beta = torch.as_tensor(beta, dtype=acc).expand(Hq) if not torch.is_tensor(beta) or beta.dim() == 0 else beta
    out = q.new_zeros(B, Hq, T, v.shape[-1], dtype=acc)

    def score(x, mu):
        d = torch.dot(x, mu)
        if opts.read == "gmr":
            return d - 0.5 * torch.dot(mu, mu)
        if opts.read == "cosine":
            return d / mu.norm().clamp_min(1e-12)
        return d

    for b in range(B):
        for h in range(H):
            mk, mv, cnt = [], [], []                 # rows: key mean, value mean, count
            for c0 in range(0, T, C):
                c1 = min(c0 + C, T)
                snap = (list(mk), list(mv), list(cnt))
                for t in range(c0, c1):
                    for gq in range(G):
                        hq = h * G + gq
                        x = q[b, hq, t].to(acc)
                        logits, vals = [], []
                        for mu_k, mu_v, n in zip(*snap):
                            logits.append(beta[hq] * score(x, mu_k) + math.log(n))
                            vals.append(mu_v)
                        if opts.local:
                            for j in range(c0, t + 1):
                                logits.append(beta[hq] * score(x, k[b, h, j].to(acc)))
                                vals.append(v[b, h, j].to(acc))
                        if logits:
                            w = torch.softmax(torch.stack(logits), 0)
                            out[b, hq, t] = (w[:, None] * torch.stack(vals)).sum(0)
                if c1 - c0 < C:
                    break                            # a partial chunk is never merged
                ks = [k[b, h, j].to(acc) for j in range(c0, c1)]
                vs = [v[b, h, j].to(acc) for j in range(c0, c1)]
                g = max(len(mk), growth_size(c1, opts)) - len(mk)
                if opts.seeding == "random":
                    r = _random_scores(B, H, C, c0, opts.seed, "cpu")[b, h]
                    seeds = sorted(range(C), key=lambda j: (-float(r[j]), j))[:g]
                else:
                    seeds = []
                    for _ in range(g):
                        def nearest(j):
                            ss = [float(score(ks[j], m).detach()) for m in mk]
                            ss += [float(score(ks[j], ks[s]).detach()) for s in seeds]
                            return max(ss) if ss else float("-inf")
                        seeds.append(min((j for j in range(C) if j not in seeds), key=lambda j: (nearest(j), j)))
                n_old = len(mk)
                for s in seeds:
                    mk.append(ks[s])
                    mv.append(vs[s])
                    cnt.append(0)
                frozen = list(mk)
                assign = []
                for j in range(C):
                    if j in seeds:
                        assign.append(n_old + seeds.index(j))
                    else:
                        sc = torch.stack([score(ks[j], m) for m in frozen])
                        assign.append(int(sc.argmax()))
                for j, i in enumerate(assign):
                    cnt[i] += 1
                    lr = 1.0 / cnt[i] if opts.step == "count" else opts.step_const
                    mk[i] = mk[i] + lr * (ks[j] - mk[i])
                    mv[i] = mv[i] + lr * (vs[j] - mv[i])
    return out.to(v.dtype)


__all__ = ["OVQOptions", "OVQState", "ovq_attention", "ovq_attention_reference", "growth_size",
           "GROWTH", "SEEDING", "STEPS", "READS"]
