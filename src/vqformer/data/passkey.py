"""Passkey / needle retrieval at long lengths (up to 64k), generated offline in the MQAR vocabulary.

Spec: ``docs/ovq.md`` §2.3 (passkey retrieval of Mohtashami & Jaggi; RULER's needle with a
random-token haystack) and §1.5 (OVQ's recall up to 64k). Token-level form, so that MQAR-trained models can be
evaluated without a tokenizer: a needle ``k v`` (key id from [1, V/2), value id from [V/2, V)) sits at a
depth drawn uniformly in [0, 1) (or fixed) of a haystack, and the last input is the key again; the only
scored label is the value at that last position. The haystack is 0s (MQAR's empty query slots) or, with
``filler="random"``, random ids that never repeat the needle's key or value.
"""
from __future__ import annotations

import numpy as np

from .mqar import IGNORE


def passkey(vocab_size: int, num_examples: int, length: int, seed: int, depth: float | None = None,
            filler: str = "zeros") -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) int64 [N, length]; labels are IGNORE except the last position (the needle's value)."""
    V, N, L = vocab_size, num_examples, length
    if L < 4 or L % 2:
        raise ValueError(f"passkey length={L} must be an even number >= 4")
    if V < 4 or V % 2:
        raise ValueError(f"passkey vocab_size={V} must be an even number >= 4")
    if filler not in ("zeros", "random"):
        raise ValueError(f"passkey filler={filler!r}: choose zeros or random")
    if depth is not None and not 0.0 <= depth <= 1.0:
        raise ValueError(f"passkey depth={depth} must be in [0, 1]")
    rng = np.random.default_rng(seed)
    keys = rng.integers(1, V // 2, N)
    values = rng.integers(V // 2, V, N)
    slots = (L - 2) // 2                                   # needle slots before the final query
    d = rng.random(N) if depth is None else np.full(N, depth)
    pos = 2 * np.minimum((d * slots).astype(np.int64), slots - 1)
    if filler == "zeros":
        x = np.zeros((N, L), dtype=np.int64)
    else:
        x = rng.integers(1, V, (N, L))
        clash = (x == keys[:, None]) | (x == values[:, None])
        x[clash] = 0
    rows = np.arange(N)
    x[rows, pos], x[rows, pos + 1], x[:, -1] = keys, values, keys
    y = np.full((N, L), IGNORE, dtype=np.int64)
    y[:, -1] = values
    return x, y


__all__ = ["passkey"]
