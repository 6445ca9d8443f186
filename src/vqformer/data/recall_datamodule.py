"""Recall data modules: batches ``{"inputs", "targets", "mask", "segment"}`` from synthetic segments.

Spec: ``docs/ovq.md`` §2.1–2.2. As in Zoology every batch comes from a single segment (one
sequence length and number of pairs), so segments of different lengths are never padded together.
``mask`` marks the scored (query) positions, so the LM loss machinery trains on them only; ``segment`` is
the index of the batch's segment in ``segment_names`` (per-length evaluation). The training batches of all
segments are visited in a seeded random order, the same every epoch.
"""
from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..progress import progress
from .lm_datamodule import shard_eval_loader, trainer_rank
from .mqar import IGNORE, MQARSegment, check_segment, load_segment


class SegmentBatches(Dataset):
    """Whole batches cut from segments of (inputs, labels) arrays; item i is one batch dict."""

    def __init__(self, segments: list[tuple[np.ndarray, np.ndarray]], batch_size: int, order_seed: int | None,
                 rank: int = 0, world_size: int = 1):
        self.items = [(s, b0) for s, (x, _) in enumerate(segments) for b0 in range(0, len(x), batch_size)]
        if order_seed is not None:
            perm = np.random.default_rng(order_seed).permutation(len(self.items))
            self.items = [self.items[i] for i in perm]
        # Under DDP rank r trains on batches r, r + world, ... of the common order, as many on every rank.
        self.items = self.items[rank::world_size][: len(self.items) // world_size]
        self.segments, self.batch_size = segments, batch_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s, b0 = self.items[i]
        x, y = self.segments[s]
        x, y = torch.from_numpy(x[b0:b0 + self.batch_size]), torch.from_numpy(y[b0:b0 + self.batch_size])
        mask = y != IGNORE
        return {"inputs": x, "targets": torch.where(mask, y, torch.zeros_like(y)), "mask": mask,
                "segment": torch.tensor(s)}


def _segments(specs, key: str) -> list[MQARSegment]:
    if not specs:
        raise ValueError(f"{key} must list at least one segment")
    out = []
    for i, sp in enumerate(specs):
        sp = dict(sp)
        unknown = set(sp) - {"input_seq_len", "num_kv_pairs", "num_examples"}
        if unknown:
            raise ValueError(f"{key}[{i}]: unknown field(s) {sorted(unknown)}")
        out.append(MQARSegment(**sp))
    return out


class MQARDataModule(L.LightningDataModule):
    """MQAR train/test mixes (lists of ``{input_seq_len, num_kv_pairs, num_examples}``).

    ``limit_eval_bytes`` (set by ``debug=fast``) caps the tokens of each test segment; null uses all.
    """

    def __init__(self, train_segments, test_segments, vocab_size: int = 8192, batch_size: int = 64,
                 eval_batch_size: int | None = None, seed: int = 0, root: str | None = None,
                 power_a: float = 0.01, num_passes: int = 1, random_non_queries: bool = False, query_gap: int = 0,
                 limit_eval_bytes: int | None = None, num_workers: int = 0, **_ignored):
        super().__init__()
        self.train_specs = _segments(train_segments, "data.train_segments")
        self.test_specs = _segments(test_segments, "data.test_segments")
        for key, specs in (("data.train_segments", self.train_specs), ("data.test_segments", self.test_specs)):
            for i, sp in enumerate(specs):
                check_segment(sp, vocab_size, num_passes, f"{key}[{i}]", query_gap)
        for name, val in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size or batch_size)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"data.{name}={val!r} must be a positive integer")
        self.vocab_size, self.batch_size = vocab_size, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.seed, self.root, self.limit_eval_bytes, self.num_workers = seed, root, limit_eval_bytes, num_workers
        self.gen_kw = dict(vocab_size=vocab_size, seed=seed, power_a=power_a, num_passes=num_passes,
                           random_non_queries=random_non_queries, query_gap=query_gap)
        self._train = self._test = None

    @property
    def segment_names(self) -> list[str]:
        return [s.name for s in self.test_specs]

    def _load(self, split: str, specs, verify: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
        return [load_segment(self.root, sp, split, i, verify=verify, **self.gen_kw)
                for i, sp in progress(list(enumerate(specs)), desc=f"MQAR {split} segments", unit="segment")]

    def prepare_data(self) -> None:
        # Local rank 0 only: the cached segments are re-hashed here, once, and read unchecked in setup().
        self._load("train", self.train_specs, verify=True)
        self._load("test", self.test_specs, verify=True)

    def setup(self, stage: str | None = None) -> None:
        if self._train is None:
            self._train = self._load("train", self.train_specs)
            test = self._load("test", self.test_specs)
            if self.limit_eval_bytes:
                cut = lambda x: x[: max(1, self.limit_eval_bytes // x.shape[1])]
                test = [(cut(x), cut(y)) for x, y in test]
            self._test = test

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(SegmentBatches(self._train, self.batch_size, self.seed, *trainer_rank(self)),
                          batch_size=None, shuffle=False, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        # Under DDP each rank scores its shard of the test batches, padded with batches of nothing to score.
        self.setup()
        loader = DataLoader(SegmentBatches(self._test, self.eval_batch_size, None), batch_size=None, shuffle=False,
                            num_workers=self.num_workers)
        return shard_eval_loader(loader, *trainer_rank(self))

    test_dataloader = val_dataloader


__all__ = ["MQARDataModule", "SegmentBatches"]
