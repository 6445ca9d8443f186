"""Linear layer with the official initialisation, shared by the attention unit, its mixers and the MLP."""
from __future__ import annotations

from torch import nn


def dense(d_in: int, d_out: int, bias: bool = False) -> nn.Linear:
    """Linear layer with the official N(0, 1/fan_in) kernel and zero bias (docs/transformer_vq.md, init)."""
    lin = nn.Linear(d_in, d_out, bias=bias)
    nn.init.normal_(lin.weight, 0.0, d_in ** -0.5)
    if bias:
        nn.init.zeros_(lin.bias)
    return lin


__all__ = ["dense"]
