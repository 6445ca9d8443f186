"""The length grid, the analytic FLOP counts and the skip rule of the throughput benchmark.

Spec: ``docs/transformer_vq.md``
  §3.2  VQ attention costs O(L·(S + 2L)·(D_k + D_v)) per block, i.e. linear in T,
  §5.4  the paper varies the sequence length (8k, 32k, 131k) and compares training throughput with the
        quadratic baseline.

FLOP counts (multiply-add = 2 FLOPs, backward = 2 × forward, so forward + backward = 3 × forward), per
sequence and per attention head:

* ``vq``:        T/L blocks × L·(S + 2L)·(D_k + D_v)·2  = 2·T·(S + 2L)·(D_k + D_v)     (forward)
* ``sdpa``:      causal, tiles above the diagonal skipped  = 2·T·(T/2)·(D_k + D_v)
* ``quadratic``: dense T×T scores, then masked            = 2·T·T·(D_k + D_v)

so the ideal VQ / causal-quadratic speed ratio is the FLOP ratio ``(T/2) / (S + 2L)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# How each arm's cost grows with T (time and memory): used to extrapolate from the previous length.
TIME_EXPONENT = {"vq": 1.0, "sdpa": 2.0, "quadratic": 2.0, "full": 2.0}
# SDPA's fused kernels (flash / memory-efficient, CPU and CUDA) keep O(T) memory; the layer/model "full"
# arms build a [T, T] relative-bias mask, the quadratic arm materialises the scores.
MEM_EXPONENT = {"vq": 1.0, "sdpa": 1.0, "quadratic": 2.0, "full": 2.0}


def length_grid(spec) -> list[int]:
    """Sequence lengths of one level: an explicit list, or ``{min, max[, factor]}`` expanded to
    ``min·factor^i <= max`` (factor 2 by default).

    The paper's grid is ``{min: 1024, max: 131072}``: 1k, 2k, …, 131k.
    """
    if spec is None:
        return []
    if isinstance(spec, (list, tuple)) or (hasattr(spec, "__iter__") and not hasattr(spec, "keys")):
        out = sorted({int(t) for t in spec})
    else:
        lo, hi, f = int(spec["min"]), int(spec["max"]), int(spec.get("factor", 2))
        if lo < 1 or hi < lo or f < 2:
            raise ValueError(f"lengths: need 1 <= min <= max and factor >= 2, got min={lo}, max={hi}, factor={f}")
        out, t = [], lo
        while t <= hi:
            out.append(t)
            t *= f
    if any(t < 1 for t in out):
        raise ValueError(f"lengths must be positive, got {out}")
    return out


def attention_flops(kind: str, T: int, d_k: int, d_v: int, n_code: int = 0, block_len: int = 0,
                    heads: int = 1, batch: int = 1, backward: bool = True) -> float:
    """Analytic FLOPs of one attention call (see the module docstring); ``backward`` adds 2× forward."""
    if kind == "vq":
        per_query = n_code + 2 * block_len
    elif kind == "sdpa":
        per_query = T / 2
    elif kind == "quadratic":
        per_query = T
    else:
        raise ValueError(f"unknown attention kind {kind!r}")
    fwd = 2.0 * T * per_query * (d_k + d_v) * heads * batch
    return fwd * (3 if backward else 1)


def flop_ratio(T: int, n_code: int, block_len: int) -> float:
    """Causal quadratic FLOPs over VQ FLOPs: ``(T/2) / (S + 2L)`` (1024·2^i: 0.33 at 1k, 2.67 at 8k)."""
    return (T / 2) / (n_code + 2 * block_len)


def extrapolate(prev: tuple[int, float] | None, T: int, exponent: float) -> float | None:
    """``value(T_prev)·(T/T_prev)^exponent`` from the last measured ``(T_prev, value)``; None without one."""
    if prev is None or prev[1] is None or not math.isfinite(prev[1]):
        return None
    return prev[1] * (T / prev[0]) ** exponent


def predict(history: list[tuple[int, float]], T: int, exponent: float) -> float | None:
    """Predicted cost at T from the arm's measured ``(T, value)`` history.

    A quadratic arm's step also has linear parts (projections, MLP, loss), which dominate at short T, so
    with two points it fits ``a·T + b·T²`` (a, b >= 0) through the last two; otherwise, or when that fit
    needs a negative coefficient, it scales the last point by ``(T/T_prev)^exponent`` (conservative).
    """
    if not history:
        return None
    if exponent == 2.0 and len(history) >= 2:
        (t1, y1), (t2, y2) = history[-2], history[-1]
        if t2 != t1:
            b = (y2 / t2 - y1 / t1) / (t2 - t1)
            a = y1 / t1 - b * t1
            if a >= 0 and b >= 0:
                return a * T + b * T * T
    return extrapolate(history[-1], T, exponent)


@dataclass
class Plan:
    """What to do at one point: ``run`` with ``n_warmup`` + ``n_repeat`` timed steps, or skip (``reason``)."""
    run: bool
    n_warmup: int = 0
    n_repeat: int = 0
    reason: str = ""

    @property
    def status(self) -> str:
        return "ok" if self.run else f"skipped: {self.reason}"


def plan_point(pred_time_s: float | None, pred_mem_bytes: float | None, *, warmup: int, repeats: int,
               time_budget_s: float, mem_budget_bytes: float, probe_runs: int = 0,
               min_repeats: int = 1) -> Plan:
    """The skip rule. A point is skipped when its predicted peak memory exceeds the budget, or when even
    ``probe_runs + warmup + min_repeats`` steps at the predicted step time exceed the per-point time budget;
    otherwise the number of timed repeats is cut to what fits the budget (never below ``min_repeats``).
    Unknown predictions (the first length of an arm) never skip.
    """
    if pred_mem_bytes is not None and pred_mem_bytes > mem_budget_bytes:
        return Plan(False, reason=f"memory (predicted {pred_mem_bytes / 2**30:.1f} GiB > budget "
                                  f"{mem_budget_bytes / 2**30:.1f} GiB)")
    if pred_time_s is None:
        return Plan(True, warmup, repeats)
    need = (probe_runs + warmup + min_repeats) * pred_time_s
    if need > time_budget_s:
        return Plan(False, reason=f"time budget (predicted {pred_time_s:.3g} s/step x "
                                  f"{probe_runs + warmup + min_repeats} steps > {time_budget_s:g} s)")
    fit = int(time_budget_s // pred_time_s) - probe_runs - warmup if pred_time_s > 0 else repeats
    return Plan(True, warmup, max(min_repeats, min(repeats, fit)))


def refit_repeats(plan: Plan, step_time_s: float, time_budget_s: float, spent_s: float,
                  min_repeats: int = 1) -> Plan:
    """After the warm-up, cut the repeats to the budget left given the measured step time."""
    if step_time_s <= 0:
        return plan
    left = int(max(0.0, time_budget_s - spent_s) // step_time_s)
    return Plan(True, plan.n_warmup, max(min_repeats, min(plan.n_repeat, left)))


def fmt_len(T: int) -> str:
    """1024 -> '1k', 131072 -> '128k' (powers of two); other lengths as digits."""
    return f"{T // 1024}k" if T >= 1024 and T % 1024 == 0 else str(T)
