"""Sinusoidal tables and the Transformer-XL relative embeddings of the band bias.

Spec: ``docs/transformer_vq.md`` §1.4: ``sin_emb(p) = [sin(p·ω), cos(p·ω)]`` (sin half then cos
half), ``ω_i = λ^{-2i/D}``, λ = ``pe_lam`` = 1e5; ``r_d = D_k^{-1/4} · W_R^T Dropout_sin(sin_emb(d))``.
"""
from __future__ import annotations

import torch
from torch import Tensor


def sin_emb(positions: Tensor, dim: int, lam: float = 1e5) -> Tensor:
    """[n] positions -> [n, dim] table (fp32)."""
    half = dim // 2
    omega = lam ** (-torch.arange(half, dtype=torch.float32, device=positions.device) * 2 / dim)
    angle = positions.float()[:, None] * omega[None, :]
    return torch.cat([angle.sin(), angle.cos()], dim=-1)
