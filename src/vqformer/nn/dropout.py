"""Counter-based dropout masks: each mask entry is a pure function of (seed, stream, example, element).

docs/transformer_vq.md §1.5: the LayerDrop and sinusoid-dropout masks are drawn once per training batch and
shared by every block and update window of it, each attention unit (GAU) has its own sinusoid mask, and
every example has its own masks. Hashing the coordinates (instead of drawing from a stateful generator)
gives exactly that wherever the example is computed: in one call on the whole batch, in a micro-batch
(``example_offset``), on another rank, after a resume, on CPU or GPU, and for tables of any length (the
mask of row r does not depend on how many rows are drawn).
"""
from __future__ import annotations

import torch
from torch import Tensor

_M32 = 0xFFFFFFFF


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x · c) mod 2³² for 0 <= x < 2³² held in int64, split so that no product overflows 63 bits."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def hash32(x: Tensor) -> Tensor:
    """An invertible 32-bit integer mix (the "lowbias32" constants of C. Wellons' hash-prospector)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniform(seed: int, stream: int, examples: Tensor, n: int) -> Tensor:
    """U[0,1) values [len(examples), n] (24 bits each, float32) for elements 0..n-1 of each example."""
    dev = examples.device
    s = seed % 2 ** 64
    key = hash32(torch.tensor([s & _M32], device=dev) ^ hash32(torch.tensor([s >> 32], device=dev)))
    key = hash32(key ^ (stream & _M32))                                               # [1]
    per_example = hash32((key + hash32(examples.long() & _M32)) & _M32)              # [B]
    idx = hash32(torch.arange(n, device=dev, dtype=torch.long))                      # [n]
    h = hash32(((per_example[:, None] ^ idx[None, :]) + 0x9E3779B9) & _M32)
    return (h >> 8).float() * 2.0 ** -24


def keep_mask(seed: int, stream: int, examples: Tensor, shape: tuple[int, ...], p: float) -> Tensor:
    """Inverted-dropout mask [len(examples), *shape]: 0 with probability p, else 1/(1-p)."""
    n = 1
    for s in shape:
        n *= s
    keep = uniform(seed, stream, examples, n) >= p
    return (keep.float() / (1 - p)).view(len(examples), *shape)


__all__ = ["hash32", "keep_mask", "uniform"]
