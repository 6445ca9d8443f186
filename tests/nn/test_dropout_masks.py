"""Dropout masks and pad masks of the training path (docs/transformer_vq.md §1.5, §2.3–2.4).

* Every GAU has its own sinusoid-dropout mask, and the model hands each unit its own.
* Masks are a function of (batch seed, global example index): a micro-batch gets exactly the rows of the
  whole batch's masks, so training with ``micro_batch_size`` gives the same gradients as without (float64).
* Pads (mask False) stay out of every quantizer's commit loss and EMA statistics, in the model and on the
  LM module's training path.
"""
from __future__ import annotations

import lightning as L
import pytest
import torch

from vqformer.lit.lm_module import LMModule
from vqformer.models import TransformerVQ, TransformerVQConfig
from vqformer.nn.dropout import keep_mask, uniform

TINY = dict(vocab_size=13, d_model=16, d_k=8, d_v=16, n_layer=2, head_type="shga", n_code=5, block_len=4)


def test_hashed_uniforms_are_uniform_and_prefix_consistent():
    ex = torch.arange(3, 7)
    u = uniform(12345, 2, ex, 20000)
    assert u.shape == (4, 20000) and 0 <= float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    assert float((u[0] - u[1]).abs().mean()) > 0.2                       # examples are not copies
    torch.testing.assert_close(uniform(12345, 2, ex, 50), u[:, :50], rtol=0, atol=0)   # row r never moves
    torch.testing.assert_close(uniform(12345, 2, ex[2:], 50), u[2:, :50], rtol=0, atol=0)
    assert not torch.equal(uniform(12345, 3, ex, 50), u[:, :50])          # another stream, another mask
    assert not torch.equal(uniform(12346, 2, ex, 50), u[:, :50])          # another batch, another mask
    assert not torch.equal(uniform(12345 + 2 ** 40, 2, ex, 50), u[:, :50])   # high seed bits count
    m = keep_mask(7, 0, torch.arange(64), (40, 16), 0.25)
    assert m.unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    assert abs(float((m == 0).float().mean()) - 0.25) < 0.02


def test_every_gau_gets_its_own_sinusoid_mask():
    model = TransformerVQ(TransformerVQConfig(**TINY, p_dropsin=0.5, p_droplyr=0.5)).train()
    _, sins = model.drop_masks(3, 0, 8, drop_seed=11)
    assert len(sins) == len(model.units) == 4
    assert all(s.shape == (3, TINY["block_len"] + 1, TINY["d_model"]) for s in sins)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.equal(sins[i], sins[j]), (i, j)
    seen = {}
    hooks = [u.mixer.register_forward_pre_hook(lambda mod, args, i=i: seen.__setitem__(i, args[4]))
             for i, u in enumerate(model.units)]
    model(torch.randint(0, 13, (3, 8)), drop_seed=11)
    for h in hooks:
        h.remove()
    for i in range(4):
        torch.testing.assert_close(seen[i], sins[i], rtol=0, atol=0)


def test_a_micro_batch_gets_the_rows_of_the_whole_batch_masks():
    model = TransformerVQ(TransformerVQConfig(**TINY, p_dropsin=0.3, p_droplyr=0.5)).train()
    layer, sins = model.drop_masks(6, 0, 8, drop_seed=5)
    # The old behaviour (one mask per call) gave example b and b + 3 the same LayerDrop and sinusoid masks.
    assert not torch.equal(layer[:, :3], layer[:, 3:]) and not torch.equal(sins[0][:3], sins[0][3:])
    for b0 in (0, 2, 3):
        part_layer, part_sins = model.drop_masks(3, 0, 8, drop_seed=5, example_offset=b0)
        torch.testing.assert_close(part_layer, layer[:, b0:b0 + 3], rtol=0, atol=0)
        for s, whole in zip(part_sins, sins):
            torch.testing.assert_close(s, whole[b0:b0 + 3], rtol=0, atol=0)


def test_full_attention_sinusoid_mask_rows_do_not_depend_on_the_window():
    """The quadratic baseline reads pos + T distances: a later window's table extends the earlier one."""
    model = TransformerVQ(TransformerVQConfig(**TINY, attn_type="full", p_dropsin=0.5)).train()
    _, first = model.drop_masks(2, 0, 8, drop_seed=3)
    _, later = model.drop_masks(2, 8, 8, drop_seed=3)
    assert later[0].shape[1] == 16
    torch.testing.assert_close(later[0][:, :8], first[0], rtol=0, atol=0)


# ------------------------------------------------------------------ the LM module's training path


class GradsPerUpdate(L.Callback):
    def __init__(self):
        self.grads, self.counts = [], []

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.grads.append({n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None})
        self.counts.append([(q.acc_count.clone(), q.acc_sum.clone()) for q in module.model.quantizers()])


def _batch(B=4, T=16, pad_rows=()):
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, 13, (B, T + 1), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    for r in pad_rows:
        mask[r, T // 2:] = False
    return {"inputs": seq[:, :-1], "targets": seq[:, 1:], "mask": mask}


def _one_batch(micro_batch_size, batch, spy=None, **model_kw):
    torch.manual_seed(0)
    module = LMModule(model=dict(TINY, **model_kw), update_len=8, micro_batch_size=micro_batch_size, seed=3,
                      optim=dict(name="adamw", lr=1e-3, betas=[0.9, 0.98], eps=1e-9, weight_decay=0.0, grad_clip=None,
                                 warmup_steps=2, warmup_from_zero=True, min_lr_ratio=0.1, decay_end_step=None))
    # The first update has learning rate 0 (official warmup): Adam's first step is lr·sign(g), which would
    # turn rounding noise in near-zero gradients into different parameters for the second update.
    grads = GradsPerUpdate()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=2, precision="64-true", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[grads] + ([spy] if spy else []))
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))
    return grads


@pytest.mark.parametrize("pad_rows", [(), (1,)])
def test_micro_batches_give_the_update_of_the_whole_batch(pad_rows):
    """Two update windows (state carried) of a batch of 4, LayerDrop and sinusoid dropout on: micro-batches
    of 2 give every parameter the same gradient and every codebook the same EMA statistics, in float64, also
    when one micro-batch holds pads (the commit loss is weighted by real tokens)."""
    batch = _batch(pad_rows=pad_rows)
    kw = dict(p_droplyr=0.5, p_dropsin=0.5, c_beta=0.1)
    whole, micro = _one_batch(None, batch, **kw), _one_batch(2, batch, **kw)
    assert len(whole.grads) == len(micro.grads) == 2
    for gw, gm in zip(whole.grads, micro.grads):
        assert gw.keys() == gm.keys()
        for n in gw:
            torch.testing.assert_close(gm[n], gw[n], rtol=1e-10, atol=1e-12, msg=n)
    for cw, cm in zip(whole.counts, micro.counts):
        for (nw, sw), (nm, sm) in zip(cw, cm):
            torch.testing.assert_close(nm, nw, rtol=0, atol=0)
            torch.testing.assert_close(sm, sw, rtol=1e-12, atol=1e-12)


class MaskSpy(L.Callback):
    """Records the pad mask each quantizer receives during training."""

    def __init__(self):
        self.masks = []

    def on_fit_start(self, trainer, module):
        for q in module.model.quantizers():
            q.register_forward_pre_hook(lambda mod, args: self.masks.append(args[1]))


def test_the_lm_training_path_passes_the_loss_mask_to_every_quantizer():
    batch = _batch(pad_rows=(1,))
    spy = MaskSpy()
    out = _one_batch(2, batch, spy=spy)
    n_q = 4
    assert len(spy.masks) == 2 * 2 * n_q                                  # windows × micro-batches × units
    expect = [batch["mask"][rows, cols] for cols in (slice(0, 8), slice(8, 16)) for rows in (slice(0, 2), slice(2, 4))]
    for i, m in enumerate(spy.masks):
        assert m is not None and torch.equal(m, expect[i // n_q]), i
    # Window 2 of row 1 is all pads: the EMA counted only the real keys of each update.
    assert [int(c[0].sum()) for c in out.counts[0]] == [32] * n_q                       # 4 rows × 8 real tokens
    assert [int(c[0].sum()) for c in out.counts[1]] == [24] * n_q                       # row 1 is all pads here


@pytest.mark.parametrize("head_type", ["shga", "mqa"])
def test_padded_rows_give_the_commit_loss_and_ema_of_the_real_tokens_alone(head_type):
    """A batch with a half-padded row equals the real tokens run alone: the commit loss (a mean over real
    positions) and the EMA statistics (sums over real keys) of every quantizer, in float64."""
    torch.manual_seed(0)
    cfg = TransformerVQConfig(**{**TINY, "head_type": head_type})
    model = TransformerVQ(cfg).double().train()
    toks = torch.randint(0, 13, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, 8:] = False
    padded = toks.clone()
    padded[1, 8:] = 0
    _, aux = model(padded, mask=mask)
    stats = [(q.acc_count.clone(), q.acc_sum.clone()) for q in model.quantizers()]
    for q in model.quantizers():
        q.acc_count.zero_(), q.acc_sum.zero_()
    _, aux0 = model(toks[:1])
    _, aux1 = model(toks[1:, :8])
    # Every unit's commit is a mean over its real positions: 16 from row 0, 8 from row 1.
    torch.testing.assert_close(aux.commit_loss, (16 * aux0.commit_loss + 8 * aux1.commit_loss) / 24)
    for (n, s), q in zip(stats, model.quantizers()):
        torch.testing.assert_close(n, q.acc_count, rtol=0, atol=0)
        torch.testing.assert_close(s, q.acc_sum, rtol=1e-12, atol=1e-12)
    # Without the mask the pads would count (the deviation this fixes).
    for q in model.quantizers():
        q.acc_count.zero_(), q.acc_sum.zero_()
    _, aux_nomask = model(padded)
    assert int(model.quantizers()[0].acc_count.sum()) == 32 * model.quantizers()[0].n_head
    assert not torch.allclose(aux_nomask.commit_loss, aux.commit_loss)
