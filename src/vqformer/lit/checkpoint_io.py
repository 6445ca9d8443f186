"""Checkpoint files that survive any crash: atomic, finite, and checked before a resume uses them.

- ``AtomicCheckpointIO`` (Lightning's checkpoint IO plugin) refuses a checkpoint holding a non-finite
  tensor and writes it through :func:`atomic.atomic_write` (temporary file in the same directory, fsync,
  rename): a kill during the write leaves the previous file intact.
- ``resume_path`` picks ``last.ckpt`` when it loads, otherwise the newest step checkpoint that does, with a
  warning naming both (a file truncated by a kill or a full disk is never fatal while an intact one exists).
- ``check_writable`` stops a run whose checkpoint directory cannot take a file, before any training.
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .atomic import atomic_write, remove_stale_temporaries

log = logging.getLogger(__name__)
STEP = re.compile(r"step(\d+)\.ckpt$")


class CheckpointError(RuntimeError):
    pass


def non_finite_tensors(obj: Any, prefix: str = "") -> list[str]:
    """Keys of floating tensors holding a NaN or an infinity, anywhere in a (nested) checkpoint."""
    if isinstance(obj, torch.Tensor):
        return [prefix] if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else []
    if isinstance(obj, dict):
        return [k for key, v in obj.items() for k in non_finite_tensors(v, f"{prefix}/{key}" if prefix else str(key))]
    if isinstance(obj, (list, tuple)):
        return [k for i, v in enumerate(obj) for k in non_finite_tensors(v, f"{prefix}[{i}]")]
    return []


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        # The trained state only: callback states legitimately hold infinities (ModelCheckpoint's kth_value).
        bad = non_finite_tensors({k: checkpoint[k] for k in ("state_dict", "optimizer_states") if k in checkpoint})
        if bad:
            raise CheckpointError(f"refusing to write {path}: non-finite values in {', '.join(bad[:5])}"
                                  f"{' ...' if len(bad) > 5 else ''} (step {checkpoint.get('global_step')})")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: torch.save(checkpoint, f))


def read_checkpoint(path: Path) -> dict | None:
    """The checkpoint (memory-mapped, so cheap even for GB files) or None when it does not load."""
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as e:   # truncated zip, zero bytes, garbage: all mean "not usable"
        log.debug("%s does not load: %s", path, e)
        return None


def step_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Step checkpoints (``step<N>.ckpt``, ``milestone-step<N>.ckpt``), newest first."""
    found = [(int(m.group(1)), p) for p in ckpt_dir.glob("*.ckpt") if (m := STEP.search(p.name))]
    return [p for _, p in sorted(found, key=lambda t: (-t[0], t[1].name.startswith("milestone")))]


def resume_path(ckpt_dir: Path) -> Path | None:
    """``last.ckpt`` if it loads, else the newest intact step checkpoint (warning names both), else None."""
    last = ckpt_dir / "last.ckpt"
    if last.exists() and read_checkpoint(last) is not None:
        return last
    for p in step_checkpoints(ckpt_dir):
        if read_checkpoint(p) is not None:
            if last.exists():
                msg = f"{last} is unreadable (truncated or corrupt); resuming from {p}, the newest intact checkpoint"
                log.warning(msg)
                print(f"[vqformer] WARNING: {msg}")
            return p
    if last.exists():
        raise CheckpointError(f"{last} is unreadable and no intact step checkpoint exists in {ckpt_dir}; "
                              "delete the directory (or set resume=false) to start over")
    return None


def last_finite_checkpoint(ckpt_dir: Path) -> str:
    """For messages: the checkpoint a resume would use (every written checkpoint is finite)."""
    try:
        p = resume_path(ckpt_dir)
    except CheckpointError:
        p = None
    if p is None:
        return "none (no checkpoint was written yet)"
    ckpt = read_checkpoint(p)
    return f"{p} (step {ckpt.get('global_step')})" if ckpt else str(p)


def check_writable(ckpt_dir: Path) -> None:
    """Write, fsync and delete a probe file in ``ckpt_dir``; raise naming the directory.

    A directory made only for the probe is removed again (a run that stops later, e.g. at a missing
    download, leaves no empty checkpoint directory behind).
    """
    made = [p for p in (ckpt_dir, *ckpt_dir.parents) if not os.path.lexists(p)]
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=ckpt_dir)
        try:
            os.write(fd, b"probe")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise CheckpointError(f"checkpoint directory {ckpt_dir} is not writable ({e.strerror or e}): "
                              "fix its permissions, quota or mount before training") from None
    remove_stale_temporaries(ckpt_dir)
    for p in made:   # innermost first; one that another process has filled or removed meanwhile stays
        try:
            p.rmdir()
        except OSError:
            break
