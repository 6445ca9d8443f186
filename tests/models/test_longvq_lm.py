"""LongVQ language modelling (docs/longvq.md §1.4 "causal decoder"): the LM behind ``model.arch=longvq``
equals its O(n²) reference and is causal, carries its state across windows exactly (SSM hidden state and
attention cache), keeps pads out of the quantizer, refuses windows when it cannot carry a state (full
attention, truncated SSM) before any work, the mini comparison's arms have about equal parameter counts, and
the CPU stand-in experiment trains and evaluates end to end with the state carried."""
from __future__ import annotations

import math
import pytest
import torch
from omegaconf import OmegaConf

from conftest import make_cfg
from vqformer.config import ConfigError, validate_train
from vqformer.lit.lm_module import LMModule
from vqformer.lit.runner import DONE, evaluate, train
from vqformer.models import LongVQLM, TransformerVQ, build_lm, lm_config

TINY = dict(arch="longvq", vocab_size=11, d_model=8, d_ffn=12, z_dim=4, v_dim=6, n_dim=2, n_layer=2, n_code=5,
            block_len=4, norm="layernorm", prenorm=True, dropout=0.0)


def tiny_lm(**kw):
    torch.manual_seed(0)
    model = build_lm({**TINY, **kw}).double()
    model.train()                       # one EMA step so that codes differ
    logits, aux = model(torch.randint(0, 11, (2, 16)))
    (logits.mean() + aux.commit_loss).backward()
    model.update_codebooks()
    model.zero_grad(set_to_none=True)
    return model.eval()


@pytest.mark.parametrize("kw", [{}, {"ssm": "none"}, {"prenorm": False}])
def test_longvq_lm_equals_its_quadratic_reference_and_is_causal(kw):
    model = tiny_lm(**kw)
    assert isinstance(model, LongVQLM)
    toks = torch.randint(0, 11, (2, 14), generator=torch.Generator().manual_seed(1))   # not a block multiple
    logits, aux = model(toks)
    ref, aux_ref = model(toks, reference=True)
    assert logits.shape == (2, 14, 11) and aux.state.pos == 14          # ragged: 14 is not a block multiple
    torch.testing.assert_close(logits, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(aux.commit_loss, aux_ref.commit_loss, rtol=1e-12, atol=1e-12)
    changed = toks.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % 11
    later, _ = model(changed)
    torch.testing.assert_close(later[:, :9], logits[:, :9], rtol=0, atol=1e-12)   # the future is not read
    assert not torch.allclose(later[:, 9:], logits[:, 9:])


def test_longvq_lm_keeps_pads_out_of_the_commit_loss_and_ema():
    model = tiny_lm().train()
    toks = torch.randint(0, 11, (2, 16), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, 8:] = False
    padded = toks.clone()
    padded[1, 8:] = 0
    for q in model.quantizers():
        q.acc_count.zero_(), q.acc_sum.zero_()
    logits, aux = model(padded, mask=mask)
    stats = [(q.acc_count.clone(), q.acc_sum.clone()) for q in model.quantizers()]
    for q in model.quantizers():
        q.acc_count.zero_(), q.acc_sum.zero_()
    l0, aux0 = model(toks[:1])
    l1, aux1 = model(toks[1:, :8])
    torch.testing.assert_close(logits[1:, :8], l1)                     # pads after a row change nothing before
    torch.testing.assert_close(aux.commit_loss, (16 * aux0.commit_loss + 8 * aux1.commit_loss) / 24)
    for (n, s), q in zip(stats, model.quantizers()):
        torch.testing.assert_close(n, q.acc_count, rtol=0, atol=0)
        torch.testing.assert_close(s, q.acc_sum, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kw", [{}, {"ssm": "s4d", "n_dim": 4}, {"ssm": "none"}, {"grad_thru_cache": False}])
def test_windows_with_the_carried_state_equal_one_call_and_the_reference(kw):
    """Windows of 4, 8, 3 and 5 tokens (whole blocks and ragged pieces) with the state carried give the logits,
    the commit loss and the input gradients of one call on all 20 tokens, which equals the O(n²) reference."""
    model = tiny_lm(**kw)
    toks = torch.randint(0, 11, (2, 20), generator=torch.Generator().manual_seed(3))
    whole, aux = model(toks)
    ref, _ = model(toks, reference=True)
    torch.testing.assert_close(whole, ref, rtol=1e-10, atol=1e-10)
    state, pieces, commits = None, [], []
    for a, b in ((0, 4), (4, 12), (12, 15), (15, 20)):
        out, aux_w = model(toks[:, a:b], state)
        state = aux_w.state
        pieces.append(out)
        commits.append(aux_w.commit_loss * (b - a))
    assert state.pos == 20
    torch.testing.assert_close(torch.cat(pieces, 1), whole, rtol=1e-10, atol=1e-10)
    state, steps = model.empty_state(), []                                # token by token, as sampling runs it
    for t in range(7):
        out, aux_t = model(toks[:, t:t + 1], state)
        state, steps = aux_t.state, steps + [out]
    torch.testing.assert_close(torch.cat(steps, 1), whole[:, :7], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sum(commits) / 20, aux.commit_loss, rtol=1e-10, atol=1e-12)
    # The gradient reaches earlier windows through the carried state until it is detached (as in training).
    emb = model.embed.weight
    first, aux_1 = model(toks[:, :8], model.empty_state())
    second, _ = model(toks[:, 8:], aux_1.state)
    g_carried = torch.autograd.grad(second.sum(), emb)[0]
    g_whole = torch.autograd.grad(model(toks)[0][:, 8:].sum(), emb)[0]
    torch.testing.assert_close(g_carried, g_whole, rtol=1e-9, atol=1e-10)


def test_longvq_lm_refuses_a_state_it_cannot_carry_and_bad_arch():
    for kw in ({"attn_type": "full", "max_len": 32}, {"truncation": 8}):
        model = tiny_lm(**kw)
        assert not model.cfg.carries_state
        _, aux = model(torch.randint(0, 11, (1, 8)))
        with pytest.raises(ValueError, match="update_len = eval_window = sequence_len"):
            model(torch.randint(0, 11, (1, 8)), state=aux.state)
        model(torch.randint(0, 11, (1, 8)), state=model.empty_state())          # an empty state is no context
    with pytest.raises(ValueError, match="model.arch='mamba'"):
        lm_config({**TINY, "arch": "mamba"})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['d_k'\] for model.arch=longvq"):
        lm_config({**TINY, "d_k": 4})
    with pytest.raises(ValueError, match="model.attn_type='chunk'"):
        lm_config({**TINY, "attn_type": "chunk"})
    tvq = dict(vocab_size=11, d_model=8, d_k=4, d_v=8, n_layer=1, n_code=5, block_len=4)
    assert isinstance(build_lm(tvq), TransformerVQ)                       # no arch: the default transformer_vq


def test_windows_of_a_stateless_lm_are_rejected_before_any_work():
    validate_train(make_cfg("experiment=longvq/lm_mini"))                  # windows, state carried: fine
    cfg = make_cfg("experiment=longvq/lm_mini", "model.truncation=64")
    with pytest.raises(ConfigError, match="update_len=256 must equal sequence_len=512"):
        validate_train(cfg)
    cfg = make_cfg("experiment=longvq/lm_mini", "model.attn_type=full", "update_len=512")
    with pytest.raises(ConfigError, match="eval_window=256"):
        validate_train(cfg)
    with pytest.raises(ConfigError, match="model.block_len=64 must divide update_len=32"):
        validate_train(make_cfg("experiment=longvq/lm_mini", "update_len=32"))


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_mini_lm_compare_arms_have_about_equal_parameter_counts():
    params = OmegaConf.select(make_cfg("experiment=longvq/mini_lm_compare"), "hydra.sweeper.params")
    arms = [a.strip() for a in params.model.split(",")]
    assert sorted(arms) == ["lm_compare/longvq", "lm_compare/longvq_nossm", "lm_compare/transformer_vq"]
    assert [s.strip() for s in str(params.seed).split(",")] == ["0", "1"]
    counts = {}
    for arm in arms:
        cfg = make_cfg("experiment=longvq/mini_lm_compare", f"model={arm}")
        validate_train(cfg)
        counts[arm] = n_params(LMModule.from_config(cfg).model)
    assert min(counts.values()) > 1_000_000, counts
    assert max(counts.values()) <= 1.1 * min(counts.values()), counts
    assert cfg.sequence_len == 4 * cfg.update_len                    # the same protocol for all: state carried


def test_lm_mini_trains_and_evaluates_end_to_end(tmp_path):
    cfg = make_cfg("experiment=longvq/lm_mini", f"paths.data_dir={tmp_path / 'data'}",
                   f"paths.log_dir={tmp_path / 'logs'}", "data.batch_size=4", "data.eval_batch_size=4",
                   "data.limit_eval_bytes=2048", "trainer.max_steps=6", "trainer.val_check_interval=2", "ckpt_every=2",
                   "model.d_model=32", "model.d_ffn=64", "model.z_dim=16", "model.v_dim=64",
                   "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false")
    run = tmp_path / "run"
    metrics = train(cfg, run)
    assert metrics["step"] == 6 and math.isfinite(metrics["val/bpb"]) and (run / DONE).exists()
    module = LMModule.load_from_checkpoint(str(run / "checkpoints" / "last.ckpt"))
    assert isinstance(module.model, LongVQLM) and module.model.cfg.n_code == 64
    assert module.update_len == 256 and cfg.sequence_len == 512                # two windows, state carried
    again = evaluate(run, "validation", limit_eval_bytes=2048)
    assert again["val/bpb"] == pytest.approx(metrics["val/bpb"], rel=1e-5)
