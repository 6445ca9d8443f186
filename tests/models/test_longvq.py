"""LongVQ layers (docs/longvq.md §1.2, §1.4) against plain references, in float64.

* The damped EMA and S4D convolutions equal their recurrences (uni- and bidirectional, pads zeroed).
* Linear-time bidirectional VQ attention equals its O(T²) quantized-key reference for every block length
  dividing T, both windows, all attention functions, with bias and padding.
* Whole models (encoder and causal decoder) equal their reference evaluation; the decoder is causal.
* Bad configs fail naming ``model.<field>``.
"""
from __future__ import annotations

import pytest
import torch

from vqformer.nn.ema import S4D, DampedEMA
from vqformer.models.longvq import LongVQClassifier, LongVQConfig, LongVQDecoder
from vqformer.nn.vq_bidirectional import (bidir_attention_reference, chunk_attention, vq_attention_bidir,
                                          window_span)

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("single_thread")


def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


# ------------------------------------------------------------------------------------------ SSM


def ema_loop(m: DampedEMA, x, mask):
    """h_t = pβ x_t + q h_{t-1}; y_t = Σ_k γ h^{-1/2} h_t; the second channel half runs right to left."""
    x = x * mask[..., None]
    pb, q = m.coefficients()
    pb, q, g = pb[..., 0], q[..., 0], m.gamma * m.scale
    B, T, D = x.shape

    def run(xs, rows):
        h, ys = torch.zeros(B, D, m.n_dim, dtype=F64), []
        for t in range(T):
            h = pb[rows] * xs[:, t, :, None] + q[rows] * h
            ys.append((h * g[rows]).sum(-1))
        return torch.stack(ys, 1)

    y = run(x, slice(0, D))
    if m.bidirectional:
        y = y + run(x.flip(1), slice(D, 2 * D)).flip(1)
    return y


def s4d_loop(m: S4D, x, mask):
    x = x * mask[..., None]
    dta, b_bar, c = m.modes()
    B, T, D = x.shape

    def run(xs, rows):
        h, ys = torch.zeros(B, D, dta.shape[1], dtype=torch.complex128), []
        for t in range(T):
            h = torch.exp(dta[rows]) * h + b_bar[rows] * xs[:, t, :, None]
            ys.append(2 * (c[rows] * h).sum(-1).real)
        return torch.stack(ys, 1)

    y = run(x, slice(0, D))
    if m.bidirectional:
        y = y + run(x.flip(1), slice(D, 2 * D)).flip(1)
    return y


@pytest.mark.parametrize("cls, loop", [(DampedEMA, ema_loop), (S4D, s4d_loop)])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_ssm_convolution_equals_its_recurrence(cls, loop, bidirectional):
    torch.manual_seed(0)
    m = cls(5, 4, bidirectional=bidirectional).double()
    x = torch.randn(2, 13, 5, dtype=F64)
    mask = torch.ones(2, 13, dtype=torch.bool)
    mask[1, 9:] = False
    torch.testing.assert_close(m.conv(x, mask), loop(m, x, mask.to(F64)), rtol=1e-9, atol=1e-10)
    out = m(x, mask)
    torch.testing.assert_close(out, torch.nn.functional.silu(loop(m, x, mask.to(F64)) + m.omega * x * mask[..., None]))


def test_ema_init_and_truncation():
    m = DampedEMA(3, 4, bidirectional=True, truncation=5).double()
    assert m.beta.shape == (6, 4, 1)
    assert torch.allclose(m.beta[0, :, 0], torch.tensor([1., -1., 1., -1.], dtype=F64), atol=0.2)
    x = torch.randn(1, 9, 3, dtype=F64)
    full = DampedEMA(3, 4, bidirectional=True).double()
    full.load_state_dict(m.state_dict())
    # A truncated kernel drops lags >= 5: the first output only sees x_0..x_4 through the backward kernel.
    x2 = x.clone()
    x2[:, 5:] += 1.0
    assert torch.allclose(m.conv(x, None)[:, 0], m.conv(x2, None)[:, 0])
    assert not torch.allclose(full.conv(x, None)[:, 0], full.conv(x2, None)[:, 0])


# ------------------------------------------------------------------------------------------ attention


def make_attn(T=12, S=5, Z=4, V=3, B=2, seed=0, n_pad=3):
    g = torch.Generator().manual_seed(seed)
    codebook = torch.randn(S, Z, generator=g, dtype=F64)
    codes = torch.randint(0, S, (B, T), generator=g)
    q = torch.randn(B, T, Z, generator=g, dtype=F64)
    v = torch.randn(B, T, V, generator=g, dtype=F64)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, T - n_pad:] = False
    return q, codebook[codes], v, codes, codebook, mask


def loop_reference(q, k, v, mask, c, bias, attn_fn, window):
    """The definition with Python loops: bias b[j - i] when j is in i's window, real keys only."""
    from vqformer.nn.vq_bidirectional import elementwise, score_scale
    B, T, Z = q.shape
    scale = score_scale(attn_fn, Z, mask)
    out = torch.zeros(B, T, v.shape[-1], dtype=F64)
    span = window_span(window, c)
    for b in range(B):
        for i in range(T):
            js = [j for j in range(T) if mask[b, j]]
            near = [(j // c == i // c) if window == "chunk" else abs(j // c - i // c) <= 1 for j in js]
            s = torch.stack([q[b, i] @ k[b, j] * scale[b, 0, 0] + (bias[j - i + span - 1] if n else 0.0)
                             for j, n in zip(js, near)])
            w = torch.softmax(s, 0) if attn_fn == "softmax" else elementwise(attn_fn)(s)
            out[b, i] = sum(w[n] * v[b, j] for n, j in enumerate(js))
    return out


@pytest.mark.parametrize("attn_fn", ["softmax", "laplace", "relu2"])
@pytest.mark.parametrize("window", ["chunk", "band"])
def test_reference_equals_loops(attn_fn, window):
    q, k, v, _, _, mask = make_attn(T=8)
    bias = torch.randn(2 * window_span(window, 4) - 1, dtype=F64)
    ref = bidir_attention_reference(q, k, v, mask, 4, bias=bias, attn_fn=attn_fn, window=window)
    torch.testing.assert_close(ref, loop_reference(q, k, v, mask, 4, bias, attn_fn, window))


@pytest.mark.parametrize("attn_fn", ["softmax", "laplace", "relu2"])
@pytest.mark.parametrize("window", ["chunk", "band"])
@pytest.mark.parametrize("c", divisors(12))
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_time_equals_quadratic(attn_fn, window, c, with_bias):
    q, k, v, codes, codebook, mask = make_attn(T=12, seed=c)
    bias = torch.randn(2 * window_span(window, c) - 1, dtype=F64) if with_bias else None
    fast = vq_attention_bidir(q, k, v, codes, codebook, mask, c, bias=bias, attn_fn=attn_fn, window=window)
    ref = bidir_attention_reference(q, k, v, mask, c, bias=bias, attn_fn=attn_fn, window=window)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)


def test_linear_time_with_large_scores_is_finite_and_matches_in_float32():
    q, k, v, codes, codebook, mask = make_attn(T=16)
    q = q * 40
    fast = vq_attention_bidir(q.float(), k.float(), v.float(), codes, codebook.float(), mask, 4)
    ref = bidir_attention_reference(q, k, v, mask, 4)
    assert torch.isfinite(fast).all()
    torch.testing.assert_close(fast.double(), ref, rtol=1e-4, atol=1e-4)


def test_codebook_equal_to_distinct_keys_is_plain_attention():
    """§1.4 check (i): codes that reproduce the keys exactly give MEGA attention with the windowed bias."""
    q, k, v, codes, codebook, mask = make_attn(T=12, S=40)
    bias = torch.randn(2 * 3 - 1, dtype=F64)
    fast = vq_attention_bidir(q, k, v, codes, codebook, mask, 3, bias=bias)
    assert torch.equal(codebook[codes], k)
    torch.testing.assert_close(fast, bidir_attention_reference(q, k, v, mask, 3, bias=bias))


def test_chunk_attention_is_local():
    q, k, v, _, _, mask = make_attn(T=12)
    out = chunk_attention(q, k, v, mask, 4)
    ref = bidir_attention_reference(q, k, v, mask, 4, local_only=True)
    torch.testing.assert_close(out, ref)
    v2 = v.clone()
    v2[:, 8:] += 1.0                        # another chunk: no effect on the first chunk
    assert torch.allclose(chunk_attention(q, k, v2, mask, 4)[:, :4], out[:, :4])


def test_gradients_reach_queries_and_values():
    q, k, v, codes, codebook, mask = make_attn(T=12)
    q.requires_grad_(True)
    v.requires_grad_(True)
    vq_attention_bidir(q, k, v, codes, codebook, mask, 3).sum().backward()
    assert q.grad.abs().sum() > 0 and v.grad[0, -1].abs().sum() > 0


# ------------------------------------------------------------------------------------------ models


def tiny_cfg(**kw):
    base = dict(vocab_size=11, n_classes=3, d_model=8, d_ffn=12, z_dim=4, v_dim=6, n_dim=2, n_layer=2,
                n_code=5, block_len=4, dropout=0.0, max_len=32)
    base.update(kw)
    return LongVQConfig(**base)


@pytest.mark.parametrize("kw", [
    {}, {"window": "band"}, {"attn_fn": "laplace", "prenorm": True, "norm": "scalenorm"},
    {"attn_fn": "relu2", "ssm": "s4d", "norm": "rmsnorm"}, {"retrieval": True},
    {"embed": "real", "norm": "batchnorm", "prenorm": True, "bidirectional": False},
])
def test_encoder_equals_its_quadratic_reference(kw):
    torch.manual_seed(0)
    cfg = tiny_cfg(**kw)
    model = LongVQClassifier(cfg).double().eval()
    shape = (3, 2, 10) if cfg.retrieval else (3, 10)
    x = torch.randn(*shape, dtype=F64) if cfg.embed == "real" else torch.randint(1, 11, shape)
    mask = torch.ones(shape, dtype=torch.bool)
    mask[1, ..., 7:] = False
    logits, commit, stats = model(x, mask)
    ref, _, _ = model(x, mask, reference=True)
    assert logits.shape == (3, 3) and commit > 0 and "code_perplexity" in stats
    torch.testing.assert_close(logits, ref, rtol=1e-9, atol=1e-11)


def test_encoder_ignores_padding_content():
    torch.manual_seed(0)
    model = LongVQClassifier(tiny_cfg()).double().eval()
    x = torch.randint(1, 11, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[:, 6:] = False
    x2 = x.clone()
    x2[:, 6:] = 3
    torch.testing.assert_close(model(x, mask)[0], model(x2, mask)[0])


@pytest.mark.parametrize("kw", [{}, {"ssm": "s4d"}, {"attn_type": "full"}])
def test_decoder_equals_reference_and_is_causal(kw):
    torch.manual_seed(0)
    model = LongVQDecoder(tiny_cfg(**kw)).double().eval()
    x = torch.randint(0, 11, (2, 16))
    out, _, _ = model(x)
    torch.testing.assert_close(out, model(x, reference=True)[0], rtol=1e-9, atol=1e-11)
    for t in (0, 5, 9, 15):                 # perturbing token t changes no output before t
        x2 = x.clone()
        x2[:, t] = (x2[:, t] + 1) % 11
        out2, _, _ = model(x2)
        torch.testing.assert_close(out2[:, :t], out[:, :t], rtol=0, atol=1e-12)
        assert not torch.allclose(out2[:, t:], out[:, t:])


def test_training_updates_the_codebook_from_real_tokens_only():
    torch.manual_seed(0)
    model = LongVQClassifier(tiny_cfg(n_layer=1)).train()
    qz = model.quantizers()[0]
    x = torch.randint(1, 11, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 5:] = False
    logits, commit, _ = model(x, mask)
    (logits.sum() + commit).backward()
    assert qz.acc_count.sum() == 13          # 13 real tokens; the 3 pads are not counted
    before = qz.c_sum.clone()
    model.update_codebooks()
    assert not torch.equal(before, qz.c_sum) and qz.acc_count.sum() == 0


@pytest.mark.parametrize("kw, key", [
    ({"n_code": 0}, "model.n_code"), ({"attn_fn": "softmax2"}, "model.attn_fn"),
    ({"window": "ring"}, "model.window"), ({"ssm": "s5"}, "model.ssm"), ({"norm": "group"}, "model.norm"),
    ({"dropout": 1.0}, "model.dropout"), ({"attn_type": "linear"}, "model.attn_type"),
    ({"truncation": 0}, "model.truncation"), ({"embed": "conv"}, "model.embed"), ({"c_gamma": 1.0}, "model.c_gamma"),
])
def test_bad_config_names_the_key(kw, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        tiny_cfg(**kw)


@pytest.mark.parametrize("kw, key", [({"attn_fn": "laplace"}, "model.attn_fn"), ({"attn_type": "chunk"}, "model.attn_type")])
def test_decoder_rejects_what_the_recurrence_cannot_do(kw, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        LongVQDecoder(tiny_cfg(**kw))


@pytest.mark.parametrize("attn_fn", ["softmax", "laplace"])
@pytest.mark.parametrize("window", ["chunk", "band"])
def test_linear_time_gradients_to_queries_values_and_bias_equal_the_reference(attn_fn, window):
    q, k, v, codes, codebook, mask = make_attn(T=12)
    bias = torch.randn(2 * window_span(window, 3) - 1, dtype=F64)
    grads = []
    for fn in (lambda *a: vq_attention_bidir(*a[:3], codes, codebook, a[3], 3, bias=a[4], attn_fn=attn_fn, window=window),
               lambda *a: bidir_attention_reference(*a[:4], 3, bias=a[4], attn_fn=attn_fn, window=window)):
        leaves = [t.clone().requires_grad_(True) for t in (q, v, bias)]
        out = fn(leaves[0], k, leaves[1], mask, leaves[2])
        (out * torch.linspace(-1, 1, out.numel(), dtype=F64).view_as(out)).sum().backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
