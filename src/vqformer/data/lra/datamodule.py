"""Classification data module for the Long Range Arena tasks and their offline stand-ins.

Spec: ``docs/longvq.md`` §4.2 (lengths, vocabularies, splits per task). Each task's
splits are built once into ``<root>/lra/cache/<task>-<source>-<hash>/{train,val,test}.npz`` (atomic writes;
the hash covers the source parameters) holding ``inputs`` (tokens or pixels, right-padded), ``lengths`` and
``labels``, with ``meta.json`` (written last) recording each file's size and sha256; ``prepare_data`` re-hashes
them when a run starts and rebuilds damaged ones from the source (docs/data_integrity.md).
Batches are ``{"inputs": [B,T] | [B,T,C] | [B,2,T], "mask": bool like inputs without C, "label": [B]}``:
tokens as int64, pixels as float32 normalized per task.

Training order: a permutation of the training examples drawn from ``(seed, epoch)`` by the LM module's
``WindowSampler`` with windows of one example, so the ``ResumableDataLoader`` restores the exact position
mid-epoch on resume. ``limit_eval_bytes`` is accepted (``debug=fast`` sets it) and ignored.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..files import (DataIntegrityWarning, DataUnavailableError, atomic_path, atomic_write_bytes, check_prepared,
                     ensure_writable, sha256_file, split_entries)
from ..lm_datamodule import ResumableDataLoader, WindowSampler, _positive_int, shard_eval_loader, trainer_rank
from .tasks import SPLITS, TASKS, build_task

__all__ = ["LRADataModule", "ClassificationDataset"]

CACHE_META = "meta.json"
CACHE_VERSION = 1


class ClassificationDataset(Dataset):
    def __init__(self, arrays: dict, spec):
        self.inputs, self.lengths, self.labels = arrays["inputs"], arrays["lengths"], arrays["labels"]
        self.spec = spec

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        x, n = self.inputs[i], self.lengths[i]
        T = x.shape[1] if self.spec.kind == "pair" else x.shape[0]
        mask = torch.arange(T) < torch.as_tensor(n)[..., None]           # [T], or [2,T] for pairs
        if self.spec.kind == "real":                                     # [T] or [T,C] pixels in 0..255
            xt = (torch.from_numpy(x.astype(np.float32)) / 255.0 - torch.tensor(self.spec.mean)) / torch.tensor(
                self.spec.std)
        else:
            xt = torch.from_numpy(x.astype(np.int64))
        return {"inputs": xt, "mask": mask, "label": torch.tensor(int(self.labels[i]))}


IGNORE_LABEL = -100   # lit/metrics.py's: cross entropy and accuracy skip it


def _blank_label(item: dict) -> dict:
    return {**item, "label": torch.tensor(IGNORE_LABEL)}


class LRADataModule(L.LightningDataModule):
    def __init__(self, task: str, root: str, batch_size: int, eval_batch_size: int | None = None,
                 num_workers: int = 0, seed: int = 0, source: str = "generated", max_len: int | None = None,
                 generator: dict | None = None, limit_train_examples: int | None = None,
                 limit_eval_examples: int | None = None, limit_eval_bytes: int | None = None):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"data.task={task!r} is unknown; choose one of {sorted(TASKS)}")
        spec = TASKS[task]
        if source not in spec.sources:
            raise ValueError(f"data.source={source!r} is invalid for data.task={task!r}: choose one of {list(spec.sources)}")
        if not isinstance(root, (str, Path)) or not str(root):
            raise ValueError(f"data.root must be a non-empty path, got {root!r}")
        _positive_int("batch_size", batch_size)
        _positive_int("eval_batch_size", eval_batch_size, allow_none=True)
        _positive_int("num_workers", num_workers, minimum=0)
        _positive_int("seed", seed, minimum=0)
        _positive_int("max_len", max_len, allow_none=True)
        _positive_int("limit_train_examples", limit_train_examples, allow_none=True)
        _positive_int("limit_eval_examples", limit_eval_examples, allow_none=True)
        self.task, self.spec, self.root, self.source = task, spec, str(root), source
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size or batch_size)
        self.num_workers, self.seed = int(num_workers), int(seed)
        self.max_len = int(max_len or spec.max_len)
        self.generator = dict(generator or {})
        self.limit_train, self.limit_eval = limit_train_examples, limit_eval_examples
        self._data: dict | None = None
        self._prepared = False

    @property
    def cache_dir(self) -> Path:
        key = json.dumps({"source": self.source, "max_len": self.max_len, "generator": self.generator}, sort_keys=True)
        return Path(self.root) / "lra" / "cache" / f"{self.task}-{self.source}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"

    def prepare_data(self) -> None:
        """Build the cached splits if needed and re-hash them against the cache's manifest, once per data module.

        Damaged files are rebuilt from the source; without it a DataIntegrityError names them. A cache written
        before manifests existed is rebuilt when the source is there, else hashed and recorded as it is, with a
        warning (it cannot be checked against anything older).
        """
        if self._prepared:
            return
        out, files = self.cache_dir, {s: self.cache_dir / f"{s}.npz" for s in SPLITS}
        # Through JSON so that the recorded and the live description compare equal (tuples become lists).
        source = json.loads(json.dumps({"task": self.task, "source": self.source, "max_len": self.max_len,
                                        "generator": self.generator}, sort_keys=True))
        built: dict = {}

        def locate() -> str | None:
            try:
                built["splits"] = build_task(self.task, self.root, self.source, self.max_len, self.generator)
            except DataUnavailableError:
                return None
            return f"the {self.source} source of LRA {self.task} (under {self.root})"

        if not (out / CACHE_META).exists() and all(f.is_file() for f in files.values()):
            if locate() is None:
                warnings.warn(f"{out}: a cache written without a manifest, and its source is not available: its "
                              f"files are hashed and recorded as they are, unverified", DataIntegrityWarning, 2)
                ensure_writable(out, f"cannot record the hashes of {out}", "Make it writable and run again.")
                self._write_meta(out, files, source)
            else:
                warnings.warn(f"{out}: a cache written without a manifest: built again from its source",
                              DataIntegrityWarning, 2)
        fix = (f"delete {out} and run again with the task's source files in place under {Path(self.root) / 'lra'} "
               f"(the run then names any that are missing)")
        if check_prepared(out / CACHE_META, CACHE_VERSION, source, lambda meta: split_entries(meta, files), locate,
                          fix) is None:
            splits = built.get("splits") or build_task(self.task, self.root, self.source, self.max_len,
                                                       self.generator)
            (out / CACHE_META).unlink(missing_ok=True)   # never vouch for files being replaced
            for s in SPLITS:
                with atomic_path(files[s]) as tmp, open(tmp, "wb") as f:
                    np.savez(f, **splits[s])
            self._write_meta(out, files, source)
        self._prepared = True

    @staticmethod
    def _write_meta(out: Path, files: dict[str, Path], source: dict) -> None:
        splits = {s: {"file": p.name, "n_bytes": p.stat().st_size, "sha256": sha256_file(p)} for s, p in files.items()}
        meta = {"version": CACHE_VERSION, "source": source, "splits": splits}
        atomic_write_bytes(out / CACHE_META, (json.dumps(meta, indent=2) + "\n").encode())

    def setup(self, stage: str | None = None) -> None:
        if self._data is not None:
            return
        data = {}
        for s in SPLITS:
            with np.load(self.cache_dir / f"{s}.npz") as z:
                arrays = {k: z[k] for k in ("inputs", "lengths", "labels")}
            limit = self.limit_train if s == "train" else self.limit_eval
            if limit:
                arrays = {k: v[:limit] for k, v in arrays.items()}
            data[s] = ClassificationDataset(arrays, self.spec)
        if len(data["train"]) < self.batch_size:
            raise ValueError(f"data.batch_size={self.batch_size} exceeds the {len(data['train'])} training examples")
        self._data = data

    def dataset(self, split: str) -> ClassificationDataset:
        if self._data is None:
            raise RuntimeError("LRADataModule: call prepare_data() and setup() first")
        return self._data[split]

    def _kw(self) -> dict:
        return {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0}

    def train_dataloader(self) -> ResumableDataLoader:
        ds = self.dataset("train")
        rank, world = trainer_rank(self)
        # Windows of one example over len(ds) "bytes": a seeded per-epoch permutation with exact resume.
        sampler = WindowSampler(len(ds), 1, self.seed, rank, world)
        return ResumableDataLoader(ds, batch_size=self.batch_size, sampler=sampler, drop_last=True, **self._kw())

    # Under DDP each rank scores its shard, padded with examples labelled IGNORE_LABEL (not counted).
    def _eval_loader(self, split: str) -> DataLoader:
        loader = DataLoader(self.dataset(split), batch_size=self.eval_batch_size, shuffle=False, **self._kw())
        return shard_eval_loader(loader, *trainer_rank(self), blank=_blank_label)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
