"""Vector quantizer (transformer_vq.md §2): nearest-code assignment, straight-through estimator, commit
loss, EMA k-means update over everything one optimizer step saw, codebook statistics."""
from __future__ import annotations

import torch

from vqformer.nn import VectorQuantizer

F64 = torch.float64


def quantizer(H=2, S=4, Dk=3, gamma=0.9):
    torch.manual_seed(0)
    return VectorQuantizer(H, S, Dk, gamma).double()


def test_codebook_is_sum_over_clamped_count():
    vq = quantizer()
    vq.c_count[0, 1] = 0.001
    torch.testing.assert_close(vq.codebook, vq.c_sum / vq.c_count.clamp(min=0.01)[..., None])


def test_assignment_is_the_nearest_code_and_forward_value_is_the_codeword():
    vq = quantizer()
    k = torch.randn(2, 2, 7, 3, dtype=F64)
    out = vq(k)
    d = ((k[:, :, :, None, :] - vq.codebook[None, :, None]) ** 2).sum(-1)     # brute force [B,H,T,S]
    assert torch.equal(out.codes, d.argmin(-1))
    want = torch.stack([vq.codebook[h][out.codes[:, h]] for h in range(2)], dim=1)
    torch.testing.assert_close(out.k_hat, want, atol=1e-12, rtol=0)


def test_straight_through_gradient_is_identity():
    vq = quantizer()
    k = torch.randn(2, 2, 5, 3, dtype=F64, requires_grad=True)
    upstream = torch.randn(2, 2, 5, 3, dtype=F64)
    (vq(k).k_hat * upstream).sum().backward()
    torch.testing.assert_close(k.grad, upstream)


def test_commit_loss_value_and_gradients():
    vq = quantizer()
    k = torch.randn(2, 2, 5, 3, dtype=F64, requires_grad=True)
    out = vq(k)
    c_z = torch.stack([vq.codebook[h][out.codes[:, h]] for h in range(2)], dim=1)
    want = ((k.detach() - c_z) ** 2).sum(-1).sum(1).mean()           # mean over (B,T) of sum over heads
    torch.testing.assert_close(out.commit_loss.detach(), want)
    out.commit_loss.backward()
    assert k.grad.abs().sum() > 0
    torch.testing.assert_close(k.grad, 2 * (k.detach() - c_z) / 10)
    assert not vq.c_sum.requires_grad and not vq.c_count.requires_grad
    assert [n for n, _ in vq.named_parameters()] == []            # the codebook is never an optimizer parameter


def test_commit_loss_does_not_reach_the_codebook():
    vq = quantizer()
    c_sum = vq.c_sum.clone().requires_grad_()
    vq.c_sum = c_sum
    k = torch.randn(1, 2, 4, 3, dtype=F64, requires_grad=True)
    out = vq(k)
    (out.commit_loss + out.k_hat.sum()).backward()
    assert c_sum.grad is None or c_sum.grad.abs().max() == 0


def test_ema_update_matches_the_formula_on_a_hand_made_example():
    vq = VectorQuantizer(1, 3, 2, c_gamma=0.9).double()
    vq.c_sum.copy_(torch.tensor([[[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]]], dtype=F64))
    vq.c_count.fill_(1.0)
    before_sum, before_count = vq.c_sum.clone(), vq.c_count.clone()
    # Two micro-batches of one optimizer step: keys near code 0, 1, 1 and near code 2, 0.
    k1 = torch.tensor([[[[0.1, 0.0], [3.9, 0.1], [4.2, 0.0]]]], dtype=F64)
    k2 = torch.tensor([[[[0.0, 3.8], [-0.2, 0.1]]]], dtype=F64)
    vq.train()
    assert vq(k1).codes.tolist() == [[[0, 1, 1]]] and vq(k2).codes.tolist() == [[[2, 0]]]
    n = torch.tensor([[2.0, 2.0, 1.0]], dtype=F64)
    m = torch.tensor([[[-0.1, 0.1], [8.1, 0.1], [0.0, 3.8]]], dtype=F64)
    vq.update()
    torch.testing.assert_close(vq.c_count, 0.9 * before_count + 0.1 * n)
    torch.testing.assert_close(vq.c_sum, 0.9 * before_sum + 0.1 * m)
    assert vq.acc_count.abs().sum() == 0 and vq.acc_sum.abs().sum() == 0


def test_eval_mode_does_not_accumulate_and_empty_update_changes_nothing():
    vq = quantizer().eval()
    vq(torch.randn(1, 2, 6, 3, dtype=F64))
    assert vq.acc_count.sum() == 0
    before = (vq.c_sum.clone(), vq.c_count.clone())
    vq.update()
    assert torch.equal(vq.c_sum, before[0]) and torch.equal(vq.c_count, before[1])


def test_statistics_on_a_known_assignment():
    vq = VectorQuantizer(1, 4, 2).double()
    vq.c_sum.copy_(torch.tensor([[[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]]], dtype=F64))
    vq.c_count.fill_(1.0)
    k = torch.tensor([[[[0.1, 0.0], [0.0, 0.1], [9.9, 0.0], [10.0, 0.1]]]], dtype=F64)   # codes 0,0,1,1
    stats = vq(k).stats
    assert stats["unused_codes"].item() == 2
    torch.testing.assert_close(stats["code_perplexity"].item(), 2.0)      # two codes used equally
    # ||k - C_z|| / ||k|| per key: 1, 1 for the keys at the origin's code, then 0.1/9.9 and 0.1/||(10, 0.1)||.
    want = (1 + 1 + 0.1 / 9.9 + 0.1 / (100.01 ** 0.5)) / 4
    torch.testing.assert_close(stats["rel_quant_error"].item(), want)
