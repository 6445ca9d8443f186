"""Throughput benchmark of VQ attention against the quadratic baseline (``python -m vqformer.bench``).

Spec: ``docs/transformer_vq.md`` §5.4 (the paper's throughput protocol) and §3.2 (the
linear-time blockwise algorithm). One concept per module:

* ``grid``     length grid, analytic FLOP counts / FLOP ratio, the skip rule,
* ``timing``   warm-up + median of timed repeats (CUDA-synchronised), dense matmul peak,
* ``memory``   peak memory per point (CUDA stats, or a fresh CPU subprocess with a reset high-water mark),
* ``arms``     the steps: kernel (vq / sdpa / quadratic), layer (AttentionUnit), model (training step),
* ``runner``   the loop over levels × lengths × arms,
* ``machine``  hardware / software / commit record,
* ``report``   the record on disk (points.csv, results.json); ``profile`` the torch.profiler table of the
  VQ kernel.

Ratios, targets, ``table.md`` and ``throughput.png`` are made from the record by ``vqformer.results.throughput``
(``python -m vqformer.bench`` runs both).
"""
from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def run(cfg: DictConfig, out_dir: Path, command: str = "", log=print) -> dict:
    """Run the configured benchmark and write its record, points.csv and results.json (and the profiler
    table), into ``out_dir``. Returns the result dict that results.json holds."""
    from ..provenance import git_commit
    from . import machine, report
    from .runner import resolve_device, run_benchmark

    b = cfg.bench
    device = resolve_device(b.device)
    if b.get("threads"):
        import torch
        torch.set_num_threads(int(b.threads))
    meta = machine.machine_info(device)
    meta.update(command=command, git=git_commit(), dtype=b.dtype, device_tag=b.device_tag,
                mem_method=("cuda" if device.type == "cuda" else f"cpu-{b.memory}"))
    if device.type == "cpu":       # before the first step: large buffers are reused, not faulted in per step
        from ..heap import set_cpu_heap
        meta["cpu_heap"] = set_cpu_heap(b.get("cpu_heap", "keep"), key="bench.cpu_heap")[1]
        log(f"[bench] {meta['cpu_heap']}")
    res = run_benchmark(cfg, log=log)
    prof = None
    if b.get("profile") and b.profile.get("enabled") and b.get("kernel"):
        from .profile import profile_kernel
        from .runner import arm_specs
        spec = next(a for a in arm_specs("kernel", b.kernel) if a["attn"] == "vq")
        spec = {k: v for k, v in spec.items() if k != "lengths"}
        spec.update(T=int(b.profile.T), device=str(device), dtype=b.dtype, seed=cfg.get("seed", 0))
        prof = profile_kernel(spec, out_dir / f"profile_vq_kernel_T{spec['T']}.txt",
                              n_steps=int(b.profile.get("steps", 2)))
        top = ", ".join("%s %.0f%%" % (t["op"], t["self_pct"]) for t in prof["top"][:5])
        log(f"[bench] profile (self time): {top}")
    try:
        meta["loadavg_end"] = list(os.getloadavg())
    except OSError:
        pass
    result = {"meta": meta, "config": OmegaConf.to_container(b, resolve=True), **res, "profile": prof}
    paths = report.write(result, out_dir)
    log(f"[bench] wrote {', '.join(str(p) for p in paths.values())}")
    return result
