"""Wall-clock timing of one benchmark step: warm-up runs, then the median of timed repeats.

Spec: ``docs/transformer_vq.md`` §5.4 (the paper times training steps after compilation and
averages over steps). Here every repeat is timed on its own with ``time.perf_counter``; on CUDA the device
is synchronised before the clock starts and before it stops, so queued kernels are counted in the step
that launched them. The median is reported because the CPU machines are shared (other jobs add noise
that a mean would absorb); min and max are kept beside it. The process's minor page faults are counted
per timed step too (``getrusage``): on CPU they show when a step's large buffers come fresh from the OS
(glibc maps every allocation above 32 MiB anew) instead of being reused.
"""
from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_once(step: Callable[[], None], device: torch.device | str) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - t0


def _minflt() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@dataclass
class Timing:
    warmup_s: list[float] = field(default_factory=list)
    times_s: list[float] = field(default_factory=list)
    minor_faults: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times_s) if self.times_s else float("nan")

    @property
    def min(self) -> float:
        return min(self.times_s) if self.times_s else float("nan")

    @property
    def max(self) -> float:
        return max(self.times_s) if self.times_s else float("nan")


def time_step(step: Callable[[], None], device, n_warmup: int, n_repeat: int,
              replan: Callable[[float, float], int] | None = None) -> Timing:
    """Run ``n_warmup`` untimed-for-the-result steps, then ``n_repeat`` timed ones.

    ``replan(step_time_s, spent_s) -> n_repeat`` may cut the repeats once the warm-up has shown the real
    step time (the per-point time budget).
    """
    out = Timing()
    for _ in range(n_warmup):
        out.warmup_s.append(time_once(step, device))
    if replan is not None and out.warmup_s:
        n_repeat = replan(out.warmup_s[-1], sum(out.warmup_s))
    for _ in range(n_repeat):
        f0 = _minflt()
        out.times_s.append(time_once(step, device))
        out.minor_faults.append(_minflt() - f0)
    return out


def matmul_peak(device, dtype: torch.dtype, n: int = 2048, n_warmup: int = 2, n_repeat: int = 7) -> dict:
    """Dense ``[n,n] @ [n,n]`` FLOP/s at ``dtype`` (2·n³ FLOPs per product): the device's practical peak."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    t = time_step(lambda: torch.mm(a, b), device, n_warmup, n_repeat)
    flops = 2.0 * n ** 3
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "time_median_s": t.median,
            "flops_per_s": flops / t.median, "flops_per_s_best": flops / t.min, "times_s": t.times_s}
