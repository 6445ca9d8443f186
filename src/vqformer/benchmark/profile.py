"""Where the VQ kernel's time goes: one ``torch.profiler`` run of ``vq_attention`` forward + backward.

Spec: ``docs/transformer_vq.md`` §3.2 (the blockwise computation: three score blocks per query
block — compressive cache [L,S], previous block [L,L], current block [L,L] — one joint softmax, three
value products) and §3.8 (the PyTorch layout). The table is sorted by self time (CPU, or CUDA on a GPU),
so the ops that are themselves slow come first, not their callers.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from .arms import build_step


def profile_kernel(spec: dict, out_path: Path, n_steps: int = 2, row_limit: int = 20) -> dict:
    """Profile ``n_steps`` steps after one warm-up; writes the table to ``out_path`` and returns the top ops."""
    built = build_step(spec)
    built.step()
    cuda = torch.device(spec["device"]).type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(n_steps):
            built.step()
        if cuda:
            torch.cuda.synchronize()
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    avg = prof.key_averages()
    table = avg.table(sort_by=sort, row_limit=row_limit)
    header = (f"vq_attention forward+backward, {n_steps} steps, T={spec['T']}, batch={spec['batch']}, "
              f"params={spec['params']}, device={spec['device']}, dtype={spec['dtype']}, "
              f"threads={torch.get_num_threads()}; sorted by {sort}\n\n")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(header + table + "\n")
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    total = sum(getattr(e, attr, 0) for e in avg) or 1
    top = sorted(avg, key=lambda e: getattr(e, attr, 0), reverse=True)[:row_limit]
    return {"T": spec["T"], "n_steps": n_steps, "sort": sort, "file": out_path.name,
            "top": [{"op": e.key, "self_ms": getattr(e, attr, 0) / 1e3 / n_steps, "calls": e.count // n_steps,
                     "self_pct": 100.0 * getattr(e, attr, 0) / total} for e in top]}
