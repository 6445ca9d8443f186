"""The benchmarked arms: one training-style step (forward + backward) per level, built from a plain spec.

Spec: ``docs/transformer_vq.md``
  §3.2  the linear-time VQ attention (``vq_attention``) against the quadratic baseline,
  §1.2–1.3  the attention unit (GAU / MQA / MHA) with VQ or full attention,
  §5.4  the paper's timed quantity: a whole training step (forward, backward, optimizer update) of
        D_m 768, D_k 128, 24 layers, S 512, L 512, for {VQ, full} × {SHGA, MQA, MHA}.

Levels and arms:

* ``kernel``: the attention op alone on the same ``q, k, v [B,H,T,D]`` (q and k already carry the model's
  D_k^-1/4 scale, so every arm uses unscaled ``q·k``):
  ``vq`` = ``vq_attention`` with random codes and ``k_hat = codebook[codes]`` (no band bias);
  ``sdpa`` = ``scaled_dot_product_attention(is_causal=True)`` (PyTorch's fused kernel, O(T) memory);
  ``quadratic`` = ``softmax(q·kᵀ + mask)·v`` with the T×T scores materialised, softmax and value product in
  fp32 like ``vq_attention`` and the paper's JAX baseline.
* ``layer``: one ``AttentionUnit`` (attn_type vq | full, head_type shga | mqa | mha) forward + backward.
* ``model``: a full training step of ``TransformerVQ``: forward, next-token cross-entropy + c_beta·commit
  loss, backward, gradient clipping, optimizer step (``build_optimizer``), ``model.update_codebooks()``.

A spec is a JSON-able dict (so the CPU memory probe can rebuild the same step in a fresh process):
``{level, arm, attn, head_type, config, T, batch, params, optim, device, dtype, seed}``. Every step ends
with the gradients released, so memory before a step is inputs + parameters + optimizer state only.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import torch
import torch.nn.functional as F

from ..nn.attention import AttentionUnit
from ..nn.functional import vq_attention
from ..models.transformer_vq import TransformerVQ, TransformerVQConfig
from ..schema.rules import check_block_len
from .grid import attention_flops

KERNEL_ARMS = ("vq", "sdpa", "quadratic")
# Kernel-level VQ variants (arm ``vq_<variant>``, attn ``vq``): each implementation of the same attention.
# ``compiled`` is torch.compile of the eager definition (inductor fuses it); plain ``vq`` uses ``vq_kernel``.
VQ_VARIANTS = ("eager", "chunked", "flex", "compiled")
# Live fp32 copies of the [T, T] (quadratic) or [T, S + 2L] (vq) scores at the peak of forward + backward:
# the CPU probe measured 3.0 and 3.4 (fp32, T = 8k-16k); 4 leaves a margin for the analytic guard.
_QUADRATIC_COPIES, _VQ_COPIES = 4, 4


@dataclass
class Built:
    step: Callable[[], None]
    tokens: int                 # tokens processed per step (B·T)
    flops: float | None         # analytic attention FLOPs per step (kernel level only)
    forward: Callable[[], torch.Tensor] | None = None   # kernel level: the attention output alone


def dtype_of(name: str) -> torch.dtype:
    dt = getattr(torch, str(name).replace("torch.", ""), None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"bench.dtype={name!r} is not a torch dtype")
    return dt


def _autocast(device: torch.device, dtype: torch.dtype):
    """Layer and model run with fp32 parameters and ``dtype`` activations (the paper: fp32 / bf16)."""
    if dtype in (torch.bfloat16, torch.float16):
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()


def _kernel(spec: dict, device, dtype, gen) -> Built:
    p, T, B = spec["params"], spec["T"], spec["batch"]
    H, Dk, Dv, S, L = p["heads"], p["d_k"], p["d_v"], p["n_code"], p["block_len"]
    if spec["attn"] == "vq":
        check_block_len(L, T=T)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)

    scale = Dk ** -0.25
    codebook = rnd(H, S, Dk, scale=scale)
    codes = torch.randint(0, S, (B, H, T), generator=gen).to(device)
    q = rnd(B, H, T, Dk, scale=scale).requires_grad_(True)
    k = codebook[torch.arange(H, device=device)[None, :, None], codes].detach().requires_grad_(True)
    v = rnd(B, H, T, Dv).requires_grad_(True)
    g_out = rnd(B, H, T, Dv)
    attn, arm = spec["attn"], spec.get("arm", spec["attn"])
    if attn == "vq":
        variant = arm[3:] if arm.startswith("vq_") else p.get("vq_kernel", "chunked")
        if variant not in VQ_VARIANTS:
            raise ValueError(f"kernel arm {arm!r}: unknown VQ variant, choose vq_<{'|'.join(VQ_VARIANTS)}>")
        # bf16 / fp16 points run under autocast, as in the model: low-precision products, fp32 statistics.
        impl = torch.compile(vq_attention) if variant == "compiled" else vq_attention
        kern = "eager" if variant == "compiled" else variant

        def fn():
            with _autocast(device, dtype):
                return impl(q, k, v, codes, codebook, L, kernel=kern)[0].to(dtype)
    elif attn == "sdpa":
        backend = p.get("sdpa_backend")       # e.g. flash: fail rather than silently fall back to another
        if backend and device.type == "cuda":
            from torch.nn.attention import SDPBackend, sdpa_kernel
            chosen = getattr(SDPBackend, {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                                          "cudnn": "CUDNN_ATTENTION", "math": "MATH"}[backend])

            def fn():
                with sdpa_kernel(chosen):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0)
        else:
            fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0)
    elif attn == "quadratic":
        acc = torch.float64 if dtype == torch.float64 else torch.float32     # as vq_attention's softmax
        mask = torch.zeros(T, T, device=device, dtype=acc).masked_fill(
            torch.ones(T, T, dtype=torch.bool, device=device).triu(1), float("-inf"))
        fn = lambda: (torch.softmax((q @ k.transpose(-1, -2)).to(acc) + mask, dim=-1) @ v.to(acc)).to(dtype)
    else:
        raise ValueError(f"kernel arm {attn!r} unknown: choose from {list(KERNEL_ARMS)}")

    def step():
        fn().backward(g_out)
        q.grad = k.grad = v.grad = None
    return Built(step, B * T, attention_flops(attn, T, Dk, Dv, S, L, heads=H, batch=B), forward=fn)


def model_config(spec: dict) -> TransformerVQConfig:
    fields = dict(spec["params"])
    fields.update(attn_type=spec["attn"], head_type=spec["head_type"])
    return TransformerVQConfig(**fields)


def _layer(spec: dict, device, dtype, gen) -> Built:
    T, B, cfg = spec["T"], spec["batch"], model_config(spec)
    torch.manual_seed(spec.get("seed", 0))
    unit = AttentionUnit(cfg).to(device).train()
    x = torch.randn(B, T, cfg.d_model, generator=gen).to(device).requires_grad_(True)
    g_y = torch.randn(B, T, cfg.d_model, generator=gen).to(device)
    beta = torch.tensor(cfg.c_beta, device=device)

    def step():
        with _autocast(device, dtype):
            y, commit, _, _ = unit(x)
        if commit.requires_grad:                      # vq: the commit loss reaches the keys
            torch.autograd.backward([y, commit], [g_y.to(y.dtype), beta.to(commit.dtype)])
        else:
            y.backward(g_y.to(y.dtype))
        unit.zero_grad(set_to_none=True)
        x.grad = None
    return Built(step, B * T, None)


def _model(spec: dict, device, dtype, gen) -> Built:
    from ..optim import build_optimizer

    T, B, cfg = spec["T"], spec["batch"], model_config(spec)
    check_block_len(cfg.block_len, T=T)
    torch.manual_seed(spec.get("seed", 0))
    model = TransformerVQ(cfg).to(device).train()
    ocfg = dict(spec["optim"])
    clip = ocfg.pop("grad_clip", None)
    opt = build_optimizer(model, SimpleNamespace(**ocfg))
    tokens = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=gen).to(device)
    inp, tgt = tokens[:, :-1], tokens[:, 1:].reshape(-1)

    def step():
        with _autocast(device, dtype):
            logits, aux = model(inp)
        loss = F.cross_entropy(logits.float().flatten(0, 1), tgt) + cfg.c_beta * aux.commit_loss.float()
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.update_codebooks()
    return Built(step, B * T, None)


def build_step(spec: dict) -> Built:
    """The step of one point, with its inputs allocated on ``spec['device']``."""
    device, dtype = torch.device(spec["device"]), dtype_of(spec["dtype"])
    gen = torch.Generator(device="cpu").manual_seed(spec.get("seed", 0))
    builder = {"kernel": _kernel, "layer": _layer, "model": _model}.get(spec["level"])
    if builder is None:
        raise ValueError(f"unknown level {spec['level']!r}")
    return builder(spec, device, dtype, gen)


def predicted_memory(spec: dict) -> float | None:
    """A rough analytic peak-memory guard (bytes) for the first kernel point of an arm; None elsewhere
    (later points extrapolate the measured peak of the previous length instead)."""
    if spec["level"] != "kernel":
        return None
    p, T, B = spec["params"], spec["T"], spec["batch"]
    rows = B * p["heads"] * T * 4
    if spec["attn"] == "quadratic":
        return rows * T * _QUADRATIC_COPIES
    if spec["attn"] == "vq":
        return rows * (p["n_code"] + 2 * p["block_len"]) * _VQ_COPIES
    return None
