"""RMSNorm as in the official code: ``x · rsqrt(mean(x²) + eps)`` in fp32, no mean centring.

Spec: ``docs/transformer_vq.md`` §1.2 (pre-norm with gain and bias in the legacy code; q and
k normalised per head without affine parameters).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def rms_norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, affine: bool = True, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        y = rms_norm(x, self.eps)
        return y if self.weight is None else y * self.weight + self.bias
