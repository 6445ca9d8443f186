"""VQ attention kernels (docs/transformer_vq.md §3.1–3.2, §3.6–3.7).

* ``vq_attention`` (blockwise, linear time) equals the quadratic definition ``vq_attention_reference`` in
  float64 for every block length dividing T = 12 and 24, with and without the band bias and the
  compressive cache, for single-, multi- and grouped-query heads; the reference itself is checked
  against plain Python loops.
* float32 with large scores stays finite and close to float64.
* Carrying the state across pieces (halves, ragged cuts, single tokens, empty pieces) equals one call.
* Gradients: gradcheck, Jacobians equal the reference's, ``grad_thru_cache`` and the stop-gradient on
  keys inside the cache (§3.6).
* ``full_attention`` equals a masked softmax, also with a carried state.
* No T×T tensor is formed in the VQ path.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

import vqformer.nn.functional as VF
from vqformer.nn.functional import (FullAttentionState, VQAttentionState, full_attention, full_attention_reference,
                                    vq_attention, vq_attention_reference)

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("single_thread")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def make_inputs(B=2, H=2, G=1, T=12, S=5, Dk=4, Dv=3, L=None, dtype=F64, q_scale=1.0, c_scale=1.0, seed=0):
    """Random queries/values, a random codebook and codes; keys are real codewords ``codebook[h, codes]``.

    ``L`` given: also a random band bias ``[B, G·H, T, L+1]``.
    """
    g = torch.Generator().manual_seed(seed)
    codebook = (torch.randn(H, S, Dk, generator=g, dtype=F64) * c_scale).to(dtype)
    codes = torch.randint(0, S, (B, H, T), generator=g)
    k_hat = codebook[torch.arange(H)[None, :, None], codes]                     # [B,H,T,Dk]
    q = (torch.randn(B, H * G, T, Dk, generator=g, dtype=F64) * q_scale).to(dtype)
    v = torch.randn(B, H, T, Dv, generator=g, dtype=F64).to(dtype)
    bias = None if L is None else torch.randn(B, H * G, T, L + 1, generator=g, dtype=F64).to(dtype)
    return q, k_hat, v, codes, codebook, bias


def loop_reference(q, k, v, L, bias=None, agg_cache=True):
    """§3.1 written with Python loops: query head i uses key/value head i // G;
    score(t, j) = q_t·k_j + [t-j <= L]·bias[t, t-j]; keys j <= t (and t-j <= L without the cache)."""
    B, Hq, T, _ = q.shape
    G = Hq // k.shape[1]
    out = torch.zeros(B, Hq, T, v.shape[-1], dtype=q.dtype)
    for b in range(B):
        for i in range(Hq):
            h = i // G
            for t in range(T):
                js = [j for j in range(t + 1) if agg_cache or t - j <= L]
                s = torch.stack([q[b, i, t] @ k[b, h, j] + (bias[b, i, t, t - j] if bias is not None and t - j <= L
                                                             else 0.0) for j in js])
                w = torch.softmax(s, 0)
                out[b, i, t] = sum(w[n] * v[b, h, j] for n, j in enumerate(js))
    return out


def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def run_pieces(q, k, v, z, cb, L, cuts, bias=None, **kw):
    """Call ``vq_attention`` on the pieces ``[cuts[i], cuts[i+1])`` with the state carried (not detached)."""
    state, outs = None, []
    for a, b in zip(cuts[:-1], cuts[1:]):
        o, state = vq_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], z[:, :, a:b], cb, L,
                                band_bias=None if bias is None else bias[:, :, a:b], state=state, **kw)
        outs.append(o)
    return torch.cat(outs, dim=2), state


HEADS = [  # (H key/value heads, G query heads per key head, S codes)
    (1, 1, 1), (1, 1, 5), (2, 1, 1), (2, 1, 5),
    (1, 3, 5), (2, 3, 5),                            # grouped queries (mqa uses G = Hq, H = 1)
]
T_L = [(T, L) for T in (12, 24) for L in divisors(T)]


# --------------------------------------------------------------------------------------------
# 1. Blockwise == quadratic reference (float64)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("agg_cache", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("G", [1, 3])
def test_reference_is_the_definition(G, with_bias, agg_cache):
    """The quadratic reference equals plain loops over the definition (and the head grouping i -> i // G)."""
    L = 3
    q, k, v, _, _, bias = make_inputs(B=1, H=2, G=G, T=9, L=L if with_bias else None)
    want = loop_reference(q, k, v, L, bias, agg_cache)
    got = vq_attention_reference(q, k, v, L, band_bias=bias, agg_cache=agg_cache)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


# chunk_bytes=1: one block per chunk; row_tiles=3: rows split in 3 tiles (causal tiles skipped)
KERNELS = [("eager", None, None), ("chunked", None, None), ("chunked", 1, 3)]
KERNEL_IDS = ["eager", "chunked", "chunked_1block_3tiles"]


@pytest.mark.parametrize("kernel,chunk_bytes,row_tiles", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("H,G,S", HEADS)
@pytest.mark.parametrize("agg_cache", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("T,L", T_L)
def test_blockwise_equals_reference(T, L, with_bias, agg_cache, H, G, S, kernel, chunk_bytes, row_tiles):
    q, k, v, z, cb, bias = make_inputs(H=H, G=G, T=T, S=S, Dk=4, Dv=3, L=L if with_bias else None, seed=T + L)
    ref = vq_attention_reference(q, k, v, L, band_bias=bias, agg_cache=agg_cache)
    out, state = vq_attention(q, k, v, z, cb, L, band_bias=bias, agg_cache=agg_cache, kernel=kernel,
                              chunk_bytes=chunk_bytes, row_tiles=row_tiles)
    assert out.shape == (2, H * G, T, 3) and out.dtype == F64
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
    assert isinstance(state, VQAttentionState) and state.pos == T


def test_the_equivalence_cases_are_not_degenerate():
    """The cache, the band bias and the codes each change the output, so the equality above can fail."""
    T, L = 24, 4
    q, k, v, z, cb, bias = make_inputs(T=T, L=L)
    base, _ = vq_attention(q, k, v, z, cb, L, band_bias=bias)
    no_cache, _ = vq_attention(q, k, v, z, cb, L, band_bias=bias, agg_cache=False)
    no_bias, _ = vq_attention(q, k, v, z, cb, L)
    wrong_codes, _ = vq_attention(q, k, v, (z + 1) % cb.shape[1], cb, L, band_bias=bias)
    # Without the cache positions t <= L still see every key; later ones lose keys farther than L.
    torch.testing.assert_close(no_cache[:, :, :L + 1], base[:, :, :L + 1], atol=1e-12, rtol=0)
    assert (no_cache[:, :, L + 1:] - base[:, :, L + 1:]).abs().amax(dim=(0, 1, 3)).min() > 1e-6
    # Codes only matter through the cache, i.e. from block 2 on.
    assert (no_bias - base).abs().amax() > 1e-3
    torch.testing.assert_close(wrong_codes[:, :, :2 * L], base[:, :, :2 * L], atol=1e-12, rtol=0)
    assert (wrong_codes[:, :, 2 * L:] - base[:, :, 2 * L:]).abs().amax(dim=(0, 1, 3)).min() > 1e-6


def test_bias_beyond_the_band_is_ignored():
    """Distances 1..L of the previous block get the bias, farther ones do not: perturbing nothing but
    band_bias[..., L] (distance L) changes the output; the reference agrees after the change."""
    T, L = 12, 3
    q, k, v, z, cb, bias = make_inputs(T=T, L=L)
    bumped = bias.clone()
    bumped[..., L] += 1.0
    a, _ = vq_attention(q, k, v, z, cb, L, band_bias=bias)
    b, _ = vq_attention(q, k, v, z, cb, L, band_bias=bumped)
    assert (a[:, :, L:] - b[:, :, L:]).abs().amax() > 1e-3                    # rows with a key at distance L
    torch.testing.assert_close(a[:, :, :L], b[:, :, :L], atol=1e-12, rtol=0)
    torch.testing.assert_close(b, vq_attention_reference(q, k, v, L, band_bias=bumped), atol=1e-10, rtol=0)


# --------------------------------------------------------------------------------------------
# 2. float32 with large scores
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("agg_cache", [True, False])
@pytest.mark.parametrize("target", [50.0, 120.0])         # 120 > log(float32 max) ≈ 88.7: exp would overflow
def test_float32_large_scores_are_finite_and_accurate(target, agg_cache):
    T, L = 24, 4
    q, k, v, z, cb, bias = make_inputs(T=T, L=L, S=5, Dk=4)
    # Scale q and the codebook together so that max |q·k| = target.
    s = (target / (q @ k.transpose(-1, -2)).abs().amax()).sqrt()
    q, cb = q * s, cb * s
    k = cb[torch.arange(2)[None, :, None], z]
    assert abs((q @ k.transpose(-1, -2)).abs().amax().item() - target) < 1e-6
    q32, k32, v32, cb32, b32 = q.float(), k.float(), v.float(), cb.float(), (bias * 5).float()
    # Reference in float64 on exactly the float32 inputs: only the algorithm's arithmetic differs.
    ref = vq_attention_reference(q32.double(), k32.double(), v32.double(), L, band_bias=b32.double(),
                                 agg_cache=agg_cache)
    out, state = vq_attention(q32, k32, v32, z, cb32, L, band_bias=b32, agg_cache=agg_cache)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)
    # The same holds token by token (the in-block path).
    step, _ = run_pieces(q32, k32, v32, z, cb32, L, list(range(T + 1)), bias=b32, agg_cache=agg_cache)
    assert torch.isfinite(step).all()
    torch.testing.assert_close(step.double(), ref, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# 3. Carrying the state
# --------------------------------------------------------------------------------------------


CUTS = {
    "halves": [0, 12, 24],
    "halves_off_block": [0, 7, 24],
    "halves_off_block_2": [0, 13, 24],
    "ragged": [0, 5, 13, 14, 24],
    "token_by_token": list(range(25)),
    "empty_pieces": [0, 0, 5, 5, 24, 24],
}


@pytest.mark.parametrize("cuts", list(CUTS.values()), ids=list(CUTS))
@pytest.mark.parametrize("agg_cache", [True, False])
@pytest.mark.parametrize("L", [1, 3, 4, 6])
def test_carried_state_equals_one_call(L, agg_cache, cuts):
    T = 24
    q, k, v, z, cb, bias = make_inputs(H=2, G=2, T=T, L=L, seed=L)
    one, st1 = vq_attention(q, k, v, z, cb, L, band_bias=bias, agg_cache=agg_cache)
    out, st = run_pieces(q, k, v, z, cb, L, cuts, bias=bias, agg_cache=agg_cache)
    torch.testing.assert_close(out, one, atol=1e-10, rtol=0)
    torch.testing.assert_close(out, vq_attention_reference(q, k, v, L, band_bias=bias, agg_cache=agg_cache),
                               atol=1e-10, rtol=0)
    # The final state is the same whatever the split.
    assert st.pos == st1.pos == T
    for name in ("prev_k", "prev_v", "agg_sum", "agg_count"):
        torch.testing.assert_close(getattr(st, name), getattr(st1, name), atol=1e-10, rtol=0)
    assert torch.equal(st.prev_z, st1.prev_z) and st.cur_z.shape[-1] == 0


def test_state_counts_every_token_before_the_previous_block():
    """After T = 24 tokens with L = 4 the cache holds blocks 0..4 (20 tokens), the previous block is block 5."""
    T, L, S = 24, 4, 5
    q, k, v, z, cb, _ = make_inputs(T=T, S=S)
    _, st = vq_attention(q, k, v, z, cb, L)
    want_count = torch.nn.functional.one_hot(z[:, :, :T - L], S).double().sum(2)
    torch.testing.assert_close(st.agg_count, want_count, atol=0, rtol=0)
    want_sum = torch.einsum("bhts,bhtd->bhsd", torch.nn.functional.one_hot(z[:, :, :T - L], S).double(),
                            v[:, :, :T - L])
    torch.testing.assert_close(st.agg_sum, want_sum, atol=1e-12, rtol=0)
    assert torch.equal(st.prev_z, z[:, :, T - L:]) and torch.equal(st.prev_v, v[:, :, T - L:])


def test_empty_piece_returns_an_empty_output_and_keeps_the_state():
    q, k, v, z, cb, bias = make_inputs(T=10, G=2, L=4)
    out, st0 = vq_attention(q[:, :, :0], k[:, :, :0], v[:, :, :0], z[:, :, :0], cb, 4, band_bias=bias[:, :, :0])
    assert out.shape == (2, 4, 0, 3) and out.dtype == F64 and st0.pos == 0
    _, st = vq_attention(q[:, :, :6], k[:, :, :6], v[:, :, :6], z[:, :, :6], cb, 4, band_bias=bias[:, :, :6])
    out, st2 = vq_attention(q[:, :, 6:6], k[:, :, 6:6], v[:, :, 6:6], z[:, :, 6:6], cb, 4,
                            band_bias=bias[:, :, 6:6], state=st)
    assert out.shape == (2, 4, 0, 3) and st2.pos == 6
    for name in ("prev_k", "prev_v", "prev_z", "cur_k", "cur_v", "cur_z", "agg_sum", "agg_count"):
        assert torch.equal(getattr(st2, name), getattr(st, name))


# --------------------------------------------------------------------------------------------
# 4. Gradients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("agg_cache", [True, False])
def test_gradcheck(agg_cache):
    L = 2
    q, k, v, z, cb, bias = make_inputs(B=1, H=1, G=2, T=8, S=3, Dk=3, Dv=2, L=L)
    inputs = (q.requires_grad_(), v.requires_grad_(), bias.requires_grad_())

    def one_call(q_, v_, b_):
        return vq_attention(q_, k, v_, z, cb, L, band_bias=b_, agg_cache=agg_cache)[0]

    def pieces(q_, v_, b_):   # the in-block path and the state carry, too
        return run_pieces(q_, k, v_, z, cb, L, [0, 3, 4, 8], bias=b_, agg_cache=agg_cache)[0]

    assert torch.autograd.gradcheck(one_call, inputs)
    assert torch.autograd.gradcheck(pieces, inputs)


@pytest.mark.parametrize("agg_cache", [True, False])
def test_jacobians_equal_the_reference(agg_cache):
    L = 2
    q, k, v, z, cb, bias = make_inputs(B=1, H=1, G=2, T=8, S=3, Dk=3, Dv=2, L=L)
    inputs = (q, v, bias)

    def one_call(q_, v_, b_):
        return vq_attention(q_, k, v_, z, cb, L, band_bias=b_, agg_cache=agg_cache)[0]

    def pieces(q_, v_, b_):
        return run_pieces(q_, k, v_, z, cb, L, [0, 3, 5, 6, 8], bias=b_, agg_cache=agg_cache)[0]

    def reference(q_, v_, b_):
        return vq_attention_reference(q_, k, v_, L, band_bias=b_, agg_cache=agg_cache)

    want = torch.autograd.functional.jacobian(reference, inputs)
    assert all(w.abs().amax() > 0 for w in want)
    for fn in (one_call, pieces):
        for got, w in zip(torch.autograd.functional.jacobian(fn, inputs), want):
            torch.testing.assert_close(got, w, atol=1e-10, rtol=0)


def _last_block_grads(grad_thru_cache, cuts=None, wrt="v"):
    """Gradients of a random linear loss on the last block's outputs (T = 12, L = 3, 4 blocks)."""
    T, L = 12, 3
    q, k, v, z, cb, bias = make_inputs(B=1, H=1, G=2, T=T, S=3, L=L, seed=3)
    w = torch.randn(1, 2, L, 3, dtype=F64, generator=torch.Generator().manual_seed(9))
    x = (v if wrt == "v" else k).clone().requires_grad_()
    kv = dict(v=x, k=k) if wrt == "v" else dict(v=v, k=x)
    if cuts is None:
        out, _ = vq_attention(q, kv["k"], kv["v"], z, cb, L, band_bias=bias, grad_thru_cache=grad_thru_cache)
    else:
        out, _ = run_pieces(q, kv["k"], kv["v"], z, cb, L, cuts, bias=bias, grad_thru_cache=grad_thru_cache)
    (out[:, :, -L:] * w).sum().backward()
    xr = (v if wrt == "v" else k).clone().requires_grad_()
    kv_r = dict(v=xr, k=k) if wrt == "v" else dict(v=v, k=xr)
    ref = vq_attention_reference(q, kv_r["k"], kv_r["v"], L, band_bias=bias)
    torch.testing.assert_close(out.detach(), ref.detach(), atol=1e-10, rtol=0)
    (ref[:, :, -L:] * w).sum().backward()
    return x.grad, xr.grad


@pytest.mark.parametrize("cuts", [None, [0, 7, 12], list(range(13))], ids=["one_call", "halves", "tokens"])
def test_grad_thru_cache_switch(cuts):
    """Values of blocks 0..1 reach the last block (block 3) only through the compressive cache."""
    L = 3
    got, ref = _last_block_grads(True, cuts)
    assert ref[:, :, :2 * L].abs().amax() > 1e-3
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=0)       # with the gradient: exactly the reference
    got, ref = _last_block_grads(False, cuts)
    assert got[:, :, :2 * L].abs().amax() == 0                     # cut through the cache ...
    torch.testing.assert_close(got[:, :, 2 * L:], ref[:, :, 2 * L:], atol=1e-10, rtol=0)   # ... local blocks kept


@pytest.mark.parametrize("cuts", [None, [0, 7, 12]], ids=["one_call", "halves"])
def test_keys_inside_the_cache_get_no_gradient(cuts):
    """§3.6: the cache scores against the stop-gradient codebook, so keys of blocks 0..1 get no gradient
    from the last block while the two local blocks get exactly the reference's (straight-through) gradient."""
    L = 3
    got, ref = _last_block_grads(True, cuts, wrt="k")
    assert ref[:, :, :2 * L].abs().amax() > 1e-3 and got[:, :, :2 * L].abs().amax() == 0
    torch.testing.assert_close(got[:, :, 2 * L:], ref[:, :, 2 * L:], atol=1e-10, rtol=0)


# --------------------------------------------------------------------------------------------
# 5. Full (quadratic) attention
# --------------------------------------------------------------------------------------------


def masked_softmax_attention(q, k, v, bias=None, n_past=0):
    """Queries at positions n_past.. attend keys j <= their position; plain loops over query heads."""
    G = q.shape[1] // k.shape[1]
    out = torch.empty(*q.shape[:3], v.shape[-1], dtype=q.dtype)
    for i in range(q.shape[1]):
        s = q[:, i] @ k[:, i // G].transpose(-1, -2)
        if bias is not None:
            s = s + bias[:, i]
        t = torch.arange(q.shape[2])[:, None] + n_past
        s = s.masked_fill(torch.arange(k.shape[2])[None, :] > t, -math.inf)
        out[:, i] = torch.softmax(s, -1) @ v[:, i // G]
    return out


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("G", [1, 2])
def test_full_attention_equals_masked_softmax(G, with_bias):
    T = 10
    q, k, v, _, _, _ = make_inputs(H=2, G=G, T=T, Dk=4, Dv=3)
    bias = torch.randn(2, 2 * G, T, T, dtype=F64) if with_bias else None
    want = masked_softmax_attention(q, k, v, bias)
    torch.testing.assert_close(full_attention_reference(q, k, v, bias=bias), want, atol=1e-12, rtol=0)
    out, state = full_attention(q, k, v, bias=bias)
    torch.testing.assert_close(out, want, atol=1e-10, rtol=0)
    assert isinstance(state, FullAttentionState) and state.pos == T and state.k.shape[2] == T


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("cuts", [[0, 4, 10], [0, 3, 4, 9, 10], list(range(11))], ids=["halves", "ragged", "tokens"])
def test_full_attention_with_carried_state(cuts, with_bias):
    T = 10
    q, k, v, _, _, _ = make_inputs(H=1, G=2, T=T)
    bias = torch.randn(2, 2, T, T, dtype=F64) if with_bias else None
    want = full_attention_reference(q, k, v, bias=bias)
    state, outs = None, []
    for a, b in zip(cuts[:-1], cuts[1:]):
        # The piece's queries see every key held so far: bias columns 0..b-1.
        o, state = full_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b],
                                  bias=None if bias is None else bias[:, :, a:b, :b], state=state)
        assert state.pos == b and state.k.shape[2] == b
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, 2), want, atol=1e-10, rtol=0)


# --------------------------------------------------------------------------------------------
# 9. Public names and signature
# --------------------------------------------------------------------------------------------


def test_public_names_and_call_convention():
    import inspect

    from vqformer.nn.functional import vq_attention as fn
    from vqformer.nn.functional import vq_attention_reference as ref_fn
    assert callable(ref_fn)
    params = inspect.signature(fn).parameters
    assert list(params)[:6] == ["q", "k_hat", "v", "codes", "codebook", "block_len"]
    for kw in ("band_bias", "agg_cache", "state", "grad_thru_cache"):
        assert params[kw].kind is inspect.Parameter.KEYWORD_ONLY
    q, k, v, z, cb, bias = make_inputs(T=8, L=4)
    result = VF.vq_attention(q, k, v, z, cb, 4, band_bias=bias, agg_cache=True, state=None)
    assert isinstance(result, tuple) and len(result) == 2
    out, new_state = result
    assert isinstance(out, torch.Tensor) and out.shape == (2, 2, 8, 3)
    assert isinstance(new_state, VQAttentionState) and new_state.pos == 8
    out2, _ = VF.vq_attention(q, k, v, z, cb, 4, band_bias=bias, agg_cache=True, state=new_state)
    assert out2.shape == out.shape


def test_bad_shapes_are_rejected():
    q, k, v, z, cb, _ = make_inputs(T=8)
    with pytest.raises(ValueError, match="band_bias"):
        vq_attention(q, k, v, z, cb, 4, band_bias=torch.zeros(2, 2, 8, 3, dtype=F64))
    with pytest.raises(ValueError):
        vq_attention(q, k, v, z[:, :, :7], cb, 4)
    with pytest.raises(ValueError):
        vq_attention(q[:, :1].expand(2, 3, 8, 4), k, v, z, cb, 4)     # 3 query heads over 2 kv heads


# --------------------------------------------------------------------------------------------
# 10. Nothing quadratic in the VQ path
# --------------------------------------------------------------------------------------------


class ShapeRecorder(TorchFunctionMode):
    """Records the shape of every tensor returned by a torch function, Tensor method or operator."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for r in (result if isinstance(result, (tuple, list)) else (result,)):
            if isinstance(r, torch.Tensor):
                self.shapes.append(tuple(r.shape))
        return result


def quadratic(shapes, T, n_bh):
    """Shapes with both trailing dims >= T and at least T·T elements per (batch·head)."""
    return [s for s in shapes if len(s) >= 2 and s[-1] >= T and s[-2] >= T and math.prod(s) >= n_bh * T * T]


@pytest.mark.parametrize("agg_cache", [True, False])
def test_no_t_by_t_tensor_in_the_vq_path(agg_cache):
    T, L, B, H, G = 64, 8, 2, 2, 2
    q, k, v, z, cb, bias = make_inputs(B=B, H=H, G=G, T=T, L=L)
    with ShapeRecorder() as ref_rec:
        vq_attention_reference(q, k, v, L, band_bias=bias, agg_cache=agg_cache)
    assert quadratic(ref_rec.shapes, T, B * H * G)           # the recorder does see the reference's T×T scores
    for cuts in ([0, T], [0, 13, T]):
        with ShapeRecorder() as rec:
            run_pieces(q, k, v, z, cb, L, cuts, bias=bias, agg_cache=agg_cache)
        assert len(rec.shapes) > 20
        assert not quadratic(rec.shapes, T, B * H * G), quadratic(rec.shapes, T, B * H * G)
        # Stronger: nothing per (batch·head) is larger than O(T·(S + 2L) + T·D).
        biggest = max(math.prod(s) for s in rec.shapes) / (B * H * G)
        assert biggest < T * T / 2, biggest


# --------------------------------------------------------------------------------------------
# The chunked kernel's hand-written backward equals autograd through the eager definition
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_bytes,row_tiles", [(1, 1), (3000, 2), (None, 4)],
                         ids=["1block_1tile", "2blocks_2tiles", "default_4tiles"])
@pytest.mark.parametrize("cuts", [None, [0, 10, 24], [0, 8, 9, 24]], ids=["one_call", "ragged", "aligned"])
@pytest.mark.parametrize("grad_thru_cache", [True, False])
@pytest.mark.parametrize("agg_cache", [True, False])
@pytest.mark.parametrize("G,L", [(1, 1), (1, 4), (3, 2), (2, 8)])
def test_chunked_gradients_equal_eager(G, L, agg_cache, grad_thru_cache, cuts, chunk_bytes, row_tiles):
    """Every input's gradient (codebook and band bias included), with the state carried undetached
    between pieces and a loss on the final cache too, equals autograd through the eager kernel."""
    T = 24
    q, k, v, z, cb, bias = make_inputs(H=2, G=G, T=T, L=L, seed=3 * L + G)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v, cb, bias)]
    w = torch.randn(2, 2 * G, T, 3, generator=torch.Generator().manual_seed(7), dtype=F64)
    grads = {}
    for kernel in ("eager", "chunked"):
        for x in leaves:
            x.grad = None
        q_, k_, v_, cb_, b_ = leaves
        out, st = run_pieces(q_, k_, v_, z, cb_, L, cuts or [0, T], bias=b_, agg_cache=agg_cache,
                             grad_thru_cache=grad_thru_cache, kernel=kernel, chunk_bytes=chunk_bytes,
                             row_tiles=row_tiles)
        ((out * w).sum() + st.agg_sum.square().sum()).backward()
        grads[kernel] = [None if x.grad is None else x.grad.clone() for x in leaves]
    for name, a, b in zip(["q", "k_hat", "v", "codebook", "band_bias"], grads["eager"], grads["chunked"]):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(b, a, atol=1e-10, rtol=0, msg=name)


def test_unknown_kernel_is_rejected():
    q, k, v, z, cb, _ = make_inputs()
    with pytest.raises(ValueError, match="kernel='triton'"):
        vq_attention(q, k, v, z, cb, 4, kernel="triton")


def test_chunk_budget_counts_the_cache_tensors():
    """The chunk budget counts everything a block allocates (scores, keys, values, cache tensors), not only
    the scores: at the paper's shga dims the cache tensors are several times the score tensor, so one
    block already fills 8 MiB; with small dims many blocks share a chunk, and the chosen chunk fits."""
    from vqformer.nn.vq_chunked import chunk_blocks, chunk_bytes_per_block
    paper = dict(B=1, H=1, M=512, L=512, S=512, Dk=128, Dv=1536, agg_cache=True, itemsize=4)
    scores = paper["M"] * (paper["S"] + 2 * paper["L"]) * 4
    assert chunk_bytes_per_block(**paper) > 3 * scores
    assert chunk_blocks(1, 1, 256, 512, 512, 512, 128, 1536, True, 4, 8 << 20) == 1
    for dims in [(2, 1, 64, 32, 32, 64, 16, 32), (1, 4, 256, 128, 128, 256, 32, 64)]:
        B, H, R, M, L, S, Dk, Dv = dims
        for budget in (1 << 20, 64 << 20):
            C = chunk_blocks(B, H, R, M, L, S, Dk, Dv, True, 4, budget)
            per = chunk_bytes_per_block(B, H, M, L, S, Dk, Dv, True, 4)
            assert C == R or (C == 1 and per > budget) or C * per <= budget < (C + 1) * per
        assert C > 1      # the small dims really share chunks
    # without the cache only the local columns count
    assert chunk_bytes_per_block(1, 1, 64, 64, 512, 16, 16, False, 4) < chunk_bytes_per_block(
        1, 1, 64, 64, 512, 16, 16, True, 4) / 4
