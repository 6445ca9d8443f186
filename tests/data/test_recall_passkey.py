"""Passkey / needle generator (docs/ovq.md §2.3): one needle, one scored position, depth control, lengths to
64k, seeded."""
from __future__ import annotations

import numpy as np
import pytest

from vqformer.data.mqar import IGNORE
from vqformer.data.passkey import passkey


@pytest.mark.parametrize("filler", ["zeros", "random"])
def test_one_needle_one_scored_position(filler):
    x, y = passkey(64, 50, 256, seed=0, filler=filler)
    assert x.shape == y.shape == (50, 256)
    assert ((y != IGNORE).sum(1) == 1).all() and (y[:, -1] != IGNORE).all()
    for i in range(50):
        k, v = x[i, -1], y[i, -1]
        assert 1 <= k < 32 <= v < 64
        where = np.flatnonzero(x[i, :-1] == k)
        assert len(where) == 1 and x[i, where[0] + 1] == v and (x[i, :-1] == v).sum() == 1


def test_depth_and_seed():
    x0, _ = passkey(64, 20, 1024, seed=1, depth=0.0)
    x1, _ = passkey(64, 20, 1024, seed=1, depth=1.0)
    assert (x0[:, 0] != 0).all() and (x1[:, -4] != 0).all() and (x1[:, :-4] == 0).all()
    a, b = passkey(64, 20, 1024, seed=2), passkey(64, 20, 1024, seed=2)
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], passkey(64, 20, 1024, seed=3)[0])
    x, _ = passkey(64, 2, 65536, seed=0)
    assert x.shape == (2, 65536)


@pytest.mark.parametrize("kw", [dict(length=7), dict(vocab_size=5), dict(filler="text"), dict(depth=1.5)])
def test_bad_arguments(kw):
    args = {**dict(vocab_size=64, num_examples=2, length=64, seed=0), **kw}
    with pytest.raises(ValueError, match="passkey"):
        passkey(**args)
