"""The LRA task table (§4.2 of ``docs/longvq.md``) and how each task's splits are built.

``build_task(task, root, source, max_len, generator)`` returns ``{split: {"inputs", "lengths", "labels"}}``
with inputs right-padded to ``max_len`` (tokens uint16, pixels uint8). Sources: ``generated`` (offline
generators: ListOps, Pathfinder, the Fashion-MNIST / synthetic image stand-in) and ``release`` (the official
files under ``<root>/lra/raw``; without them a ``DataUnavailableError`` says what to download and where).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import listops

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TaskSpec:
    kind: str                       # token | real | pair (two token documents)
    vocab_size: int                 # token tasks (real: 1)
    n_classes: int
    max_len: int
    sources: tuple
    channels: int = 1
    mean: tuple = (0.5,)
    std: tuple = (0.5,)


BYTES_VOCAB = 259                   # 0 pad, 1 eos (unused), 2 unk, byte b -> b + 3 (the LM modules' convention)
TASKS = {
    "listops": TaskSpec("token", listops.VOCAB_SIZE, 10, 2000, ("generated", "release")),
    "text": TaskSpec("token", BYTES_VOCAB, 2, 4000, ("release",)),
    "retrieval": TaskSpec("pair", BYTES_VOCAB, 2, 4000, ("release",)),
    "image": TaskSpec("real", 1, 10, 1024, ("release", "generated"), mean=(0.48,), std=(0.24,)),
    "scifar": TaskSpec("real", 1, 10, 1024, ("release",), channels=3, mean=(0.4914, 0.4822, 0.4465),
                       std=(0.247, 0.243, 0.261)),
    "pathfinder32": TaskSpec("real", 1, 2, 1024, ("generated", "release")),
    "pathx": TaskSpec("real", 1, 2, 16384, ("generated", "release")),
}


def _listops(root: str, source: str, max_len: int, gen: dict) -> dict:
    if source == "generated":
        folder = listops.prepare_generated(root, **gen)
    else:
        from .sources import listops_release_dir
        folder = listops_release_dir(root)
    out = {}
    for s in SPLITS:
        sources, labels = listops.read_tsv(Path(folder) / f"basic_{s}.tsv")
        tokens, lengths = listops.encode(sources, max_len)
        out[s] = {"inputs": tokens, "lengths": lengths, "labels": np.asarray(labels, np.int64)}
    return out


def build_task(task: str, root: str, source: str, max_len: int, generator: dict | None = None) -> dict:
    gen = dict(generator or {})
    if task == "listops":
        return _listops(root, source, max_len, gen)
    if task in ("pathfinder32", "pathx"):
        from .pathfinder import build_pathfinder
        return build_pathfinder(task, root, source, gen)
    from . import sources
    return sources.build(task, root, source, max_len, gen)


__all__ = ["SPLITS", "TASKS", "TaskSpec", "build_task"]
