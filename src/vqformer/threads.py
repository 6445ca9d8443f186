"""How many CPU threads torch uses: the physical cores, fewer when the load average says they are busy.

torch's default (every logical CPU) makes a busy machine stall: its OpenMP threads wait on each other while
other processes hold the cores (`make demo` took over 20 minutes on a loaded 2-core machine, about 4 idle).
The choice is printed with its reason; ``threads=N`` on the command line or ``VQFORMER_THREADS=N`` fixes it.
"""
from __future__ import annotations

import math
import os

ENV = "VQFORMER_THREADS"


def machine() -> tuple[int, int, float]:
    """(physical cores, CPUs this process may use, 1-minute load average) of this machine."""
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import psutil
        physical = psutil.cpu_count(logical=False) or logical
    except ImportError:
        physical = logical
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):   # not on this platform
        load = 0.0
    return physical, logical, load


def choose_threads(requested: int | None = None, env=None, physical: int | None = None,
                   usable: int | None = None, load: float | None = None, procs: int = 1) -> tuple[int, str]:
    """(threads per process, reason). ``requested`` (the ``threads`` knob) wins, then ``VQFORMER_THREADS``;
    otherwise the physical cores this process may use, shared by ``procs`` processes, cut to the CPUs the
    load average leaves free (at least 1)."""
    env = os.environ if env is None else env
    if requested is not None:
        return int(requested), "set by threads="
    if env.get(ENV):
        try:
            n = int(env[ENV])
        except ValueError:
            raise ValueError(f"{ENV}={env[ENV]!r} must be a positive integer") from None
        if n < 1:
            raise ValueError(f"{ENV}={n} must be a positive integer")
        return n, f"set by {ENV}"
    if physical is None or usable is None or load is None:
        m = machine()
        physical, usable, load = (physical or m[0], usable or m[1], m[2] if load is None else load)
    cores = max(1, min(physical, usable) // max(1, procs))
    free = math.floor(usable - load)
    if free < cores:
        n = max(1, free // max(1, procs))
        return n, (f"{min(physical, usable)} physical cores, but the load average {load:.1f} on {usable} CPUs "
                   f"leaves about {max(free, 0)} free")
    return cores, f"{min(physical, usable)} physical cores" + (f" shared by {procs} processes" if procs > 1 else "")


def set_threads(requested: int | None = None, procs: int = 1, verbose: bool = True) -> int:
    """Apply :func:`choose_threads` to torch and print the choice with its reason."""
    import torch
    n, why = choose_threads(requested, procs=procs)
    torch.set_num_threads(n)
    if verbose:
        print(f"[vqformer] CPU threads: {n} ({why}; threads=N or {ENV}=N to choose)", flush=True)
    return n
