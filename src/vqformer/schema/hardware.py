"""The ``hardware`` group (conf/hardware/*.yaml) sets ``trainer.accelerator/devices/num_nodes/strategy/precision``
(typed by ``schema/trainer.py``). This file checks them against the machine the job runs on, so a run asking
for a GPU on a machine without one, or fp16 on a CPU, stops before any work.
"""
from __future__ import annotations

from .base import fail, is_int, one_of

ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
PRECISIONS = ("64-true", "64", "32-true", "32", "bf16-mixed", "bf16", "bf16-true", "16-mixed", "16", "16-true")
FP16 = ("16-mixed", "16", "16-true")   # fp16 autocast is a GPU feature; on a CPU Lightning runs it unscaled


def resolved_accelerator(accelerator: str) -> str:
    """cpu, cuda or mps: what ``accelerator`` means on this machine (auto prefers CUDA)."""
    import torch
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if accelerator == "gpu" else accelerator


def validate(t) -> None:
    """Check the trainer's device fields against this machine."""
    import torch
    one_of("trainer.accelerator", t.accelerator, ACCELERATORS)
    one_of("trainer.precision", str(t.precision), PRECISIONS)
    acc = resolved_accelerator(t.accelerator)
    if acc == "cuda" and not torch.cuda.is_available():
        fail("trainer.accelerator", t.accelerator, "this machine has no CUDA device (torch.cuda.is_available() "
             "is False); use hardware=cpu")
    if acc == "mps" and not torch.backends.mps.is_available():
        fail("trainer.accelerator", t.accelerator, "this machine has no MPS device; use hardware=cpu")
    if acc == "cpu" and str(t.precision) in FP16:
        fail("trainer.precision", t.precision, "fp16 needs a GPU; on a CPU use 32-true or bf16-mixed")
    devices = t.devices
    if acc == "cuda" and is_int(devices) and devices > torch.cuda.device_count():
        fail("trainer.devices", devices, f"this machine has {torch.cuda.device_count()} CUDA device(s)")
