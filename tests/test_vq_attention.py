"""`vq_attention` (blockwise, linear time) equals its quadratic definition in float64 — for every block
length dividing T = 12 and 24, with and without the band bias and the compressive cache — and carrying
the state across pieces (halves, ragged cuts, single tokens) equals one call (transformer_vq.md §3.1–3.2, §3.7)."""
from __future__ import annotations

import pytest
import torch

from vqformer.nn import functional as VF
from vqformer.nn.functional import (FullAttentionState, full_attention, full_attention_reference, vq_attention,
                                    vq_attention_reference)

F64 = torch.float64


def make_inputs(B=2, H=2, G=1, T=12, S=5, Dk=4, Dv=3, dtype=F64, scale=1.0, seed=0, bias_len=None):
    g = torch.Generator().manual_seed(seed)
    codebook = torch.randn(H, S, Dk, generator=g, dtype=dtype) * scale
    codes = torch.randint(0, S, (B, H, T), generator=g)
    k_hat = torch.stack([codebook[h][codes[:, h]] for h in range(H)], dim=1)
    q = torch.randn(B, H * G, T, Dk, generator=g, dtype=dtype) * scale
    v = torch.randn(B, H, T, Dv, generator=g, dtype=dtype)
    bias = None if bias_len is None else torch.randn(B, H * G, T, bias_len, generator=g, dtype=dtype)
    return q, k_hat, v, codes, codebook, bias


def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


CASES = [(T, L) for T in (12, 24) for L in divisors(T)]


@pytest.mark.parametrize("T,L", CASES)
@pytest.mark.parametrize("agg_cache", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_blockwise_equals_reference(T, L, agg_cache, with_bias):
    for H, G, S in [(1, 1, 1), (2, 1, 5), (1, 3, 5)]:
        q, k, v, z, cb, bias = make_inputs(H=H, G=G, T=T, S=S, bias_len=L + 1 if with_bias else None)
        ref = vq_attention_reference(q, k, v, L, band_bias=bias, agg_cache=agg_cache)
        out, state = vq_attention(q, k, v, z, cb, L, band_bias=bias, agg_cache=agg_cache)
        assert out.shape == (2, H * G, T, 3)
        torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
        assert state.pos == T


def test_reference_without_cache_is_a_sliding_window():
    """agg_cache=False attends exactly to keys at distance <= L: check one row by hand."""
    q, k, v, z, cb, _ = make_inputs(B=1, H=1, T=12)
    L, t = 3, 10
    out = vq_attention_reference(q, k, v, L, agg_cache=False)
    w = torch.softmax(q[0, 0, t] @ k[0, 0, t - L:t + 1].T, dim=-1)
    torch.testing.assert_close(out[0, 0, t], w @ v[0, 0, t - L:t + 1], atol=1e-12, rtol=0)


def test_float32_large_scores_do_not_overflow():
    # |q·k| up to ~50: exp would overflow without the joint max.
    q, k, v, z, cb, bias = make_inputs(T=24, Dk=4, scale=3.5, bias_len=9)
    assert (q @ k.transpose(-1, -2)).abs().max() > 40
    ref = vq_attention_reference(q, k, v, 8, band_bias=bias * 10)
    out, _ = vq_attention(q.float(), k.float(), v.float(), z, cb.float(), 8, band_bias=(bias * 10).float())
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("agg_cache", [True, False])
@pytest.mark.parametrize("L", [1, 3, 4, 6])
def test_carried_state_equals_one_call(L, agg_cache):
    T = 24
    q, k, v, z, cb, bias = make_inputs(G=2, T=T, bias_len=L + 1)
    one, _ = vq_attention(q, k, v, z, cb, L, band_bias=bias, agg_cache=agg_cache)

    def run(cuts):
        state, outs = None, []
        for a, b in zip(cuts[:-1], cuts[1:]):
            o, state = vq_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], z[:, :, a:b], cb, L,
                                    band_bias=bias[:, :, a:b], agg_cache=agg_cache, state=state)
            outs.append(o)
        return torch.cat(outs, dim=2), state

    for cuts in ([0, T // 2, T], [0, 5, 13, T], list(range(T + 1)), [0, 0, T]):
        out, state = run(cuts)
        torch.testing.assert_close(out, one, atol=1e-10, rtol=0)
        assert state.pos == T


def test_empty_piece_returns_empty_output():
    q, k, v, z, cb, _ = make_inputs(T=4)
    out, state = vq_attention(q[:, :, :0], k[:, :, :0], v[:, :, :0], z[:, :, :0], cb, 2)
    assert out.shape == (2, 2, 0, 3) and state.pos == 0


def test_gradients_equal_the_reference_jacobian():
    q, k, v, z, cb, bias = make_inputs(B=1, H=1, T=8, S=3, bias_len=3)
    L = 2

    def blockwise(q_, v_, b_):
        return vq_attention(q_, k, v_, z, cb, L, band_bias=b_)[0]

    def reference(q_, v_, b_):
        return vq_attention_reference(q_, k, v_, L, band_bias=b_)

    inputs = (q.requires_grad_(), v.requires_grad_(), bias.requires_grad_())
    assert torch.autograd.gradcheck(blockwise, inputs)
    for got, want in zip(torch.autograd.functional.jacobian(blockwise, inputs),
                         torch.autograd.functional.jacobian(reference, inputs)):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_grad_thru_cache_switch_stops_value_gradients_through_the_cache():
    q, k, v, z, cb, _ = make_inputs(B=1, H=1, T=12, S=3)
    L = 3   # block 0 = positions 0..2 reaches the last block (9..11) only through the compressive cache
    for through, expect_zero in [(True, False), (False, True)]:
        v_ = v.clone().requires_grad_()
        out, _ = vq_attention(q, k, v_, z, cb, L, grad_thru_cache=through)
        out[:, :, 9:].sum().backward()
        assert (v_.grad[:, :, :3].abs().max() == 0) == expect_zero


def test_no_t_by_t_tensor_in_the_vq_path(monkeypatch):
    T, L = 64, 8
    q, k, v, z, cb, bias = make_inputs(T=T, bias_len=L + 1)
    shapes = []
    for name in ("einsum", "softmax", "cat", "gather"):
        orig = getattr(torch, name)

        def spy(*a, _orig=orig, **kw):
            r = _orig(*a, **kw)
            shapes.append(tuple(r.shape))
            return r
        monkeypatch.setattr(VF.torch, name, spy)
    vq_attention(q, k, v, z, cb, L, band_bias=bias)
    monkeypatch.undo()
    assert shapes
    assert not [s for s in shapes if len(s) >= 2 and s[-1] >= T and s[-2] >= T], shapes


def test_full_attention_equals_masked_softmax():
    q, k, v, _, _, _ = make_inputs(G=2, T=10)
    bias = torch.randn(2, 4, 10, 10, dtype=F64)
    for b in (None, bias):
        out, state = full_attention(q, k, v, bias=b)
        torch.testing.assert_close(out, full_attention_reference(q, k, v, bias=b), atol=1e-10, rtol=0)
        assert state.pos == 10
    o1, s1 = full_attention(q[:, :, :4], k[:, :, :4], v[:, :, :4], bias=bias[:, :, :4, :4])
    o2, s2 = full_attention(q[:, :, 4:], k[:, :, 4:], v[:, :, 4:], bias=bias[:, :, 4:, :], state=s1)
    torch.testing.assert_close(torch.cat([o1, o2], 2), full_attention_reference(q, k, v, bias=bias),
                               atol=1e-10, rtol=0)
    assert isinstance(s2, FullAttentionState) and s2.k.shape[2] == 10


def test_public_signature():
    import inspect

    from vqformer.nn.functional import vq_attention as fn
    params = inspect.signature(fn).parameters
    assert list(params)[:6] == ["q", "k_hat", "v", "codes", "codebook", "block_len"]
    for kw in ("band_bias", "agg_cache", "state"):
        assert params[kw].kind is inspect.Parameter.KEYWORD_ONLY


def test_bad_shapes_are_rejected():
    q, k, v, z, cb, _ = make_inputs(T=8)
    with pytest.raises(ValueError, match="band_bias"):
        vq_attention(q, k, v, z, cb, 4, band_bias=torch.zeros(2, 2, 8, 3, dtype=F64))
