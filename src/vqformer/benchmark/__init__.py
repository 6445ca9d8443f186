"""Throughput benchmark of VQ attention against the quadratic baseline (``python -m vqformer.bench``).

Spec: ``shared/research/transformer_vq.md`` §5.4 (the paper's throughput protocol) and §3.2 (the
linear-time blockwise algorithm). One concept per module:

* ``grid``     length grid, analytic FLOP counts / FLOP ratio, the skip rule,
* ``timing``   warm-up + median of timed repeats (CUDA-synchronised), dense matmul peak,
* ``memory``   peak memory per point (CUDA stats, or a fresh CPU subprocess with a reset high-water mark),
* ``arms``     the steps: kernel (vq / sdpa / quadratic), layer (AttentionUnit), model (training step),
* ``runner``   the loop over levels × lengths × arms,
* ``machine``  hardware / software / commit record,
* ``report``   CSV, JSON, markdown table with ratios and targets; ``plot`` the PNG; ``profile`` the
  torch.profiler table of the VQ kernel.
"""
from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def _params(b: DictConfig) -> dict[str, dict]:
    """n_code / block_len per config name, for the FLOP ratio of each level."""
    out = {}
    if b.get("kernel"):
        out["kernel"] = {"n_code": b.kernel.n_code, "block_len": b.kernel.block_len}
    if b.get("layer"):
        out["layer"] = dict(OmegaConf.to_container(b.layer.model, resolve=True))
    if b.get("model"):
        for name, c in b.model.configs.items():
            if c is not None:
                out[name] = dict(OmegaConf.to_container(c.model, resolve=True))
    return out


def run(cfg: DictConfig, out_dir: Path, command: str = "", log=print) -> dict:
    """Run the configured benchmark and write points.csv, results.json, table.md, throughput.png
    (and the profiler table) into ``out_dir``. Returns the result dict that results.json holds."""
    from ..provenance import git_commit
    from . import machine, plot, report
    from .runner import resolve_device, run_benchmark

    b = cfg.bench
    device = resolve_device(b.device)
    if b.get("threads"):
        import torch
        torch.set_num_threads(int(b.threads))
    meta = machine.machine_info(device)
    meta.update(command=command, git=git_commit(), dtype=b.dtype, device_tag=b.device_tag,
                mem_method=("cuda" if device.type == "cuda" else f"cpu-{b.memory}"))
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
    result["ratios"] = report.ratios(result["points"], _params(b))
    result["targets"] = report.targets(result["points"], result["ratios"])
    paths = report.write(result, out_dir)
    paths["png"] = plot.plot(result["points"], out_dir / "throughput.png",
                             title=f"{meta.get('gpu') or meta.get('cpu_model')} · {b.dtype} · torch {meta['torch']}"
                                   f" · {meta['torch_threads']} thread(s) · commit {meta['git'].get('commit')}")
    for t in result["targets"]:
        log(f"[bench] target: {t['target']}: {t['status']}")
    log(f"[bench] wrote {', '.join(str(p) for p in paths.values())}")
    return result
