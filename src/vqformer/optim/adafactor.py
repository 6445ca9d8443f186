"""Adafactor with the semantics of ``optax.adafactor`` as the official code configures it
(docs/transformer_vq.md §4.2; Shazeer & Stern, 2018).

Per tensor, at update t = 0, 1, ... with gradient g and parameter p:

    β_t = 1 − (t + 1)^(−decay_rate)                         (β_0 = 0: the first estimate is g² itself)
    g²  = g ⊙ g + ε₁
    factored (the two largest dims both ≥ min_dim_size_to_factor; r = second largest dim, c = largest):
        R ← β_t·R + (1 − β_t)·mean_c(g²)        C ← β_t·C + (1 − β_t)·mean_r(g²)
        u = g ⊙ (R / mean_r(R))^(−½) ⊙ C^(−½)
    otherwise:
        V ← β_t·V + (1 − β_t)·g²                u = g ⊙ V^(−½)
    u ← u / max(1, RMS(u) / clipping_threshold)                        (update clipping)
    p ← p − lr_t · max(RMS(p), ε₂) · u − wd·p                          (parameter scale; official decay)

Unlike ``torch.optim.Adafactor`` there is no relative-step cap min(lr, 1/√t): the step is the
scheduled learning rate, as in optax. ``wd`` is the official decoupled decay (not scaled by lr).
"""
from __future__ import annotations

import torch


def factored_dims(shape: torch.Size, min_dim_size_to_factor: int) -> tuple[int, int] | None:
    """(r, c): the second-largest and the largest dim when both are large enough to factor, else None."""
    if len(shape) < 2:
        return None
    order = sorted(range(len(shape)), key=lambda d: (shape[d], d))   # stable like numpy's argsort
    r, c = order[-2], order[-1]
    return (r, c) if shape[r] >= min_dim_size_to_factor else None


def rms(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32)).pow(2).mean().sqrt()


class Adafactor(torch.optim.Optimizer):
    def __init__(self, params, lr: float, decay_rate: float = 0.8, clipping_threshold: float | None = 1.0,
                 eps: float = 1e-30, eps_scale: float = 1e-3, min_dim_size_to_factor: int = 128,
                 multiply_by_parameter_scale: bool = True, weight_decay: float = 0.0):
        defaults = dict(lr=lr, decay_rate=decay_rate, clipping_threshold=clipping_threshold, eps=eps,
                        eps_scale=eps_scale, min_dim_size_to_factor=min_dim_size_to_factor,
                        multiply_by_parameter_scale=multiply_by_parameter_scale, constant_decay=weight_decay)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                g = p.grad.to(torch.promote_types(p.dtype, torch.float32))   # bf16 params: fp32 statistics
                dims = factored_dims(p.shape, group["min_dim_size_to_factor"])
                if not state:
                    state["step"] = 0
                    if dims is None:
                        state["v"] = torch.zeros_like(g)
                    else:
                        r, c = dims
                        state["v_row"] = torch.zeros_like(g.mean(c))
                        state["v_col"] = torch.zeros_like(g.mean(r))
                beta = 1.0 - (state["step"] + 1) ** (-group["decay_rate"])
                g2 = g * g + group["eps"]
                if dims is None:
                    state["v"].mul_(beta).add_(g2, alpha=1 - beta)
                    u = g * state["v"].rsqrt()
                else:
                    r, c = dims
                    v_row, v_col = state["v_row"], state["v_col"]
                    v_row.mul_(beta).add_(g2.mean(c), alpha=1 - beta)
                    v_col.mul_(beta).add_(g2.mean(r), alpha=1 - beta)
                    r_in_row = r - 1 if r > c else r            # dim r inside v_row (dim c removed)
                    row_factor = (v_row / v_row.mean(r_in_row, keepdim=True)).rsqrt()
                    u = g * row_factor.unsqueeze(c) * v_col.rsqrt().unsqueeze(r)
                if group["clipping_threshold"] is not None:
                    u = u / torch.clamp(rms(u) / group["clipping_threshold"], min=1.0)
                scale = group["lr"]
                if group["multiply_by_parameter_scale"]:
                    scale = scale * torch.clamp(rms(p), min=group["eps_scale"])
                step = scale * u
                if group["constant_decay"]:
                    step = step + group["constant_decay"] * p.to(step.dtype)
                p.sub_(step.to(p.dtype))
                state["step"] += 1
        return loss
