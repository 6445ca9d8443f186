"""The fused path ``kernel="flex"`` (``nn/vq_flex.py``) equals the float64 reference.

On CPU FlexAttention has no backward and compiles only fp32/bf16/fp16 (torch 2.13), so:
* float64 values: torch's eager FlexAttention with our ``score_mod`` and block mask, every block length
  dividing T = 12, with and without the cache and the band bias, grouped queries, carried state;
* float64 gradients: the same mods evaluated block by block with autograd (``backend="blockwise"``, the
  CPU training path);
* the compiled kernel (what runs on GPUs) in fp32 against float64, one case per cache setting;
* ``gpu``-marked: the compiled kernel on CUDA, values and gradients (the fused backward), fp32 and bf16.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from test_vq_attention import divisors, make_inputs, run_pieces
from vqformer.nn.functional import vq_attention, vq_attention_reference
from vqformer.nn.vq_flex import vq_attention_flex

pytestmark = [pytest.mark.usefixtures("single_thread"),
              pytest.mark.filterwarnings("ignore:.*flex_attention.*"), pytest.mark.filterwarnings("ignore::UserWarning")]
CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("agg_cache", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("H,G", [(2, 1), (1, 3)])
@pytest.mark.parametrize("L", divisors(12))
def test_flex_values_equal_reference(L, H, G, with_bias, agg_cache):
    q, k, v, z, cb, bias = make_inputs(H=H, G=G, T=12, L=L if with_bias else None)
    ref = vq_attention_reference(q, k, v, L, band_bias=bias, agg_cache=agg_cache)
    with torch.no_grad():      # no gradient: torch's eager FlexAttention runs the real mods and block mask
        out, _ = vq_attention(q, k, v, z, cb, L, band_bias=bias, agg_cache=agg_cache, kernel="flex")
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("agg_cache", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("L", divisors(12))
def test_flex_gradients_equal_reference(L, with_bias, agg_cache):
    q, k, v, z, cb, bias = make_inputs(H=2, G=2, T=12, L=L if with_bias else None)
    leaves = [t.requires_grad_() for t in (q, v, bias) if t is not None]
    ref = vq_attention_reference(q, k, v, L, band_bias=bias, agg_cache=agg_cache)
    out, _ = vq_attention(q, k, v, z, cb, L, band_bias=bias, agg_cache=agg_cache, kernel="flex")
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad((out * g).sum(), leaves), torch.autograd.grad((ref * g).sum(), leaves)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("agg_cache", [True, False])
@pytest.mark.parametrize("cuts", [[0, 6, 12], [0, 4, 5, 12], [0, 3, 9, 12]], ids=["halves", "ragged", "mid"])
def test_flex_with_carried_state(cuts, agg_cache):
    L = 3
    q, k, v, z, cb, bias = make_inputs(H=2, G=2, T=12, L=L)
    q.requires_grad_()
    ref = vq_attention_reference(q, k, v, L, band_bias=bias, agg_cache=agg_cache)
    out, st = run_pieces(q, k, v, z, cb, L, cuts, bias=bias, agg_cache=agg_cache, kernel="flex")
    one, st1 = vq_attention(q, k, v, z, cb, L, band_bias=bias, agg_cache=agg_cache, kernel="eager")
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(st.agg_sum, st1.agg_sum, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad((out * g).sum(), q)[0], torch.autograd.grad((ref * g).sum(), q)[0],
                               rtol=1e-10, atol=1e-12)
    with torch.no_grad():      # the fused path (not the blockwise evaluation) with a carried state
        out2, _ = run_pieces(q, k, v, z, cb, L, cuts, bias=bias, agg_cache=agg_cache, kernel="flex")
    torch.testing.assert_close(out2, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("agg_cache", [True, False])
def test_compiled_flex_fp32_equals_reference(agg_cache):
    """The torch.compile'd FlexAttention (the kernel GPUs run) on CPU in fp32; ~20 s to compile."""
    L = 4
    q, k, v, z, cb, bias = make_inputs(H=2, G=2, T=16, L=L, dtype=torch.float32, seed=1)
    ref = vq_attention_reference(*(t.double() for t in (q, k, v)), L, band_bias=bias.double(), agg_cache=agg_cache)
    with torch.no_grad():
        out, _ = vq_attention(q, k, v, z, cb, L, band_bias=bias, agg_cache=agg_cache, kernel="flex")
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_flex_backend_choices_are_checked():
    q, k, v, z, cb, _ = make_inputs(H=1, T=4)
    with pytest.raises(ValueError, match="backend"):
        vq_attention_flex(q, k, v, z, None, k[:, :, :2], v[:, :, :2], z[:, :, :2], None, None, cb, 2,
                          backend="triton")
    q.requires_grad_()
    with pytest.raises(NotImplementedError, match="no backward on CPU"):
        vq_attention_flex(q, k, v, z, None, k[:, :, :2], v[:, :, :2], z[:, :, :2], None, None, cb, 2,
                          backend="eager")


# --------------------------------------------------------------------------------------------
# GPU: the fused forward and backward (run by `make gpu-check`)
# --------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype,tol_v,tol_g", [(torch.float32, 1e-4, 1e-3), (torch.bfloat16, 0.06, 0.08)])
@pytest.mark.parametrize("kernel", ["flex", "chunked", "eager"])
@pytest.mark.parametrize("agg_cache", [True, False])
def test_gpu_kernels_equal_reference(agg_cache, kernel, dtype, tol_v, tol_g):
    """fp32 (IEEE matmuls, torch's default) and bf16 autocast (the CPU tests' stated tolerances) on CUDA."""
    L, dev = 64, "cuda"
    q, k, v, z, cb, bias = make_inputs(B=2, H=2, G=2, T=512, S=64, Dk=64, Dv=64, L=L, q_scale=2.0, seed=3)
    q, k, v, z, cb, bias = (t.to(dev) for t in (q, k, v, z, cb, bias))
    leaves = [t.requires_grad_() for t in (q, v, bias)]
    ref = vq_attention_reference(q, k, v, L, band_bias=bias, agg_cache=agg_cache)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0), dtype=ref.dtype).to(dev)
    ref_grads = torch.autograd.grad((ref * g).sum(), leaves)
    with warnings.catch_warnings(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        warnings.simplefilter("ignore")
        args = [t.float() for t in (q, k, v)]
        out, _ = vq_attention(*args, z, cb.float(), L, band_bias=bias.float(), agg_cache=agg_cache, kernel=kernel)
    grads = torch.autograd.grad((out.double() * g).sum(), leaves)
    assert (out.double() - ref).abs().max() <= tol_v * ref.abs().max()
    for name, a, b in zip(("q", "v", "band_bias"), grads, ref_grads):
        assert (a - b).abs().max() <= tol_g * b.abs().max(), name


@pytest.mark.parametrize("head_type", ["shga", "mqa"])
def test_model_training_step_with_flex_equals_eager(head_type):
    """``model.kernel=flex`` through the whole model (float64): loss and every gradient equal eager."""
    from vqformer.models import TransformerVQ, TransformerVQConfig
    tiny = dict(vocab_size=11, d_model=16, d_k=8, d_v=16, n_layer=1, n_code=8, block_len=4, head_type=head_type)
    tokens = torch.randint(0, 11, (2, 17), generator=torch.Generator().manual_seed(0))
    grads = {}
    for kernel in ("eager", "flex"):
        torch.manual_seed(0)
        model = TransformerVQ(TransformerVQConfig(**tiny, kernel=kernel)).double()
        logits, aux = model(tokens[:, :16])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()) + aux.commit_loss
        loss.backward()
        grads[kernel] = {"loss": loss.detach(), **{n: p.grad for n, p in model.named_parameters() if p.grad is not None}}
    assert grads["flex"].keys() == grads["eager"].keys()
    for name, g in grads["eager"].items():
        torch.testing.assert_close(grads["flex"][name], g, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_tiny_model_trains_with_flex_in_bf16_like_fp32():
    """The fused forward and backward inside a training loop: 100 bf16-mixed updates on CUDA end within
    0.15 nats of fp32 (the CPU test's tolerance)."""
    from test_mixed_precision import train
    torch.set_default_device("cuda")
    try:
        fp32, bf16 = train("32-true", kernel="flex"), train("bf16-mixed", kernel="flex")
    finally:
        torch.set_default_device("cpu")
    assert abs(sum(bf16[-10:]) / 10 - sum(fp32[-10:]) / 10) <= 0.15


def test_wide_values_split_into_several_calls_stay_exact():
    """``max_value_dim`` (256 on CUDA, for shga's D_v = 1536): value columns in several FlexAttention
    calls over the same scores equal one call."""
    L = 3
    q, k, v, z, cb, bias = make_inputs(H=2, G=2, T=12, Dv=5, L=L)
    B, H, T = k.shape[:3]
    S = cb.shape[1]
    st_k, st_v = k.new_zeros(B, H, L, k.shape[-1]), v.new_zeros(B, H, L, v.shape[-1])
    st_z = torch.full((B, H, L), S)
    cnt = torch.rand(B, H, T // L, S, dtype=torch.float64) * 3
    sums = torch.randn(B, H, T // L, S, 5, dtype=torch.float64)
    args = (q, k, v, z, bias, st_k, st_v, st_z, sums, cnt, cb, L)
    one = vq_attention_flex(*args, backend="eager")
    split = vq_attention_flex(*args, backend="eager", max_value_dim=2)
    torch.testing.assert_close(split, one, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(one, vq_attention_flex(*args, backend="blockwise"), rtol=1e-12, atol=1e-12)
