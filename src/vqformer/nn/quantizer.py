"""Vector quantizer with an EMA k-means codebook and a straight-through estimator.

Spec: ``docs/transformer_vq.md`` §2 (codebook, assignment, STE, commit loss, EMA update,
dead codes, statistics) and §1.6 (initialisation of ``c_sum`` and ``c_count``).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn


class VQOutput(NamedTuple):
    k_hat: Tensor        # [B,H,T,Dk] forward value C_z, gradient identity to k
    codes: Tensor        # [B,H,T] int64
    commit_loss: Tensor  # scalar: mean over (B,T) of sum over heads of ||k - sg(C_z)||²
    stats: dict          # codebook health, detached scalars


class VectorQuantizer(nn.Module):
    """Per-head codebook ``C = c_sum / max(c_count, 0.01)`` kept as buffers (never an optimizer parameter).

    During training ``forward`` accumulates the assignment statistics; ``update()`` (called once per
    optimizer step, after backward) applies the EMA with decay ``c_gamma`` to everything accumulated since
    the last update, summed over distributed ranks.
    """

    def __init__(self, n_head: int, n_code: int, d_k: int, c_gamma: float = 0.99):
        super().__init__()
        self.n_head, self.n_code, self.d_k, self.c_gamma = n_head, n_code, d_k, c_gamma
        # Variance scaling over [H,S,Dk] with fan_in = H·S (§1.6).
        self.register_buffer("c_sum", torch.randn(n_head, n_code, d_k) * (n_head * n_code) ** -0.5)
        self.register_buffer("c_count", torch.ones(n_head, n_code))
        # Statistics of the current optimizer step; not saved: checkpoints are taken between steps.
        self.register_buffer("acc_sum", torch.zeros(n_head, n_code, d_k), persistent=False)
        self.register_buffer("acc_count", torch.zeros(n_head, n_code), persistent=False)
        self.collect = True   # False while activation checkpointing recomputes a forward already counted

    @property
    def codebook(self) -> Tensor:
        return self.c_sum / self.c_count.clamp(min=0.01)[..., None]

    def assign(self, k: Tensor) -> Tensor:
        """Nearest code by squared Euclidean distance in fp32: ||k||² - 2k·C + ||C||²."""
        c = self.codebook.float()
        kf = k.float()
        d = (kf.pow(2).sum(-1, keepdim=True) - 2 * torch.einsum("bhtd,hsd->bhts", kf, c)
             + c.pow(2).sum(-1)[None, :, None, :]).clamp_min(0)
        return d.argmin(-1)

    def forward(self, k: Tensor, mask: Tensor | None = None) -> VQOutput:
        """Quantize k [B,H,T,Dk]. ``mask`` [B,T] (True = real token) keeps pads out of the commit loss (a mean
        over real positions), of the EMA statistics and of the codebook health; ``None``: every token is real."""
        codes = self.assign(k)
        c = self.codebook.to(k.dtype)
        c_z = torch.gather(c[None].expand(k.shape[0], -1, -1, -1), 2,
                           codes[..., None].expand(*codes.shape, self.d_k))
        k_hat = c_z.detach() + (k - k.detach())
        err = (k - c_z.detach()).pow(2).sum(-1)                     # [B,H,T]
        if mask is None:
            commit = err.sum(1).mean()
        else:
            m = mask.to(err.dtype)
            commit = (err.sum(1) * m).sum() / m.sum().clamp_min(1)
        # Per-token weights of the statistics: 1 for real tokens, 0 for pads.
        w = None if mask is None else mask[:, None, :].expand_as(codes)
        if self.training and self.collect:
            self._accumulate(k.detach(), codes, w)
        return VQOutput(k_hat, codes, commit, self._stats(k.detach(), codes, err.detach(), w))

    def _by_head(self, x: Tensor) -> Tensor:
        """[B,H,T,...] -> [H, B·T, ...]."""
        return x.transpose(0, 1).reshape(self.n_head, -1, *x.shape[3:])

    @torch.no_grad()
    def _accumulate(self, k: Tensor, codes: Tensor, w: Tensor | None) -> None:
        z = self._by_head(codes)                                      # [H, B·T]
        kf = self._by_head(k.to(self.acc_sum.dtype))
        n = torch.ones_like(z, dtype=self.acc_count.dtype)
        if w is not None:                                             # pads add zero keys to no count
            n = self._by_head(w).to(n.dtype)
            kf = kf * n[..., None]
        self.acc_count.scatter_add_(1, z, n)
        self.acc_sum.scatter_add_(1, z[..., None].expand(-1, -1, self.d_k), kf)

    @torch.no_grad()
    def update(self) -> None:
        """EMA k-means step: ``c_count ← γ c_count + (1-γ) n``, ``c_sum ← γ c_sum + (1-γ) m``."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.acc_count)
            dist.all_reduce(self.acc_sum)
        if self.acc_count.sum() == 0:
            return
        g = self.c_gamma
        self.c_count.mul_(g).add_(self.acc_count, alpha=1 - g)
        self.c_sum.mul_(g).add_(self.acc_sum, alpha=1 - g)
        self.acc_count.zero_()
        self.acc_sum.zero_()

    @torch.no_grad()
    def _stats(self, k: Tensor, codes: Tensor, err: Tensor, w: Tensor | None) -> dict:
        weight = torch.ones_like(err, dtype=torch.float32) if w is None else w.float()   # exact counts under bf16
        usage = torch.zeros(self.n_head, self.n_code, device=codes.device, dtype=weight.dtype)
        usage.scatter_add_(1, self._by_head(codes), self._by_head(weight))
        p = usage / usage.sum(-1, keepdim=True).clamp_min(1)
        entropy = -(p * p.clamp_min(1e-12).log()).sum(-1)
        rel = err.float().sqrt() / k.float().norm(dim=-1).clamp_min(1e-12)
        return {
            "code_perplexity": entropy.exp().mean(),                        # effective number of codes used
            "unused_codes": (usage == 0).float().sum(-1).mean(),
            "rel_quant_error": (rel * weight).sum() / weight.sum().clamp_min(1),
        }
