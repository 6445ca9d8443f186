"""Byte-level language-modelling data module (docs/transformer_vq.md §4.3).

Vocabulary: 0 = pad, 1 = EOS, 2 = unk, byte b -> token b + 3 (259 ids).
Every sequence, training or eval, starts with an EOS input and its targets are
the next T bytes: inputs = [EOS] + targets[:-1], even mid-document, as in the
official code.

Training order. One epoch is `(n - T + 1) // T` non-overlapping windows at
offsets `k*T + shift`, visited in a random permutation; `shift` (in [0, T))
and the permutation are drawn from a generator seeded by `(seed, epoch)`, so
each epoch sees a different alignment of the corpus, and the same seed gives
the same stream. The train loader is stateful (`state_dict` /
`load_state_dict`), so Lightning restores the exact position, mid-epoch
included, when resuming from a checkpoint.

Evaluation: the split (validation optionally truncated to `limit_eval_bytes`)
is cut in order into consecutive sequences; the last one is padded with
targets = PAD and mask False, so every byte is scored exactly once.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .bytes_corpus import CORPORA, GENERATED_DEFAULT_BYTES, GENERATED_MIN_BYTES, SPLITS, prepare, prepared_splits

__all__ = [
    "BYTE_OFFSET",
    "EOS",
    "PAD",
    "UNK",
    "VOCAB_SIZE",
    "ByteLMDataModule",
    "EvalSequenceDataset",
    "RankShard",
    "ResumableDataLoader",
    "TrainWindowDataset",
    "WindowSampler",
]

PAD, EOS, UNK = 0, 1, 2
BYTE_OFFSET = 3
VOCAB_SIZE = 256 + BYTE_OFFSET


class _LazyMemmap:
    """A read-only memmap (uint8 bytes by default, or token ids of `dtype`) opened on first use in each process.

    Pickling only the path keeps DataLoader workers from copying the corpus.
    """

    def __init__(self, path: str | os.PathLike, dtype=np.uint8):
        self.path = str(path)
        self.dtype = np.dtype(dtype)
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            # np.memmap refuses empty files, which tiny corpora can produce.
            empty = os.path.getsize(self.path) == 0
            self._array = np.zeros(0, self.dtype) if empty else np.memmap(self.path, dtype=self.dtype, mode="r")
        return self._array

    def __len__(self) -> int:
        return len(self.array)

    def __getstate__(self) -> dict:
        return {"path": self.path, "dtype": self.dtype, "_array": None}


def _example(raw: np.ndarray, length: int, offset: int = BYTE_OFFSET) -> dict[str, torch.Tensor]:
    """Build inputs/targets/mask of `length` from up to `length` raw values (shorter is padded).

    Token id = raw value + `offset` (+3 for bytes; 0 for files that already hold token ids).
    """
    n = len(raw)
    targets = torch.full((length,), PAD, dtype=torch.long)
    targets[:n] = torch.from_numpy(raw.astype(np.int64)) + offset
    inputs = torch.empty_like(targets)
    inputs[0] = EOS
    inputs[1:] = targets[:-1]
    mask = torch.zeros(length, dtype=torch.bool)
    mask[:n] = True
    return {"inputs": inputs, "targets": targets, "mask": mask}


class TrainWindowDataset(Dataset):
    """Map-style dataset indexed by byte offset: item `s` is the window [s, s + T)."""

    def __init__(self, path: str | os.PathLike, sequence_len: int, dtype=np.uint8, offset: int = BYTE_OFFSET):
        self.tokens = _LazyMemmap(path, dtype)
        self.sequence_len = sequence_len
        self.offset = offset

    def __len__(self) -> int:
        return max(0, len(self.tokens) - self.sequence_len + 1)

    def __getitem__(self, start: int) -> dict[str, torch.Tensor]:
        if not 0 <= start < len(self):
            raise IndexError(f"window start {start} out of range [0, {len(self)})")
        return _example(self.tokens.array[start : start + self.sequence_len], self.sequence_len, self.offset)


class EvalSequenceDataset(Dataset):
    """The first `limit` bytes of a split as consecutive length-T sequences, the last one padded."""

    def __init__(self, path: str | os.PathLike, sequence_len: int, limit_bytes: int | None = None,
                 dtype=np.uint8, offset: int = BYTE_OFFSET):
        self.tokens = _LazyMemmap(path, dtype)
        self.sequence_len = sequence_len
        self.offset = offset
        self.n_bytes = len(self.tokens) if limit_bytes is None else min(limit_bytes, len(self.tokens))

    def __len__(self) -> int:
        return math.ceil(self.n_bytes / self.sequence_len)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"sequence {i} out of range [0, {len(self)})")
        start = i * self.sequence_len
        end = min(start + self.sequence_len, self.n_bytes)
        return _example(self.tokens.array[start:end], self.sequence_len, self.offset)


def blank_mask(item: dict) -> dict:
    """The same example with nothing to score (mask all False): padding of a rank's evaluation shard."""
    return {**item, "mask": torch.zeros_like(item["mask"])}


class RankShard(Dataset):
    """Rank ``rank``'s share of an evaluation set under DDP: items ``rank, rank + world, ...``.

    Every rank gets ``ceil(n / world)`` items, the missing ones ``blank(item)`` (weight zero), so all ranks
    run the same number of batches and the sums of every rank add up to the single-process sums exactly
    (Lightning's DistributedSampler would instead repeat items, counting them twice).
    """

    def __init__(self, dataset: Dataset, rank: int, world_size: int, blank=blank_mask):
        self.dataset, self.rank, self.world_size, self.blank = dataset, rank, world_size, blank

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.world_size)

    def __getitem__(self, i: int):
        j = i * self.world_size + self.rank
        if j < len(self.dataset):
            return self.dataset[j]
        return self.blank(self.dataset[len(self.dataset) - 1])


def shard_eval_loader(loader: DataLoader, rank: int, world_size: int, blank=blank_mask) -> DataLoader:
    """``loader`` over this rank's ``RankShard`` (itself when there is one process)."""
    if world_size == 1:
        return loader
    return DataLoader(RankShard(loader.dataset, rank, world_size, blank), batch_size=loader.batch_size,
                      shuffle=False, collate_fn=loader.collate_fn, num_workers=loader.num_workers,
                      persistent_workers=loader.persistent_workers)


def trainer_rank(datamodule: L.LightningDataModule) -> tuple[int, int]:
    """(global rank, world size) of the attached trainer, (0, 1) without one."""
    trainer = datamodule.trainer
    return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)


class WindowSampler(Sampler[int]):
    """Yields window start offsets for one epoch; see the module docstring for the scheme."""

    def __init__(self, n_bytes: int, sequence_len: int, seed: int, rank: int = 0, world_size: int = 1,
                 shift: bool = True):
        if n_bytes < sequence_len:
            raise ValueError(f"cannot cut windows of {sequence_len} bytes from {n_bytes} bytes")
        self.sequence_len = sequence_len
        self.seed = seed
        self.n_windows = max(1, (n_bytes - sequence_len + 1) // sequence_len)
        # Largest shift that keeps the last window inside the corpus (T - 1 unless the corpus is tiny).
        # shift=False keeps windows aligned to multiples of T (image corpora: one window = one image).
        self.max_shift = min(sequence_len - 1, n_bytes - self.n_windows * sequence_len) if shift else 0
        # Under DDP every rank draws the same epoch order and takes every world_size-th window of it, so
        # the sampler (and its exact resume) stays ours instead of Lightning's DistributedSampler.
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._skip = 0
        # Epoch and skip of the iteration in progress, for the loader's state_dict.
        self.active_epoch = 0
        self.active_skip = 0

    def __len__(self) -> int:
        return self.n_windows // self.world_size

    def set_epoch(self, epoch: int) -> None:
        # Lightning calls this after restoring a mid-epoch state for the same epoch: keep the skip then.
        if epoch != self.epoch:
            self.epoch = epoch
            self._skip = 0

    def resume(self, epoch: int, skip: int) -> None:
        self.epoch, self._skip = epoch, skip

    def offsets(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        shift = int(rng.integers(0, self.max_shift + 1))
        order = rng.permutation(self.n_windows)[self.rank::self.world_size][: len(self)]
        return order * self.sequence_len + shift

    def __iter__(self) -> Iterator[int]:
        # The epoch is read when iteration starts, not at construction: with workers the
        # DataLoader pulls indices as soon as it is iterated, which may precede set_epoch.
        epoch, skip = self.epoch, self._skip
        self._skip = 0
        self.active_epoch, self.active_skip = epoch, skip
        for start in self.offsets(epoch)[skip:].tolist():
            yield start


class ResumableDataLoader(DataLoader):
    """A DataLoader over a `WindowSampler` that Lightning checkpoints and restores mid-epoch.

    Lightning saves `state_dict()` of stateful train loaders in the checkpoint and
    calls `load_state_dict()` before iterating again. With a known length, Lightning
    does not prefetch, so the count of yielded batches equals the batches trained on.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._yielded = 0

    def _window_sampler(self) -> WindowSampler | None:
        sampler = self.batch_sampler.sampler if self.batch_sampler is not None else self.sampler
        # Lightning's own distributed sampler would replace ours (config.check_distributed refuses it).
        return sampler if isinstance(sampler, WindowSampler) else None

    def __iter__(self):
        self._yielded = 0
        return self._counting(super().__iter__())

    def _counting(self, iterator):
        for batch in iterator:
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        sampler = self._window_sampler()
        if sampler is None:
            return {}
        return {
            "epoch": sampler.active_epoch,
            "windows_done": sampler.active_skip + self._yielded * self.batch_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler = self._window_sampler()
        if sampler is None or not state:
            return
        epoch, done = int(state["epoch"]), int(state["windows_done"])
        if done >= len(self) * self.batch_size:
            epoch, done = epoch + 1, 0
        sampler.resume(epoch, done)


def _positive_int(key: str, value, allow_none: bool = False, minimum: int = 1) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        if allow_none:
            kind += " or null"
        raise ValueError(f"data.{key} must be {kind}, got {value!r}")


class ByteLMDataModule(L.LightningDataModule):
    """Byte-level LM data for enwik8, wiki_sample and the generated corpus.

    Subclasses for other corpora (token ids, images) override the class attributes and the `_check_corpus`,
    `_prepare`, `_prepared_paths` hooks; everything else (windows, exact resume, eval cut) is shared.
    """

    PAD, EOS, UNK = PAD, EOS, UNK
    token_dtype = np.uint8          # dtype of the split files
    token_offset = BYTE_OFFSET      # added to stored values to get token ids
    shift_windows = True            # random per-epoch alignment of training windows

    def __init__(
        self,
        name: str,
        root: str,
        sequence_len: int,
        batch_size: int,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        n_bytes: int | None = None,
        limit_eval_bytes: int | None = None,
        eval_sequence_len: int | None = None,
    ):
        super().__init__()
        self._check_corpus(name, n_bytes)
        if not isinstance(root, (str, os.PathLike)) or not str(root):
            raise ValueError(f"data.root must be a non-empty path, got {root!r}")
        _positive_int("sequence_len", sequence_len)
        _positive_int("batch_size", batch_size)
        _positive_int("eval_batch_size", eval_batch_size, allow_none=True)
        _positive_int("num_workers", num_workers, minimum=0)
        _positive_int("seed", seed, minimum=0)
        _positive_int("limit_eval_bytes", limit_eval_bytes, allow_none=True)
        _positive_int("eval_sequence_len", eval_sequence_len, allow_none=True)

        self.name = name
        self.root = str(root)
        self.sequence_len = int(sequence_len)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.limit_eval_bytes = limit_eval_bytes
        self.eval_sequence_len = int(eval_sequence_len or sequence_len)
        # The generated corpus is fixed (seed 0) so that changing the training seed does not change the data.
        self._corpus_kw = {"n_bytes": int(n_bytes or GENERATED_DEFAULT_BYTES), "seed": 0} if name == "generated" else {}
        self._paths: dict[str, Path] | None = None
        self._prepared = False

    @staticmethod
    def _check_corpus(name: str, n_bytes: int | None) -> None:
        if name not in CORPORA:
            raise ValueError(f"data.name: unknown dataset {name!r}; choose one of {list(CORPORA)}")
        if name == "generated":
            _positive_int("n_bytes", n_bytes, allow_none=True, minimum=GENERATED_MIN_BYTES)
        elif n_bytes is not None:
            raise ValueError(f"data.n_bytes only applies to data.name=generated, got {n_bytes!r} for {name!r}")

    def _prepare(self) -> None:
        prepare(self.name, self.root, verify=True, **self._corpus_kw)

    def _prepared_paths(self) -> dict[str, Path]:
        return prepared_splits(self.name, self.root, **self._corpus_kw)

    def _n_tokens(self, path: str | os.PathLike) -> int:
        return os.path.getsize(path) // np.dtype(self.token_dtype).itemsize

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    def prepare_data(self) -> None:
        """Prepare the corpus if needed and re-hash its files against their manifest (docs/data_integrity.md).

        Runs on local rank 0 only; Lightning calls it again in fit/validate/test after the runner did,
        so the hashing is done once per data module.
        """
        if not self._prepared:
            self._prepare()
            self._prepared = True

    def setup(self, stage: str | None = None) -> None:
        if self._paths is not None:
            return
        paths = self._prepared_paths()
        n_train = self._n_tokens(paths["train"])
        if n_train < self.sequence_len:
            raise ValueError(f"data.sequence_len={self.sequence_len} exceeds the {n_train}-byte train split of {self.name}")
        n_windows = WindowSampler(n_train, self.sequence_len, self.seed, shift=self.shift_windows).n_windows
        if n_windows < self.batch_size:
            raise ValueError(
                f"data.batch_size={self.batch_size} exceeds the {n_windows} training windows of "
                f"{self.sequence_len} bytes in {self.name}; lower data.batch_size or data.sequence_len"
            )
        self._paths = paths

    def _require_setup(self) -> dict[str, Path]:
        if self._paths is None:
            raise RuntimeError("ByteLMDataModule: call prepare_data() and setup() first")
        return self._paths

    def _split_path(self, split: str) -> Path:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
        return self._require_setup()[split]

    def split_tokens(self, split: str) -> np.ndarray:
        """The stored values of a split as a read-only memmap (raw bytes for byte corpora, no +3 offset)."""
        return _LazyMemmap(self._split_path(split), self.token_dtype).array

    def n_bytes(self, split: str) -> int:
        return os.path.getsize(self._split_path(split))

    def n_tokens(self, split: str) -> int:
        return self._n_tokens(self._split_path(split))

    def _loader_kw(self) -> dict:
        return {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0}

    def train_dataloader(self) -> ResumableDataLoader:
        path = self._split_path("train")
        rank, world = trainer_rank(self)
        sampler = WindowSampler(self._n_tokens(path), self.sequence_len, self.seed, rank, world,
                                shift=self.shift_windows)
        return ResumableDataLoader(
            TrainWindowDataset(path, self.sequence_len, self.token_dtype, self.token_offset),
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            **self._loader_kw(),
        )

    def eval_dataloader(
        self,
        split: str,
        sequence_len: int | None = None,
        limit_bytes: int | None = None,
        batch_size: int | None = None,
    ) -> DataLoader:
        """In-order loader over a whole split (or its first `limit_bytes`), for the evaluation entry point."""
        dataset = EvalSequenceDataset(self._split_path(split), sequence_len or self.eval_sequence_len, limit_bytes,
                                      self.token_dtype, self.token_offset)
        return DataLoader(dataset, batch_size=batch_size or self.eval_batch_size, shuffle=False, **self._loader_kw())

    def eval_tokens(self, split: str) -> int:
        """Tokens the evaluation loader of ``split`` scores: validation's first ``limit_eval_bytes``, all of test."""
        n = self.n_tokens(split)
        return min(n, self.limit_eval_bytes) if split == "validation" and self.limit_eval_bytes else n

    # Under DDP each rank scores its shard; the metrics sum over ranks (lit/metrics.py TokenNLL).
    def val_dataloader(self) -> DataLoader:
        return shard_eval_loader(self.eval_dataloader("validation", limit_bytes=self.limit_eval_bytes),
                                 *trainer_rank(self))

    def test_dataloader(self) -> DataLoader:
        # The test split is never truncated: limit_eval_bytes only speeds up validation during training.
        return shard_eval_loader(self.eval_dataloader("test"), *trainer_rank(self))
