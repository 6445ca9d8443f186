"""The decoder LM (docs/transformer_vq.md §1, §3.5, §3.7): causality for every head and attention type, carried
state (token by token, halves, ragged pieces) equals one call, the typed config rejects invalid values
naming the field."""
from __future__ import annotations

import pytest
import torch

from vqformer.models import TransformerVQ, TransformerVQConfig

TINY = dict(vocab_size=11, d_model=8, d_k=4, d_v=6, n_layer=2, n_code=5, block_len=4)
T = 16                                     # four blocks of 4


pytestmark = pytest.mark.usefixtures("single_thread")


def model(head_type, attn_type, **kw):
    """A tiny float64 model in eval mode whose codebooks have had one EMA step (codes are not all alike)."""
    torch.manual_seed(0)
    cfg = TransformerVQConfig(**{**TINY, "head_type": head_type, "attn_type": attn_type, **kw})
    m = TransformerVQ(cfg).double()
    m.train()
    logits, aux = m(torch.randint(0, 11, (2, T)))
    (logits.mean() + aux.commit_loss).backward()
    m.update_codebooks()
    m.zero_grad(set_to_none=True)
    return m.eval()


def tokens(B=2, seed=1):
    return torch.randint(0, 11, (B, T), generator=torch.Generator().manual_seed(seed))


KINDS = [(h, a) for h in ("shga", "mqa", "mha") for a in ("vq", "full")]


@pytest.mark.parametrize("head_type,attn_type", KINDS)
def test_causality(head_type, attn_type):
    m = model(head_type, attn_type, e_preln=True, pe_abs=True)
    m.pe_scale.data.fill_(0.5)                       # make the absolute position term non-zero
    toks = tokens()
    with torch.no_grad():
        base, _ = m(toks)
        for p in (0, 3, 4, 9, 15):                   # every block, block edges included
            changed = toks.clone()
            changed[:, p] = (changed[:, p] + 1) % 11
            out, _ = m(changed)
            assert out.shape == base.shape == (2, T, 11)
            if p > 0:
                torch.testing.assert_close(out[:, :p], base[:, :p], atol=1e-12, rtol=0)
            assert (out[:, p] - base[:, p]).abs().amax() > 1e-6
            if p < T - 1:                            # and the change reaches later positions
                assert (out[:, p + 1:] - base[:, p + 1:]).abs().amax() > 1e-6


def test_token_zero_reaches_the_last_block_through_the_compressive_cache():
    """With one attention unit (mha, n_layer=1) token 0 reaches position 15 (block 3) only through the
    compressive cache: without it (agg_cache=False, a sliding window of distances <= L = 4) it cannot."""
    toks = tokens()
    changed = toks.clone()
    changed[:, 0] = (changed[:, 0] + 1) % 11
    for agg_cache, reaches in ((True, True), (False, False)):
        m = model("mha", "vq", n_layer=1, agg_cache=agg_cache)
        with torch.no_grad():
            diff = (m(changed)[0][:, -1] - m(toks)[0][:, -1]).abs().amax()
        assert (diff > 1e-6) == reaches, diff


PIECES = {
    "halves": [0, 8, 16],
    "ragged": [0, 5, 11, 16],
    "tokens": list(range(17)),
}


@pytest.mark.parametrize("cuts", list(PIECES.values()), ids=list(PIECES))
@pytest.mark.parametrize("head_type,attn_type", KINDS)
def test_carried_state_equals_one_call(head_type, attn_type, cuts):
    m = model(head_type, attn_type, e_tie=True, e_scale=0.5, pe_abs=True)
    m.pe_scale.data.fill_(0.5)
    toks = tokens()
    with torch.no_grad():
        one, aux = m(toks)
        assert aux.state.pos == T
        state, outs = m.empty_state(), []
        for a, b in zip(cuts[:-1], cuts[1:]):
            out, aux_t = m(toks[:, a:b], state)
            assert aux_t.state.pos == b
            state = aux_t.state
            outs.append(out)
        torch.testing.assert_close(torch.cat(outs, 1), one, atol=1e-12, rtol=0)


def test_halves_with_state_none_first():
    """state=None is accepted for a whole number of blocks and its returned state continues the sequence."""
    m = model("shga", "vq")
    toks = tokens()
    with torch.no_grad():
        one, _ = m(toks)
        a, aux_a = m(toks[:, :8])
        b, aux_b = m(toks[:, 8:], aux_a.state)
    torch.testing.assert_close(torch.cat([a, b], 1), one, atol=1e-12, rtol=0)
    assert aux_b.state.pos == T


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
    # An eval-mode forward accumulates nothing: the next update leaves the codebooks alone.
    m.eval()
    with torch.no_grad():
        m(torch.randint(0, 11, (2, 8)))
    before = [(q.c_sum.clone(), q.c_count.clone()) for q in m.quantizers()]
    m.update_codebooks()
    assert all(torch.equal(s, q.c_sum) and torch.equal(c, q.c_count) for (s, c), q in zip(before, m.quantizers()))


def test_no_codebook_tensor_is_an_optimizer_parameter():
    m = model("mha", "vq")
    names = [n for n, _ in m.named_parameters()]
    assert not [n for n in names if "c_sum" in n or "c_count" in n]
    assert any(n.endswith("c_sum") for n, _ in m.named_buffers())


def test_layerdrop_masks_are_shared_across_windows_of_one_batch():
    m = model("shga", "vq", p_droplyr=0.5, p_dropsin=0.5)
    m.train()
    toks = torch.randint(0, 11, (3, 8))
    torch.manual_seed(1)
    a, _ = m(toks, drop_seed=7)
    torch.manual_seed(2)
    b, _ = m(toks, drop_seed=7)
    torch.testing.assert_close(a, b)       # same seed, same masks, whatever the global RNG


# --------------------------------------------------------------------------------------------
# Config validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, needles", [
    ("n_code", 0, ["n_code"]),
    ("head_type", "foo", ["head_type", "foo", "shga", "mqa", "mha"]),
    ("attn_type", "bar", ["attn_type", "bar", "vq", "full"]),
    ("block_len", 0, ["block_len"]),
    ("p_droplyr", 1.5, ["p_droplyr"]),
    ("n_code", "abc", ["model.n_code='abc'", "int"]),
    ("d_k", 15.0, ["model.d_k=15.0", "int"]),
    ("e_tie", 1, ["model.e_tie=1", "bool"]),
    ("mixer", ["vq"], ["model.mixer", "dict"]),
])
def test_invalid_config_names_the_field(field, value, needles):
    with pytest.raises(ValueError) as err:
        TransformerVQConfig(**{**TINY, field: value})
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))


def test_valid_configs_are_accepted():
    for h in ("shga", "mqa", "mha"):
        for a in ("vq", "full"):
            TransformerVQConfig(**{**TINY, "head_type": h, "attn_type": a})


@pytest.mark.parametrize("head_type, width", [("shga", None), ("mqa", 5 * 8), ("mha", 4 * 8)])
def test_official_d_ff_zero_means_the_head_types_width(head_type, width):
    """The official scripts pass --d_ff=0: shga has no MLP (its second branch is a GAU, so d_ff is unused);
    mqa/mha take 5·D / 4·D, the width the official ``optimized`` branch derives from the head type."""
    zero = TransformerVQ(TransformerVQConfig(**{**TINY, "head_type": head_type, "d_ff": 0}))
    null = TransformerVQ(TransformerVQConfig(**{**TINY, "head_type": head_type, "d_ff": None}))
    assert [(n, p.shape) for n, p in zero.named_parameters()] == [(n, p.shape) for n, p in null.named_parameters()]
    mlps = [b for b in zero.branches if not hasattr(b, "mixer")]
    assert (not mlps) if width is None else all(m.w_in.weight.shape[0] == width for m in mlps) and mlps
    with pytest.raises(ValueError, match="model.d_ff"):
        TransformerVQConfig(**{**TINY, "head_type": head_type, "d_ff": -1})


def test_block_len_must_divide_the_input_length():
    m = model("shga", "vq")
    with pytest.raises(ValueError, match="block_len"):
        m(torch.randint(0, 11, (1, 10)))                      # T = 10, block_len = 4, state=None
    out, aux = m(torch.randint(0, 11, (1, 10)), m.empty_state())   # an explicit state accepts any length
    assert out.shape == (1, 10, 11) and aux.state.pos == 10


@pytest.mark.parametrize("head_type", ["shga", "mqa"])
def test_remat_and_eager_kernel_give_the_same_step(head_type):
    """Activation checkpointing and the eager kernel change speed and memory, not numbers: the loss, every
    gradient and the EMA statistics of one step (dropout on) equal the default model's, in float64; the
    recomputed forward does not count the keys a second time."""
    torch.manual_seed(0)
    kw = dict(vocab_size=17, d_model=16, d_k=8, d_v=32, n_layer=2, head_type=head_type, n_code=5, block_len=4,
              p_dropres=0.2, p_dropsin=0.1)
    tokens = torch.randint(0, 17, (2, 12))
    results = []
    for extra in ({}, {"remat": True}, {"kernel": "eager"}):
        torch.manual_seed(1)
        model = TransformerVQ(TransformerVQConfig(**kw, **extra)).double().train()
        torch.manual_seed(2)
        logits, aux = model(tokens, drop_seed=3)
        loss = logits.logsumexp(-1).mean() + aux.commit_loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        counts = [qz.acc_count.clone() for qz in model.quantizers()]
        results.append((loss.detach(), grads, counts))
    (loss0, grads0, counts0), *others = results
    assert all(c.sum() == 2 * 12 * c.shape[0] for c in counts0)       # each key counted once per head
    for loss, grads, counts in others:
        torch.testing.assert_close(loss, loss0, atol=1e-12, rtol=0)
        assert grads.keys() == grads0.keys()
        for n in grads0:
            torch.testing.assert_close(grads[n], grads0[n], atol=1e-10, rtol=0, msg=n)
        for c, c0 in zip(counts, counts0):
            assert torch.equal(c, c0)


def test_unknown_kernel_names_the_key():
    with pytest.raises(ValueError, match="model.kernel"):
        TransformerVQConfig(kernel="triton")
