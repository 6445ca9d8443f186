"""Sliding-window attention: blocked form equals the dense masked softmax (float64), with and without the
distance bias and shared key/value heads; carried state across windows equals one pass."""
from __future__ import annotations

import pytest
import torch

from vqformer.nn.local_attention import local_attention, local_attention_reference

pytestmark = pytest.mark.usefixtures("single_thread")

B, T, DK, DV = 2, 21, 4, 3


def inputs(hq, h, window, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    return r(B, hq, T, DK), r(B, h, T, DK), r(B, h, T, DV), r(B, hq, T, window)


@pytest.mark.parametrize("window", [1, 4, 7, 21, 40])
@pytest.mark.parametrize("hq,h", [(1, 1), (2, 2), (4, 1)])
@pytest.mark.parametrize("biased", [False, True])
def test_equals_masked_softmax(window, hq, h, biased):
    q, k, v, bias = inputs(hq, h, window)
    bias = bias if biased else None
    out, st = local_attention(q, k, v, window, band_bias=bias)
    torch.testing.assert_close(out, local_attention_reference(q, k, v, window, band_bias=bias), atol=1e-12, rtol=0)
    assert st.pos == T and st.k.shape[2] == min(window - 1, T)


@pytest.mark.parametrize("cuts", [[0, 10, 21], [0, 3, 4, 13, 21], list(range(22))], ids=["halves", "ragged", "tokens"])
def test_carried_state_equals_one_pass(cuts):
    q, k, v, bias = inputs(2, 1, 5, seed=1)
    one, _ = local_attention(q, k, v, 5, band_bias=bias)
    st, outs = None, []
    for a, b in zip(cuts[:-1], cuts[1:]):
        out, st = local_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], 5, band_bias=bias[:, :, a:b], state=st)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 2), one, atol=1e-12, rtol=0)
    assert st.pos == T


def test_keys_outside_the_window_have_no_effect():
    q, k, v, _ = inputs(1, 1, 4, seed=2)
    out, _ = local_attention(q, k, v, 4)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 0] += 5.0
    v2[:, :, 0] += 5.0
    out2, _ = local_attention(q, k2, v2, 4)
    assert torch.equal(out[:, :, 4:], out2[:, :, 4:]) and (out[:, :, :4] - out2[:, :, :4]).abs().max() > 1e-3
