"""Keep freed memory in the process's heap on CPU, so that a training step reuses the last step's buffers.

Why. glibc serves every allocation above its mmap threshold with a fresh mapping and unmaps it again on
free. The threshold adapts upwards to the largest block freed, but only up to 32 MiB (``mallopt`` refuses
more). A training step over T tokens allocates dozens of [T, d] tensors (activations, their gradients,
temporaries); with the small benchmark model's d_v = 512 these pass 32 MiB from T = 16k on, and from then
on every one of them is faulted in page by page and zeroed by the kernel on every step. The benchmark's
record of the small shga model (``experiments/throughput/README.md``, "What the budget cannot fix") has 7,
22 and 45 minor faults per token at 8k, 16k and 32k at a constant peak memory per token; the user CPU time
per token stays flat, the loss of tokens/s at long T is system time. The chunked attention kernel keeps
its own working set small (``nn/vq_chunked.py``); what remains is T-sized by nature (activations and
their gradients), so the fix belongs to the allocator, not to a layer.

What. ``M_MMAP_MAX = 0``: no allocation gets its own mapping, large blocks come from the heap as small ones
do; ``M_TRIM_THRESHOLD = -1``: the heap is never shrunk on free. A freed buffer then stays mapped and the
next step's tensor of the same size reuses its pages. The cost is that the process keeps its peak heap
(as a GPU caching allocator does) plus some fragmentation: glibc keeps up to 7 small tail pieces of aligned
blocks cached, and each pins a freed block that is a few bytes too small for the same request, so the first
steps grow the heap before it settles (``tests/test_heap.py``). Only the allocator changes; every number
the model computes is the same.

Where. The CPU benchmark's timing process (``bench.cpu_heap``; ``trim`` between points) and CPU training
(``vqformer.train`` with ``trainer.accelerator=cpu``; ``VQFORMER_CPU_HEAP=release`` keeps glibc's default). Not the CPU memory
probe, which must see live tensor bytes (``benchmark/memory.py``). Other C libraries: nothing is changed.
"""
from __future__ import annotations

import ctypes
import os

ENV = "VQFORMER_CPU_HEAP"
POLICIES = ("keep", "release")
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4          # glibc <malloc.h>


def _libc():
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        return libc
    except (OSError, AttributeError):               # not glibc (macOS, musl, Windows)
        return None


def glibc_version() -> str | None:
    """The running glibc's version, or None under another C library."""
    libc = _libc()
    return None if libc is None else libc.gnu_get_libc_version().decode()


def set_cpu_heap(policy: str | None = None, key: str = "cpu_heap", env=None) -> tuple[bool, str]:
    """Apply the heap policy to this process: ``keep`` (the default) or ``release`` (glibc's default, left
    as it is). ``policy`` (the config knob ``key``) wins over ``VQFORMER_CPU_HEAP``. Returns (applied, a
    sentence saying what holds). ``keep`` cannot be undone in the process (glibc's dynamic threshold is gone)."""
    env = os.environ if env is None else env
    if policy is None:
        key, policy = (ENV, env[ENV]) if env.get(ENV) else ("default", "keep")
    if policy not in POLICIES:
        raise ValueError(f"{key}={policy!r} is invalid: choose one of {list(POLICIES)}")
    where = "default" if key == "default" else f"set by {key}"
    if policy == "release":
        return False, f"CPU heap: glibc default, freed blocks over its mmap threshold go back to the OS ({where})"
    libc, version = _libc(), glibc_version()
    if libc is None:
        return False, "CPU heap: not glibc, allocator left as it is"
    if not (libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, -1)):
        return False, f"CPU heap: glibc {version} refused mallopt, allocator left as it is"
    return True, f"CPU heap: kept (glibc {version}: no mmap per block, no trim; {where})"


def trim() -> None:
    """Give the heap's free pages back to the OS now (glibc ``malloc_trim(0)``; elsewhere nothing). Between
    benchmark points, so that a kept heap does not hold a finished point's memory while the next one runs."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


__all__ = ["ENV", "POLICIES", "glibc_version", "set_cpu_heap", "trim"]
