"""Vector quantizer (docs/transformer_vq.md §2): nearest-code assignment, straight-through estimator, commit
loss, EMA k-means update over everything one optimizer step saw, codebook statistics."""
from __future__ import annotations

import math

import pytest
import torch

from vqformer.nn import VectorQuantizer

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("single_thread")


def quantizer(H=2, S=4, Dk=3, gamma=0.9, seed=0):
    """A float64 quantizer with a random codebook and uneven counts (one below the 0.01 clamp)."""
    torch.manual_seed(seed)
    vq = VectorQuantizer(H, S, Dk, gamma).double()
    vq.c_sum.normal_()
    vq.c_count.uniform_(0.5, 3.0)
    vq.c_count[0, 1] = 0.004
    vq.c_sum[0, 1] *= 0.004
    return vq


def gather_codes(codebook, codes):
    """codebook [H,S,D], codes [B,H,T] -> codebook[h, codes[b,h,t]]."""
    return codebook[torch.arange(codebook.shape[0])[None, :, None], codes]


def test_codebook_is_sum_over_clamped_count():
    vq = quantizer()
    want = torch.empty_like(vq.c_sum)
    for h in range(2):
        for s in range(4):
            want[h, s] = vq.c_sum[h, s] / max(vq.c_count[h, s].item(), 0.01)
    torch.testing.assert_close(vq.codebook, want, atol=0, rtol=1e-15)
    # The clamp is active for the tiny count: the codeword is c_sum / 0.01, not c_sum / 0.004.
    torch.testing.assert_close(vq.codebook[0, 1], vq.c_sum[0, 1] / 0.01)


def test_buffers_are_not_parameters():
    vq = quantizer()
    assert [n for n, _ in vq.named_parameters()] == []        # never seen by an optimizer
    assert {"c_sum", "c_count"} <= set(vq.state_dict())
    assert not vq.c_sum.requires_grad and not vq.c_count.requires_grad


def test_assignment_is_the_brute_force_argmin():
    vq = quantizer(H=2, S=6, Dk=3)
    k = torch.randn(3, 2, 11, 3, dtype=F64)
    cb = vq.codebook
    want = torch.empty(3, 2, 11, dtype=torch.long)
    for b in range(3):
        for h in range(2):
            for t in range(11):
                d = [((k[b, h, t] - cb[h, s]) ** 2).sum().item() for s in range(6)]
                want[b, h, t] = min(range(6), key=d.__getitem__)
    assert len(want.unique()) > 2                              # several codes in play
    assert torch.equal(vq.assign(k), want)
    assert torch.equal(vq(k).codes, want)


def test_assignment_uses_the_codebook_not_c_sum():
    """A code with a small count has a long codeword: the key next to c_sum/count goes to it."""
    vq = VectorQuantizer(1, 2, 2).double()
    vq.c_sum.copy_(torch.tensor([[[1.0, 0.0], [0.5, 0.0]]], dtype=F64))
    vq.c_count.copy_(torch.tensor([[1.0, 0.1]], dtype=F64))    # codewords (1, 0) and (5, 0)
    k = torch.tensor([[[[4.0, 0.0], [0.6, 0.0]]]], dtype=F64)
    assert vq.assign(k).tolist() == [[[1, 0]]]


def test_forward_value_is_the_codeword():
    vq = quantizer()
    k = torch.randn(2, 2, 7, 3, dtype=F64)
    out = vq(k)
    assert out.k_hat.shape == k.shape and out.codes.shape == (2, 2, 7) and out.codes.dtype == torch.long
    assert torch.equal(out.k_hat, gather_codes(vq.codebook, out.codes))


def test_straight_through_gradient_is_identity():
    vq = quantizer()
    k = torch.randn(2, 2, 5, 3, dtype=F64, requires_grad=True)
    upstream = torch.randn(2, 2, 5, 3, dtype=F64)
    (vq(k).k_hat * upstream).sum().backward()                  # random linear loss on k_hat
    torch.testing.assert_close(k.grad, upstream, atol=0, rtol=0)


def test_commit_loss_value_and_gradient():
    vq = quantizer()
    B, H, T = 2, 2, 5
    k = torch.randn(B, H, T, 3, dtype=F64, requires_grad=True)
    out = vq(k)
    c_z = gather_codes(vq.codebook, out.codes)
    total = 0.0
    for b in range(B):
        for t in range(T):
            total += sum(((k[b, h, t] - c_z[b, h, t]) ** 2).sum().item() for h in range(H))
    want = total / (B * T)                                     # mean over (B,T) of the sum over heads
    assert out.commit_loss.dim() == 0
    torch.testing.assert_close(out.commit_loss.item(), want, atol=1e-12, rtol=1e-12)
    (g,) = torch.autograd.grad(out.commit_loss, k)
    assert g.abs().amax() > 0
    torch.testing.assert_close(g, 2 * (k.detach() - c_z) / (B * T), atol=1e-14, rtol=0)


@pytest.mark.parametrize("name", ["c_sum", "c_count"])
def test_commit_loss_does_not_reach_the_codebook_buffers(name):
    vq = quantizer()
    leaf = getattr(vq, name).clone().requires_grad_()
    setattr(vq, name, leaf)                                    # still the registered buffer, now a leaf
    assert getattr(vq, name) is leaf
    k = torch.randn(1, 2, 4, 3, dtype=F64, requires_grad=True)
    out = vq(k)
    (out.commit_loss + (out.k_hat * torch.randn_like(k)).sum()).backward()
    assert k.grad.abs().amax() > 0
    assert leaf.grad is None or leaf.grad.abs().amax() == 0


def _ema_quantizer():
    vq = VectorQuantizer(1, 3, 2, c_gamma=0.9).double()
    vq.c_sum.copy_(torch.tensor([[[0.0, 0.0], [8.0, 0.0], [0.0, 6.0]]], dtype=F64))
    vq.c_count.copy_(torch.tensor([[1.0, 2.0, 1.5]], dtype=F64))   # codewords (0,0), (4,0), (0,4)
    return vq


def test_ema_update_over_two_micro_batches_matches_the_formula():
    vq = _ema_quantizer().train()
    c_sum0, c_count0 = vq.c_sum.clone(), vq.c_count.clone()
    # Two micro-batches of one optimizer step.
    k1 = torch.tensor([[[[0.1, 0.0], [3.9, 0.1], [4.2, 0.0]]]], dtype=F64)    # codes 0, 1, 1
    k2 = torch.tensor([[[[0.0, 3.8], [-0.2, 0.1]]],
                       [[[4.0, 0.5], [0.3, 4.1]]]], dtype=F64)                 # codes 2, 0 | 1, 2
    assert vq(k1).codes.tolist() == [[[0, 1, 1]]]
    assert vq(k2).codes.tolist() == [[[2, 0]], [[1, 2]]]
    # The codebook does not move before update().
    torch.testing.assert_close(vq.c_sum, c_sum0, atol=0, rtol=0)
    # By hand: n = counts per code over both calls, m = sums of the keys per code.
    n = torch.tensor([[2.0, 3.0, 2.0]], dtype=F64)
    m = torch.tensor([[[0.1 - 0.2, 0.0 + 0.1],
                       [3.9 + 4.2 + 4.0, 0.1 + 0.0 + 0.5],
                       [0.0 + 0.3, 3.8 + 4.1]]], dtype=F64)
    vq.update()
    torch.testing.assert_close(vq.c_count, 0.9 * c_count0 + 0.1 * n, atol=1e-14, rtol=0)
    torch.testing.assert_close(vq.c_sum, 0.9 * c_sum0 + 0.1 * m, atol=1e-14, rtol=0)
    torch.testing.assert_close(vq.codebook, vq.c_sum / vq.c_count.clamp(min=0.01)[..., None])
    # The accumulators are reset: a second update without forward calls changes nothing.
    after = vq.c_sum.clone(), vq.c_count.clone()
    vq.update()
    assert torch.equal(vq.c_sum, after[0]) and torch.equal(vq.c_count, after[1])


def test_unused_code_decays_towards_zero_count_and_keeps_its_codeword():
    vq = _ema_quantizer().train()
    vq(torch.tensor([[[[0.1, 0.0]]]], dtype=F64))              # only code 0 is used
    word = vq.codebook[0, 2].clone()
    vq.update()
    torch.testing.assert_close(vq.c_count[0, 2], torch.tensor(0.9 * 1.5, dtype=F64))
    torch.testing.assert_close(vq.codebook[0, 2], word)       # sum and count decay together


def test_eval_mode_does_not_accumulate():
    vq = _ema_quantizer().eval()
    before = vq.c_sum.clone(), vq.c_count.clone()
    vq(torch.randn(2, 1, 6, 2, dtype=F64))
    assert vq.acc_count.abs().sum() == 0 and vq.acc_sum.abs().sum() == 0
    vq.update()
    assert torch.equal(vq.c_sum, before[0]) and torch.equal(vq.c_count, before[1])


def test_update_with_nothing_accumulated_changes_nothing():
    vq = quantizer().train()
    before = vq.c_sum.clone(), vq.c_count.clone()
    vq.update()
    assert torch.equal(vq.c_sum, before[0]) and torch.equal(vq.c_count, before[1])


def test_statistics_on_a_known_assignment():
    vq = VectorQuantizer(2, 4, 2).double()
    words = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]], dtype=F64)
    vq.c_sum.copy_(words.expand(2, 4, 2))
    vq.c_count.fill_(1.0)
    k = torch.tensor([[[[0.1, 0.0], [0.0, 0.1], [9.9, 0.0], [10.0, 0.1]],      # head 0: codes 0, 0, 1, 1
                       [[0.0, 9.0], [0.1, 9.9], [9.0, 10.0], [0.2, 10.2]]]],   # head 1: codes 2, 2, 3, 2
                     dtype=F64)
    out = vq(k)
    assert out.codes.tolist() == [[[0, 0, 1, 1], [2, 2, 3, 2]]]
    stats = out.stats
    # Unused codes: head 0 misses 2 and 3, head 1 misses 0 and 1 -> 2 per head on average.
    assert stats["unused_codes"].item() == 2
    # Perplexity exp(entropy) per head, averaged: head 0 uses two codes equally (2), head 1 in 3:1.
    h1 = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    torch.testing.assert_close(stats["code_perplexity"].item(), (2.0 + h1) / 2, atol=1e-6, rtol=0)
    # Relative quantisation error ||k - C_z|| / ||k||, averaged over all keys.
    c_z = gather_codes(vq.codebook, out.codes)
    rel = [(k[0, h, t] - c_z[0, h, t]).norm().item() / k[0, h, t].norm().item() for h in range(2) for t in range(4)]
    torch.testing.assert_close(stats["rel_quant_error"].item(), sum(rel) / 8, atol=1e-6, rtol=0)
    assert all(not v.requires_grad for v in stats.values())


def test_statistics_when_one_code_takes_everything():
    vq = quantizer(H=1, S=4, Dk=3)
    k = vq.codebook[0, 2].expand(1, 1, 5, 3).clone()
    stats = vq(k).stats
    assert stats["unused_codes"].item() == 3
    torch.testing.assert_close(stats["code_perplexity"].item(), 1.0, atol=1e-6, rtol=0)
    assert stats["rel_quant_error"].item() < 1e-6


def test_mask_keeps_pads_out_of_everything_but_the_quantized_keys():
    """A masked call (LongVQ's padded batches) equals an unmasked call on the real tokens alone: the same codes
    and k̂ at real positions, commit loss (mean over real positions), statistics and EMA accumulators; the
    commit loss sends no gradient to pads."""
    lengths = (5, 2, 7)
    k = torch.randn(3, 2, 7, 3, dtype=F64, requires_grad=True)
    mask = torch.arange(7)[None, :] < torch.tensor(lengths)[:, None]
    masked = quantizer().train()
    out = masked(k, mask)
    real = torch.cat([k[b, :, :n] for b, n in enumerate(lengths)], 1)[None]     # [1,H,14,Dk]
    alone = quantizer().train()
    ref = alone(real)
    torch.testing.assert_close(torch.cat([out.k_hat[b, :, :n] for b, n in enumerate(lengths)], 1)[None], ref.k_hat,
                               atol=0, rtol=0)
    assert torch.equal(torch.cat([out.codes[b, :, :n] for b, n in enumerate(lengths)], 1)[None], ref.codes)
    torch.testing.assert_close(out.commit_loss, ref.commit_loss, atol=1e-12, rtol=0)
    for name in ref.stats:
        torch.testing.assert_close(out.stats[name], ref.stats[name], atol=1e-6, rtol=0, msg=name)
    torch.testing.assert_close(masked.acc_count, alone.acc_count, atol=0, rtol=0)
    torch.testing.assert_close(masked.acc_sum, alone.acc_sum, atol=1e-12, rtol=0)
    assert masked.acc_count.sum() == 2 * sum(lengths)
    (g,) = torch.autograd.grad(out.commit_loss, k)
    assert (g[~mask[:, None, :].expand(-1, 2, -1)] == 0).all() and g.abs().sum() > 0
