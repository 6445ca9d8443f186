"""Drive the benchmark: every level × arm × length point, with the skip rule, memory probe and timing.

Spec: ``docs/transformer_vq.md`` §5.4 (six arms {VQ, full} × {SHGA, MQA, MHA}, sequence length
varied; seconds per training step after warm-up) and §3.2 (the linear-time algorithm being timed).

Per point, in order: (1) skip if the arm was already skipped at a shorter length, or if the arm's earlier
points predict more memory than ``mem_budget_gb`` or more time than ``time_budget_s`` at this length
(``grid.predict``, ``grid.plan_point``); (2) measure peak memory (CUDA stats in process; on CPU a fresh
subprocess, ``memory.py``), skipping the point if that dies; (3) time ``warmup`` + up to ``repeats`` steps
in this process and keep the median. Lengths are the outer loop so the arms of one length run close in
time (shared machines drift).
"""
from __future__ import annotations

import gc
import math
import statistics
import time

import torch
from omegaconf import DictConfig, OmegaConf

from ..heap import trim
from ..progress import progress
from .arms import build_step, predicted_memory
from .grid import MEM_EXPONENT, TIME_EXPONENT, length_grid, plan_point, predict, refit_repeats
from .memory import MB, cpu_step_memory, cuda_step_memory, probe_subprocess
from .timing import matmul_peak, time_step

PROBE_RUNS = 2          # the CPU memory probe runs one warm-up and one measured step


def _plain(x):
    return OmegaConf.to_container(x, resolve=True) if isinstance(x, DictConfig) else x


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("bench.device=cuda but no CUDA device is available (use bench=cpu_quick or bench=cpu)")
    return dev


def mem_budget_bytes(gb: float | None, device: torch.device) -> float:
    """The configured budget, capped by what the device has (CPU: 70% of MemAvailable; CUDA: 90%)."""
    if device.type == "cuda":
        cap = 0.9 * torch.cuda.get_device_properties(device).total_memory
    else:
        cap = float("inf")
        try:
            with open("/proc/meminfo") as f:
                avail = next(int(l.split()[1]) for l in f if l.startswith("MemAvailable:"))
            cap = 0.7 * avail * 1024
        except (OSError, StopIteration):
            pass
    return min(cap, gb * 2 ** 30) if gb else cap


def arm_specs(level: str, lcfg: DictConfig) -> list[dict]:
    """The arms of one level as spec templates (``T`` filled in per point) with their length grids."""
    lcfg = _plain(lcfg)
    base = {"level": level, "batch": lcfg.get("batch", 1)}
    if level == "kernel":
        params = {k: lcfg[k] for k in ("heads", "d_k", "d_v", "n_code", "block_len")}
        params.update({k: lcfg[k] for k in ("vq_kernel", "sdpa_backend") if lcfg.get(k)})
        return [dict(base, arm=a, attn="vq" if a.startswith("vq_") else a, head_type="", config="kernel",
                     params=params, lengths=length_grid(lcfg["lengths"])) for a in lcfg["arms"]]
    if level == "layer":
        return [dict(base, arm=f"{a}/{h}", attn=a, head_type=h, config="layer", params=lcfg["model"],
                     lengths=length_grid(lcfg["lengths"]))
                for h in lcfg["head_types"] for a in lcfg["attn_types"]]
    out = []
    for name, c in lcfg["configs"].items():
        if c is None:                            # a config switched off by an override (``small: null``)
            continue
        for h in c.get("head_types", ["shga"]):
            for a in c.get("attn_types", lcfg["attn_types"]):
                out.append(dict(base, batch=c.get("batch", base["batch"]), arm=f"{name}/{a}/{h}", attn=a,
                                head_type=h, config=name, params=c["model"], optim=lcfg["optim"],
                                lengths=length_grid(c["lengths"])))
    return out


def _is_oom(e: BaseException) -> bool:
    msg = str(e).lower()
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in msg or "can't allocate" in msg


def _free(device: torch.device) -> None:
    """After a point: on CPU the heap kept for speed (``bench.cpu_heap``) goes back to the OS here, so it does
    not hold this point's memory while the next point's memory probe (another process) runs."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    else:
        trim()


class ArmState:
    """What one arm has measured so far (for the predictions) and why it stopped, if it did."""

    def __init__(self):
        self.time: list[tuple[int, float]] = []
        self.mem: list[tuple[int, float]] = []
        self.dead: str | None = None


def run_point(spec: dict, st: ArmState, b: DictConfig, device: torch.device, budget_bytes: float) -> dict:
    T, attn = spec["T"], spec["attn"]
    row = {k: spec[k] for k in ("level", "config", "arm", "attn", "head_type", "T", "batch")}
    row.update(status="ok", tokens=spec["batch"] * T)
    if st.dead:
        row["status"] = f"skipped: {st.dead}"
        return row
    pred_mem = [m for m in (predicted_memory(spec), predict(st.mem, T, MEM_EXPONENT[attn])) if m is not None]
    use_probe = device.type == "cpu" and b.memory == "subprocess"
    plan = plan_point(predict(st.time, T, TIME_EXPONENT[attn]), max(pred_mem) if pred_mem else None,
                      warmup=b.warmup, repeats=b.repeats, time_budget_s=b.time_budget_s,
                      mem_budget_bytes=budget_bytes, probe_runs=PROBE_RUNS if use_probe else 0,
                      min_repeats=b.min_repeats)
    if not plan.run:
        st.dead = f"{plan.reason}, from T={T}"
        row["status"] = plan.status
        return row

    t_start = time.perf_counter()
    mem: dict = {}
    if use_probe:
        mem = probe_subprocess(spec, timeout_s=max(60.0, 3 * b.time_budget_s))
        if "error" in mem:
            st.dead = f"{mem['error']}, from T={T}"
            row["status"] = f"skipped: {mem['error']}"
            return row
    try:
        built = build_step(spec)
        if device.type == "cuda" and b.memory != "none":
            built.step()                                   # lazy allocations before the measured step
            mem = cuda_step_memory(built.step, device)
        elif device.type == "cpu" and b.memory == "inprocess":
            mem = cpu_step_memory(built.step)
        spent = time.perf_counter() - t_start
        timing = time_step(built.step, device, plan.n_warmup, plan.n_repeat,
                           replan=lambda t, s: refit_repeats(plan, t, b.time_budget_s, spent + s,
                                                             b.min_repeats).n_repeat)
    except Exception as e:                                 # noqa: BLE001 (only OOM is a skip)
        if not _is_oom(e):
            if not b.get("skip_errors", False):
                raise
            # one-shot runs (gpu-check) record a failing arm and go on with the others
            msg = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            st.dead = f"failed at T={T} ({msg})"
            row["status"] = f"failed: {msg}"
            return row
        st.dead = f"out of memory, from T={T}"
        row["status"] = "skipped: out of memory"
        return row
    finally:
        built = None
        _free(device)
    med = timing.median
    row.update(n_warmup=len(timing.warmup_s), n_repeat=len(timing.times_s), time_median_s=med,
               time_min_s=timing.min, time_max_s=timing.max, tokens_per_s=row["tokens"] / med,
               times_s=timing.times_s,
               minor_faults_per_step=statistics.median(timing.minor_faults) if timing.minor_faults else None)
    if spec["level"] == "kernel":
        from .grid import attention_flops
        p = spec["params"]
        row["flops"] = attention_flops(attn, T, p["d_k"], p["d_v"], p["n_code"], p["block_len"],
                                       heads=p["heads"], batch=spec["batch"])
        row["flops_per_s"] = row["flops"] / med
    for k in ("mem_base_mb", "mem_peak_mb", "mem_delta_mb", "mem_method"):
        if k in mem:
            row[k] = mem[k]
    st.time.append((T, med))
    if "mem_delta_mb" in mem:
        st.mem.append((T, mem["mem_delta_mb"] * MB))
    return row


def run_benchmark(cfg: DictConfig, log=print) -> dict:
    """Run every enabled level of ``cfg.bench``; returns ``{matmul, points, budget}`` (report.py writes it)."""
    b = cfg.bench
    device = resolve_device(b.device)
    if b.get("threads"):
        torch.set_num_threads(int(b.threads))
    budget = mem_budget_bytes(b.get("mem_budget_gb"), device)
    from .arms import dtype_of
    dtype = dtype_of(b.dtype)
    log(f"[bench] device={device} dtype={b.dtype} threads={torch.get_num_threads()} "
        f"mem budget={budget / 2**30:.1f} GiB, time budget={b.time_budget_s:g} s/point")
    mm = matmul_peak(device, dtype, n=b.matmul_n) if b.matmul_n else None
    if mm:
        log(f"[bench] matmul {b.matmul_n}^3 {mm['dtype']}: {mm['flops_per_s'] / 1e9:.1f} GFLOP/s")
    rows = []
    levels = [(level, arm_specs(level, b[level])) for level in ("kernel", "layer", "model")
              if b.get(level) is not None and b[level].get("enabled", True)]
    # points done / total with ETA (skipped points count too: they finish at once)
    bar = progress(total=sum(len(a["lengths"]) for _, arms in levels for a in arms), desc="bench", unit="point")
    for level, arms in levels:
        states = {a["arm"]: ArmState() for a in arms}
        for T in sorted({t for a in arms for t in a["lengths"]}):
            for a in arms:
                if T not in a["lengths"]:
                    continue
                spec = {k: v for k, v in a.items() if k != "lengths"}
                spec.update(T=T, device=str(device), dtype=b.dtype, seed=cfg.get("seed", 0),
                            threads=torch.get_num_threads())
                t0 = time.perf_counter()
                row = run_point(spec, states[a["arm"]], b, device, budget)
                rows.append(row)
                med = row.get("time_median_s")
                log(f"[bench] {level:6s} {a['arm']:22s} T={T:>6d} {row['status']:s}"
                    + (f"  {med:.4g} s/step  {row['tokens_per_s']:.4g} tok/s" if med is not None else "")
                    + (f"  +{row['mem_delta_mb']:.0f} MiB" if row.get("mem_delta_mb") is not None else "")
                    + f"  [{time.perf_counter() - t0:.1f} s]")
                bar.update(1)
    bar.close()
    if mm:
        for r in rows:
            if r.get("flops_per_s") and math.isfinite(r["flops_per_s"]):
                r["frac_of_matmul_peak"] = r["flops_per_s"] / mm["flops_per_s"]
    return {"matmul": mm, "points": rows, "mem_budget_gb": budget / 2 ** 30, "device": str(device),
            "threads": torch.get_num_threads()}
