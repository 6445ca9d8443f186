"""OVQ attention (docs/ovq.md §1.3): the chunked form equals the token-by-token reference in float64 for
several chunk sizes and every switch, carried state equals one call, gradients follow §1.3 item 6."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from vqformer.nn.ovq import OVQOptions, OVQState, growth_size, ovq_attention, ovq_attention_reference

pytestmark = pytest.mark.usefixtures("single_thread")

B, HQ, H, T, DK, DV = 2, 2, 1, 24, 4, 3


def inputs(seed=0, hq=HQ, h=H, t=T, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, hq, t, DK, generator=g, dtype=torch.float64), dim=-1)
    k = F.normalize(torch.randn(B, h, t, DK, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(B, h, t, DV, generator=g, dtype=torch.float64)
    return [x.requires_grad_(requires_grad) for x in (q, k, v)]


BASE = OVQOptions(n_max=6, chunk_len=4, growth_scale=4.0)
VARIANTS = {
    "default": {},
    "chunk1": {"chunk_len": 1},
    "chunk3": {"chunk_len": 3},
    "chunk8": {"chunk_len": 8},
    "dp": {"growth": "dp"},
    "linear": {"growth": "linear"},
    "random": {"seeding": "random", "seed": 3},
    "constant": {"step": "constant", "step_const": 0.3},
    "cosine": {"read": "cosine"},
    "dot": {"read": "dot"},
    "local": {"local": True},
    "local_chunk5_constant": {"local": True, "chunk_len": 5, "step": "constant"},
    "cap_reached": {"n_max": 3, "growth": "linear", "growth_scale": 3.0},
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_chunked_equals_token_by_token_reference(name):
    o = dataclasses.replace(BASE, **VARIANTS[name])
    q, k, v = inputs()
    beta = torch.tensor([3.0, 5.0], dtype=torch.float64)
    out, st = ovq_attention(q, k, v, o, beta=beta)
    ref = ovq_attention_reference(q, k, v, o, beta=beta)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    assert st.pos == T and st.n_active == growth_size(T // o.chunk_len * o.chunk_len, o) <= o.n_max
    full = st.counts[:, :, :st.n_active]
    assert (full >= 1).all() and (st.counts[:, :, st.n_active:] == 0).all()
    assert torch.equal(st.counts.sum(-1), torch.full((B, H), float(T // o.chunk_len * o.chunk_len), dtype=torch.float64))


def test_growth_schedules_plateau_and_respect_the_cap():
    for growth in ("saturating", "dp", "linear"):
        o = OVQOptions(n_max=64, growth=growth)
        sizes = [growth_size(t, o) for t in range(0, 5000, 7)]
        assert sizes[0] == 0 and sizes[1] >= 1
        assert all(a <= b for a, b in zip(sizes, sizes[1:])) and max(sizes) <= 64
    sat, lin = OVQOptions(n_max=64), OVQOptions(n_max=64, growth="linear")
    assert growth_size(64, lin) == 64 and growth_size(64, sat) == 32          # s·t/(s+t) at t = s
    assert growth_size(10 ** 6, sat) == 63                                     # approaches the cap


@pytest.mark.parametrize("cuts", [[0, 12, 24], [0, 5, 11, 24], list(range(25))], ids=["halves", "ragged", "tokens"])
@pytest.mark.parametrize("local", [False, True])
def test_carried_state_equals_one_call(cuts, local):
    o = dataclasses.replace(BASE, local=local, chunk_len=5)
    q, k, v = inputs(1)
    one, st1 = ovq_attention(q, k, v, o, beta=4.0)
    st, outs = None, []
    for a, b in zip(cuts[:-1], cuts[1:]):
        out, st = ovq_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], o, beta=4.0, state=st)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 2), one, atol=1e-12, rtol=0)
    assert st.n_active == st1.n_active and torch.equal(st.counts, st1.counts)
    torch.testing.assert_close(st.keys, st1.keys, atol=1e-12, rtol=0)


def test_gradients_match_the_reference_and_flow_only_through_centroids():
    o = dataclasses.replace(BASE, chunk_len=4)
    q, k, v = inputs(2, requires_grad=True)
    w = torch.randn(B, HQ, T, DV, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    beta = torch.tensor([2.0, 6.0], dtype=torch.float64, requires_grad=True)
    grads = torch.autograd.grad((ovq_attention(q, k, v, o, beta=beta)[0] * w).sum(), (q, k, v, beta))
    ref = torch.autograd.grad((ovq_attention_reference(q, k, v, o, beta=beta) * w).sum(), (q, k, v, beta))
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    gq, gk, gv, _ = grads
    # The first chunk reads an empty dictionary: no gradient to its queries; the last chunk's keys and values
    # only enter the dictionary after every read: no gradient to them. Earlier keys and values get one.
    assert gq[:, :, :4].abs().max() == 0 and gq[:, :, 4:].abs().max() > 0
    assert gk[:, :, -4:].abs().max() == 0 and gv[:, :, -4:].abs().max() == 0
    assert gk[:, :, :4].abs().max() > 0 and gv[:, :, :4].abs().max() > 0
    # Counts never require grad (they are constants of the assignment).
    _, st = ovq_attention(q, k, v, o, beta=beta)
    assert not st.counts.requires_grad and st.keys.requires_grad


def test_running_mean_and_state_size():
    """With count steps every centroid is the mean of the keys assigned to it: the counts add up to T and the
    count-weighted mean of the centroids is the mean of all keys."""
    o = OVQOptions(n_max=5, chunk_len=4, growth_scale=5.0)
    q, k, v = inputs(4, t=32)
    _, st = ovq_attention(q, k, v, o)
    n = st.counts[..., None]
    torch.testing.assert_close((n * st.keys).sum(2) / n.sum(2), k.mean(2), atol=1e-12, rtol=0)
    torch.testing.assert_close((n * st.values).sum(2) / n.sum(2), v.mean(2), atol=1e-12, rtol=0)
    assert st.nbytes() == H * 5 * (DK + DV + 1) * 8


def test_fp32_statistics_under_bf16():
    o = OVQOptions(n_max=5, chunk_len=4)
    q, k, v = (x.to(torch.bfloat16) for x in inputs(5))
    out, st = ovq_attention(q, k, v, o)
    assert out.dtype == torch.bfloat16 and st.counts.dtype == st.keys.dtype == torch.float32
    assert torch.isfinite(out.float()).all()


def test_empty_dictionary_reads_zero_without_local():
    q, k, v = inputs(6, t=3)
    out, st = ovq_attention(q, k, v, OVQOptions(n_max=4, chunk_len=4))
    assert out.abs().max() == 0 and st.n_active == 0 and st.cur_k.shape[2] == 3
    assert isinstance(st, OVQState)
