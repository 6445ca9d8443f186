"""The decoder LM (transformer_vq.md §1): causality for every head and attention type, carried state
equals one call, the typed config rejects invalid combinations naming the field."""
from __future__ import annotations

import pytest
import torch

from vqformer.nn import TransformerVQ, TransformerVQConfig

TINY = dict(vocab_size=11, d_model=8, d_k=4, d_v=6, n_layer=2, n_code=5, block_len=4)


def model(head_type, attn_type, **kw):
    torch.manual_seed(0)
    cfg = TransformerVQConfig(**{**TINY, "head_type": head_type, "attn_type": attn_type, **kw})
    m = TransformerVQ(cfg).double()
    # Train the codebook one step so codes are not all alike.
    m.train()
    logits, aux = m(torch.randint(0, 11, (2, 16)))
    (logits.mean() + aux.commit_loss).backward()
    m.update_codebooks()
    return m.eval()


KINDS = [(h, a) for h in ("shga", "mqa", "mha") for a in ("vq", "full")]


@pytest.mark.parametrize("head_type,attn_type", KINDS)
def test_causality(head_type, attn_type):
    m = model(head_type, attn_type, e_preln=True, pe_abs=True)
    toks = torch.randint(0, 11, (2, 16))
    with torch.no_grad():
        base, _ = m(toks)
        for p in (0, 3, 5, 9, 15):            # several blocks, block edges included
            changed = toks.clone()
            changed[:, p] = (changed[:, p] + 1) % 11
            out, _ = m(changed)
            assert p == 0 or (out[:, :p] - base[:, :p]).abs().max() < 1e-12
            assert (out[:, p] - base[:, p]).abs().max() > 0


@pytest.mark.parametrize("head_type,attn_type", KINDS)
def test_carried_state_equals_one_call(head_type, attn_type):
    m = model(head_type, attn_type, e_tie=True, e_scale=0.5)
    toks = torch.randint(0, 11, (2, 16))
    with torch.no_grad():
        one, aux = m(toks)
        a, aux_a = m(toks[:, :8])
        b, _ = m(toks[:, 8:], aux_a.state)
        torch.testing.assert_close(torch.cat([a, b], 1), one, atol=1e-12, rtol=0)
        state, steps = m.empty_state(), []
        for t in range(16):
            out, aux_t = m(toks[:, t:t + 1], state)
            state = aux_t.state
            steps.append(out)
        torch.testing.assert_close(torch.cat(steps, 1), one, atol=1e-12, rtol=0)
    assert aux.state.pos == 16


def test_aux_record_and_codebook_update():
    m = model("shga", "vq")
    m.train()
    logits, aux = m(torch.randint(0, 11, (2, 8)))
    assert logits.shape == (2, 8, 11)
    assert aux.commit_loss.requires_grad and aux.commit_loss > 0
    assert set(aux.stats) == {"code_perplexity", "unused_codes", "rel_quant_error"}
    before = [q.c_count.clone() for q in m.quantizers()]
    m.update_codebooks()
    assert all(not torch.equal(b, q.c_count) for b, q in zip(before, m.quantizers()))
    assert len(m.quantizers()) == 2 * TINY["n_layer"]        # shga: two GAUs per layer


def test_layerdrop_masks_are_shared_across_windows_of_one_batch():
    m = model("shga", "vq", p_droplyr=0.5, p_dropsin=0.5)
    m.train()
    toks = torch.randint(0, 11, (3, 8))
    torch.manual_seed(1)
    a, _ = m(toks, drop_seed=7)
    torch.manual_seed(2)
    b, _ = m(toks, drop_seed=7)
    torch.testing.assert_close(a, b)       # same seed, same masks, whatever the global RNG


@pytest.mark.parametrize("field, value, needle", [
    ("n_code", 0, "model.n_code"),
    ("head_type", "foo", "shga"),
    ("attn_type", "bar", "'vq', 'full'"),
    ("mem_len", 8, "model.mem_len"),
    ("block_len", -1, "model.block_len"),
    ("p_droplyr", 1.5, "model.p_droplyr"),
])
def test_invalid_config_names_the_field(field, value, needle):
    with pytest.raises(ValueError, match=f"{field}") as err:
        TransformerVQConfig(**{**TINY, field: value})
    assert needle in str(err.value)


def test_block_len_must_divide_the_input_length():
    m = model("shga", "vq")
    with pytest.raises(ValueError, match="block_len"):
        m(torch.randint(0, 11, (1, 10)))
    m(torch.randint(0, 11, (1, 10)), m.empty_state())       # a fresh explicit state accepts any length
