"""The optimizers and schedule against float64 transcriptions of the documented update rules
(docs/transformer_vq.md §4.2; optax.adafactor's chain as the official code configures it)."""
import math

import numpy as np
import pytest
import torch

from vqformer.optim import Adafactor, AdamWConstantDecay, warmup_cosine
from vqformer.optim.adafactor import factored_dims


def adafactor_reference(params, grads_per_step, lr, wd, decay_rate=0.8, eps=1e-30, eps_scale=1e-3,
                        clip=1.0, min_dim=128):
    """numpy float64: scale_by_factored_rms → clip_by_block_rms → ×lr → ×max(RMS(p), eps_scale) → −, − wd·p."""
    params = [np.array(p, dtype=np.float64) for p in params]
    stats = [None] * len(params)
    for t, grads in enumerate(grads_per_step):
        beta = 1.0 - (t + 1.0) ** (-decay_rate)
        for i, (p, g) in enumerate(zip(params, grads)):
            g = np.asarray(g, dtype=np.float64)
            g2 = g * g + eps
            shape = p.shape
            dims = None
            if p.ndim >= 2:
                order = np.argsort(shape, kind="stable")
                if shape[order[-2]] >= min_dim:
                    dims = (int(order[-2]), int(order[-1]))
            if dims is None:
                v = np.zeros_like(p) if stats[i] is None else stats[i]
                v = beta * v + (1 - beta) * g2
                stats[i] = v
                u = g / np.sqrt(v)
            else:
                r, c = dims
                vr, vc = (np.zeros(np.delete(shape, c)), np.zeros(np.delete(shape, r))) if stats[i] is None \
                    else stats[i]
                vr = beta * vr + (1 - beta) * g2.mean(axis=c)
                vc = beta * vc + (1 - beta) * g2.mean(axis=r)
                stats[i] = (vr, vc)
                r_in = r - 1 if r > c else r
                row = (vr / vr.mean(axis=r_in, keepdims=True)) ** -0.5
                u = g * np.expand_dims(row, c) * np.expand_dims(vc ** -0.5, r)
            u = u / max(1.0, np.sqrt(np.mean(u * u)) / clip)
            scale = lr * max(np.sqrt(np.mean(p * p)), eps_scale)
            params[i] = p - scale * u - (wd if p.ndim != 1 else 0.0) * p
    return params


SHAPES = [(256, 130), (130, 256), (3, 200, 150), (100, 50), (64,), (), (1, 128, 128)]


def test_factored_dims_follow_optax():
    assert factored_dims(torch.Size([256, 130]), 128) == (1, 0)
    assert factored_dims(torch.Size([130, 256]), 128) == (0, 1)
    assert factored_dims(torch.Size([3, 200, 150]), 128) == (2, 1)
    assert factored_dims(torch.Size([100, 50]), 128) is None
    assert factored_dims(torch.Size([64]), 128) is None
    assert factored_dims(torch.Size([128, 128]), 128) == (0, 1)   # ties: the later dim is the largest


@pytest.mark.parametrize("wd", [0.0, 1e-3])
def test_adafactor_equals_float64_transcription(wd):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen, dtype=torch.float64) * (0.0 if s == (64,) else 0.5) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) * 10 ** k for s in SHAPES] for k in (-3, 0, 2)]
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    groups = [{"params": [p for p in ps if p.ndim != 1], "constant_decay": wd},
              {"params": [p for p in ps if p.ndim == 1], "constant_decay": 0.0}]
    opt = Adafactor(groups, lr=0.01)
    for step_grads in grads:
        for p, g in zip(ps, step_grads):
            p.grad = g.clone()
        opt.step()
    ref = adafactor_reference([p.numpy() for p in params], [[g.numpy() for g in gs] for gs in grads], 0.01, wd)
    for p, r, s in zip(ps, ref, SHAPES):
        np.testing.assert_allclose(p.detach().numpy(), r, rtol=1e-12, atol=1e-15, err_msg=str(s))


def test_adafactor_has_no_relative_step_cap():
    """Late in training the step is lr·RMS(p)·u with RMS(u) clipped to 1, whatever t (torch's caps it at 1/√t)."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(300, 200))
    opt = Adafactor([p], lr=0.01)
    p.grad = torch.randn_like(p)
    opt.step()
    opt.state[p]["step"] = 40_000
    before = p.detach().clone()
    p.grad = torch.randn_like(p)
    opt.step()
    step_rms = (p.detach() - before).pow(2).mean().sqrt()
    assert step_rms == pytest.approx(0.01 * before.pow(2).mean().sqrt().item(), rel=1e-4)
    capped = 1 / math.sqrt(40_001)
    assert step_rms.item() > 1.5 * capped * before.pow(2).mean().sqrt().item()   # not torch's min(lr, 1/√t)


def test_adamw_decay_is_not_scaled_by_lr():
    p = torch.nn.Parameter(torch.full((4, 4), 2.0))
    opt = AdamWConstantDecay([{"params": [p], "constant_decay": 0.1}], lr=0.0)
    p.grad = torch.ones_like(p)
    opt.step()
    assert torch.allclose(p.detach(), torch.full((4, 4), 1.8))


def optax_schedule(t, w, end, alpha):
    """optax.join_schedules([linear_schedule(0, 1, w), cosine_decay_schedule(1, end - w, alpha)], [w])."""
    if t < w:
        return t / w
    d = end - w
    return (1 - alpha) * 0.5 * (1 + math.cos(math.pi * min(t - w, d) / d)) + alpha


@pytest.mark.parametrize("w,end", [(10, 50), (1, 7), (20, 200)])
def test_schedule_is_the_official_one(w, end):
    fn = warmup_cosine(w, end, 0.1)
    assert fn(0) == 0.0                                    # the official first update has lr 0
    for t in range(0, end + 20):
        assert fn(t) == pytest.approx(optax_schedule(t, w, end, 0.1), abs=1e-15)
    assert warmup_cosine(w, end, 0.1, from_zero=False)(0) == 1 / w


def test_cosine_end_is_its_own_knob():
    from types import SimpleNamespace

    from vqformer.optim import schedule_end
    assert schedule_end(SimpleNamespace(decay_end_step=500), 200) == 500
    assert schedule_end(SimpleNamespace(decay_end_step=None), 200) == 200
    assert schedule_end(SimpleNamespace(), 200) == 200
