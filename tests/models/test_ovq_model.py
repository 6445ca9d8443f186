"""The decoder with OVQ and sliding-window units and SWA hybrids (docs/ovq.md §1.2–1.3): causality, carried
state across windows equals one pass, layer patterns, config validation naming ``model.<field>`` and
``model.mixer.<name>.<knob>``."""
from __future__ import annotations

import pytest
import torch

from vqformer.models import TransformerVQ, TransformerVQConfig
from vqformer.nn.local_attention import LocalAttentionState
from vqformer.nn.ovq import OVQState

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dict(vocab_size=11, d_model=8, d_k=4, d_v=6, n_layer=2, n_code=5, block_len=4)
OVQ = dict(n_max=4, chunk_len=4, growth_scale=4.0)
T = 16


def mixers(ovq=None, **other):
    """The nested mixer config: the tiny swa window and OVQ dictionary, plus the arm's own knobs."""
    return {"swa": {"window": 3}, "ovq": {**OVQ, **(ovq or {})}, **other}


ARMS = {
    "ovq": dict(attn_type="ovq", mixer=mixers()),
    "ovq_local": dict(attn_type="ovq", mixer=mixers(ovq=dict(local=True, chunk_len=3))),
    "swa": dict(attn_type="swa", mixer=mixers()),
    "sw-ovq": dict(layer_pattern=["swa", "ovq"], mixer=mixers()),
    "sw-vq": dict(layer_pattern=["swa", "vq"], mixer=mixers()),
    "sw-nope": dict(layer_pattern=["swa", "full"], mixer=mixers(full={"nope": True})),
    "sw-ovq-constant-random": dict(layer_pattern=["swa", "ovq"], mixer=mixers(ovq=dict(
        step="constant", seeding="random", read="cosine", growth="dp"))),
}
HEADS = ("shga", "mha")


def model(head_type, **kw):
    torch.manual_seed(0)
    return TransformerVQ(TransformerVQConfig(**{**TINY, "head_type": head_type, **kw})).double().eval()


def tokens(seed=1):
    return torch.randint(0, 11, (2, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("head_type", HEADS)
@pytest.mark.parametrize("arm", list(ARMS))
def test_causality(head_type, arm):
    m = model(head_type, **ARMS[arm])
    toks = tokens()
    with torch.no_grad():
        base, _ = m(toks)
        for p in (0, 3, 4, 9, 11):                   # later positions are reached by the next chunk
            changed = toks.clone()
            changed[:, p] = (changed[:, p] + 1) % 11
            out, _ = m(changed)
            if p > 0:
                torch.testing.assert_close(out[:, :p], base[:, :p], atol=1e-12, rtol=0)
            assert (out[:, p] - base[:, p]).abs().amax() > 1e-6
            assert (out[:, p + 1:] - base[:, p + 1:]).abs().amax() > 1e-6


def test_ovq_only_sees_earlier_chunks_without_local():
    """One OVQ unit (mha, one layer): a token reaches later positions only once its chunk is merged."""
    m = model("mha", attn_type="ovq", n_layer=1, mixer=mixers())
    toks = tokens()
    changed = toks.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 11          # chunk [4, 8)
    with torch.no_grad():
        diff = (m(changed)[0] - m(toks)[0]).abs().amax(-1).amax(0)
    assert (diff[6:8] == 0).all() and (diff[8:] > 1e-9).all()


@pytest.mark.parametrize("cuts", [[0, 8, 16], [0, 5, 11, 16], list(range(17))], ids=["halves", "ragged", "tokens"])
@pytest.mark.parametrize("arm", list(ARMS))
def test_carried_state_equals_one_pass(arm, cuts):
    m = model("mha", **ARMS[arm])
    toks = tokens()
    with torch.no_grad():
        one, aux = m(toks)
        state, outs = m.empty_state(), []
        for a, b in zip(cuts[:-1], cuts[1:]):
            out, aux_t = m(toks[:, a:b], state)
            state = aux_t.state.detach()
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), one, atol=1e-12, rtol=0)
    kinds = {type(s) for s in state.units}
    assert (OVQState in kinds) == ("ovq" in m.cfg.layer_types())
    assert (LocalAttentionState in kinds) == ("swa" in m.cfg.layer_types())


def test_layer_pattern_and_state_bytes():
    m = model("mha", n_layer=4, layer_pattern=["swa", "ovq"], mixer=mixers())
    assert [u.attn_type for u in m.units] == ["swa", "ovq", "swa", "ovq"]
    assert m.cfg.layer_types() == ["swa", "ovq", "swa", "ovq"]
    per_tok = 2 * (4 + 4)                                 # mha: 2 heads of d_k = 4 keys and values
    swa, ovq = 4 * 3 * per_tok, 4 * 4 * (per_tok + 2)
    assert m.state_bytes(1000) == 2 * (swa + ovq)
    full = model("mha", attn_type="full", mixer=mixers())
    assert full.state_bytes(1000) == 2 * 4 * 1000 * per_tok and full.state_bytes(2000) == 2 * full.state_bytes(1000)
    assert m.state_bytes(1000) == m.state_bytes(64000)  # constant in the length


def test_learned_beta_gets_a_gradient_and_the_model_learns_through_ovq():
    m = model("mha", attn_type="ovq", n_layer=1, mixer=mixers()).train()
    logits, _ = m(tokens())
    logits.square().mean().backward()
    u = m.units[0]
    assert u.mixer.log_beta.grad is not None and u.mixer.log_beta.grad.abs().max() > 0
    assert u.w_k.weight.grad.abs().max() > 0 and u.w_v.weight.grad.abs().max() > 0
    fixed = model("mha", attn_type="ovq", n_layer=1, mixer=mixers(ovq=dict(beta_learned=False)))
    assert fixed.units[0].mixer.log_beta is None


@pytest.mark.parametrize("field, value", [
    ("attn_type", "ovx"), ("layer_pattern", ["swa", "nope"]), ("layer_pattern", []),
])
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"model.{field}"):
        TransformerVQConfig(**{**TINY, field: value})


@pytest.mark.parametrize("name, knob, value", [
    ("swa", "window", 0), ("swa", "window", 2.5), ("ovq", "n_max", 0), ("ovq", "chunk_len", -1),
    ("ovq", "growth", "exp"), ("ovq", "seeding", "kmeans"), ("ovq", "step", "adam"), ("ovq", "read", "l1"),
    ("ovq", "step_const", 0.0), ("ovq", "beta", -1.0), ("ovq", "growth_scale", 0.0), ("ovq", "local", "yes"),
    ("full", "nope", 1), ("vq", "nope", "no"),
])
def test_invalid_mixer_knob_names_the_nested_key(name, knob, value):
    """A bad knob is refused whether or not the mixer is in use, naming ``model.mixer.<name>.<knob>`` and the value."""
    with pytest.raises(ValueError, match=rf"model\.mixer\.{name}\.{knob}={value!r}"):
        TransformerVQConfig(**TINY, mixer={name: {knob: value}})


def test_unknown_mixer_or_knob_and_old_flat_keys_are_refused():
    with pytest.raises(ValueError, match=r"model\.mixer\.ovx: no mixer named 'ovx'.*'ovq'"):
        TransformerVQConfig(**TINY, mixer={"ovx": {}})
    with pytest.raises(ValueError, match=r"model\.mixer\.ovq: unknown knob\(s\) \['nmax'\].*'n_max'"):
        TransformerVQConfig(**TINY, mixer={"ovq": {"nmax": 4}})
    with pytest.raises(TypeError, match="ovq_n_max"):
        TransformerVQConfig(**TINY, ovq_n_max=4)


def test_mixer_configs_are_typed_and_filled_for_the_layers_in_use():
    from vqformer.nn.mixers.ovq import OVQConfig
    from vqformer.nn.mixers.swa import SWAConfig
    cfg = TransformerVQConfig(**TINY, layer_pattern=["swa", "ovq"], mixer={"ovq": {"n_max": 7}})
    assert cfg.mixer == {"ovq": OVQConfig(n_max=7), "swa": SWAConfig()}
    assert cfg.mixer_config("full").nope is False                     # a mixer not in use: its defaults
    m = TransformerVQ(cfg)
    assert [u.attn_type for u in m.units] == ["swa", "swa", "ovq", "ovq"]           # shga: two GAUs per layer
    assert all(u.mixer.cfg is cfg.mixer[u.attn_type] for u in m.units)
