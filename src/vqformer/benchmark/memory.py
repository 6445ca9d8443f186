"""Peak memory of one benchmark step, reported as the increase over the memory held before the step.

Spec: ``docs/transformer_vq.md`` §5.4 (the throughput study; the paper reports speed only, the
issue asks for peak memory per point as well).

What ``mem_delta_mb`` means — the step's transient working set (activations, gradients, temporaries)
above what is alive before it (inputs, parameters, optimizer state; every step releases its gradients):

* ``cuda``: ``torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()`` around one step after
  ``reset_peak_memory_stats`` (exact for tensors; excludes the caching allocator's reserve and the
  CUDA context).
* ``cpu-subprocess`` (default on CPU): a fresh ``python -m vqformer.benchmark.memory`` process per point
  builds the same step and runs it once (lazy allocations: library workspaces, ~40 MiB on the first CPU
  step, and the Adam moments at the model level), returns the allocator's free pages to the OS (glibc
  ``malloc_trim(0)``), then measures one step as ``VmHWM - VmRSS`` after resetting the kernel's
  high-water mark (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0). The probe runs with a fixed
  ``MALLOC_MMAP_THRESHOLD_`` of 128 KiB, so every tensor buffer is its own mapping that goes back to the
  OS when freed: RSS then follows the live tensor bytes instead of glibc's heap (with the default
  dynamic threshold the VQ kernel's delta at T = 4k read 170 MiB instead of 88 MiB: heap
  fragmentation). A fresh process also means earlier (larger) points cannot hold pages. A point that
  dies here (e.g. SIGKILL from the OOM killer) is skipped without taking the benchmark down. Costs one
  process start (~2 s) and 2 steps.
* ``cpu-inprocess``: the same trim + high-water-mark reset inside the benchmark process (cheap; pages
  held by earlier, larger points are trimmed too, but memory-mapped chunks glibc keeps cached are not).
* Without ``clear_refs`` the CPU methods fall back to ``getrusage`` peak RSS of a process that has run
  only that one step (``cpu-*-maxrss``): an upper bound including the lazy allocations.
"""
from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import time

import torch

from ..heap import trim

MB = 2.0 ** 20


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cuda_step_memory(step, device) -> dict:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {"mem_base_mb": base / MB, "mem_peak_mb": peak / MB, "mem_delta_mb": (peak - base) / MB,
            "mem_method": "cuda"}


def cpu_step_memory(step, method: str = "cpu-inprocess", warm: bool = True) -> dict:
    """High-water-mark delta of one step in this process (``warm``: run one unmeasured step first)."""
    t_warm = None
    if warm:
        t0 = time.perf_counter()
        step()
        t_warm = time.perf_counter() - t0
    gc.collect()
    trim()                                     # free heap pages back to the OS: the step's show up in RSS
    base_kb = _status_kb("VmRSS")
    if base_kb is not None and _reset_hwm():
        t0 = time.perf_counter()
        step()
        t = time.perf_counter() - t0
        peak_kb = _status_kb("VmHWM")
    else:                                      # no /proc reset: whole-process peak (upper bound)
        t0 = time.perf_counter()
        step()
        t = time.perf_counter() - t0
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        base_kb = base_kb or 0
        method += "-maxrss"
    return {"mem_base_mb": base_kb / 1024, "mem_peak_mb": peak_kb / 1024,
            "mem_delta_mb": max(0, peak_kb - base_kb) / 1024, "mem_method": method,
            "probe_step_s": t, "probe_warm_s": t_warm}


def probe_env() -> dict:
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = "131072"   # a fixed value also disables glibc's dynamic threshold
    return env


def probe_subprocess(spec: dict, timeout_s: float | None = None) -> dict:
    """Measure one point in a fresh process; ``{'error': reason}`` when the probe dies or times out."""
    cmd = [sys.executable, "-m", "vqformer.benchmark.memory"]
    try:
        res = subprocess.run(cmd, input=json.dumps(spec), capture_output=True, text=True,
                             timeout=timeout_s, env=probe_env())
    except subprocess.TimeoutExpired:
        return {"error": f"memory probe timed out after {timeout_s:g} s"}
    if res.returncode != 0:
        if res.returncode in (-9, 137):
            return {"error": "out of memory (memory probe killed by SIGKILL)"}
        tail = (res.stderr.strip().splitlines() or ["?"])[-1]
        if "memory" in tail.lower() and ("alloc" in tail.lower() or "out of" in tail.lower()):
            return {"error": f"out of memory ({tail[:120]})"}
        return {"error": f"memory probe failed (rc {res.returncode}: {tail[:160]})"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def _main() -> None:
    from .arms import build_step

    spec = json.loads(sys.stdin.read())
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    built = build_step(spec)
    print(json.dumps(cpu_step_memory(built.step, method="cpu-subprocess")), flush=True)


if __name__ == "__main__":
    _main()
