"""Schemas of the ``data`` group (conf/data/*.yaml), one per data-module kind.

Each option starts with ``defaults: [schema_<kind>, _self_]``; the fields are exactly the data module's
constructor arguments (``hydra.utils.instantiate(cfg.data)`` passes them all), so a misspelt or mistyped
key fails at composition. The schema class names its kind: ``kind_of(cfg.data)`` finds it from the node's
type (or, for an untyped node, from its exact ``_target_``) and gives the corpus registry and vocabulary
the cross-field rules need. The data layer itself stays free of config code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf

from .base import ConfigError, fail, nonneg_int, one_of, positive_int


@dataclass
class _Common:
    root: str = "data"                          # data directory (paths.data_dir); prepared files live under it
    batch_size: int = 8                         # training sequences per batch (per device); >= 1
    eval_batch_size: Optional[int] = None       # null: batch_size; else >= 1
    num_workers: int = 0                        # DataLoader worker processes; >= 0
    seed: int = 0                               # sampling order seed (the run's seed); >= 0
    limit_eval_bytes: Optional[int] = None      # cap on evaluated bytes/tokens during training; null: all; >= 1

    def _check(self, d) -> None:
        if not str(d.root):
            fail("data.root", d.root, "must be a non-empty path")
        positive_int("data.batch_size", d.batch_size)
        positive_int("data.eval_batch_size", d.eval_batch_size, optional=True)
        nonneg_int("data.num_workers", d.num_workers)
        nonneg_int("data.seed", d.seed)
        positive_int("data.limit_eval_bytes", d.limit_eval_bytes, optional=True)

    def registry(self) -> dict:
        return {}

    def data_vocab(self, d) -> Optional[int]:
        """Tokens the data can produce (the model's vocabulary must cover them); None: checked by the task."""
        return None

    def validate(self, d) -> None:
        self._check(d)
        known = self.registry()
        if known and d.name not in known:
            fail("data.name", d.name, f"choose one of {sorted(known)}")


@dataclass
class BytesData(_Common):
    _target_: str = "vqformer.data.lm_datamodule.ByteLMDataModule"
    name: str = "wiki_sample"                   # a corpus of vqformer.data.bytes_corpus.CORPORA
    sequence_len: int = 256                     # tokens per training sequence (top-level sequence_len)
    n_bytes: Optional[int] = None               # generated corpus size; null: the corpus's own; >= 1
    eval_sequence_len: Optional[int] = None     # null: sequence_len; else evaluation sequence length >= 1

    def registry(self) -> dict:
        from ..data.bytes_corpus import CORPORA
        return CORPORA

    def data_vocab(self, d) -> int:
        from ..data.lm_datamodule import VOCAB_SIZE
        return VOCAB_SIZE

    def validate(self, d) -> None:
        super().validate(d)
        positive_int("data.sequence_len", d.sequence_len)
        positive_int("data.n_bytes", d.n_bytes, optional=True)
        positive_int("data.eval_sequence_len", d.eval_sequence_len, optional=True)


@dataclass
class ByteFileData(BytesData):
    _target_: str = "vqformer.data.byte_file.ByteFileDataModule"
    name: str = "byte_file"                     # byte_file
    path: Optional[str] = None                  # the file to train on; required
    split: List[float] = field(default_factory=lambda: [0.9, 0.05, 0.05])   # train / validation / test fractions, each >= 0, sum 1
    sha256: Optional[str] = None                # pins the file's content (64 hex digits); null: filled in at run start

    def validate(self, d) -> None:
        super().validate(d)
        from ..data.byte_file import split_fractions
        if not d.path:
            raise ConfigError("data.path is required for data=byte_file: the file to train on "
                              "(data=byte_file data.path=/some/file)")
        try:
            split_fractions(d.split)
        except ValueError as e:
            fail("data.split", list(d.split), str(e).split(": ", 1)[-1])


@dataclass
class ImageData(BytesData):
    _target_: str = "vqformer.data.imagenet64.ImageLMDataModule"
    name: str = "imagenet64"                    # imagenet64 | generated_images | fashion_mnist
    resolution: int = 64                        # image side in pixels; a sequence is resolution²·3 tokens

    def registry(self) -> dict:
        from ..data.imagenet64 import IMAGE_CORPORA
        return IMAGE_CORPORA

    def validate(self, d) -> None:
        super().validate(d)
        positive_int("data.resolution", d.resolution)
        from ..data.imagenet64 import image_tokens
        n = image_tokens(d.resolution)
        if d.sequence_len != n:
            fail("sequence_len", d.sequence_len, f"must be one image of data.resolution={d.resolution}: "
                 f"{n} tokens (H·W·3)")
        if d.eval_sequence_len not in (None, n):
            fail("data.eval_sequence_len", d.eval_sequence_len, f"must be null or one image ({n})")


@dataclass
class BooksData(BytesData):
    _target_: str = "vqformer.data.books_datamodule.BookLMDataModule"
    name: str = "pg19"                          # pg19 | shakespeare | wikitext103 | wikitext103_shakespeare
    vocab_size: int = 32000                     # pieces (or words) incl. pad/eos/unk; >= 4
    tokenizer_chars: int = 1_000_000_000        # training characters of the tokenizer; >= 1
    allow_download: bool = True                 # fetch the corpus when it is missing
    source: Optional[str] = "hub"               # hub (datasets copy, PG-19 falls back to the bucket) | bucket (PG-19) | local | null (stand-ins)
    hub_id: Optional[str] = None                # hub dataset read when source=hub (docs/data.md §7)
    hub_config: Optional[str] = None            # hub configuration name, or null
    hub_revision: Optional[str] = None          # hub revision (branch, tag or commit), or null: main
    local_path: Optional[str] = None            # save_to_disk folder or parquet files; required when source=local
    num_proc: int = 1                           # processes for datasets.map tokenization; >= 1
    tokenizer: str = "bpe"                      # bpe | word (word: WikiText-103 and its stand-in only)

    def registry(self) -> dict:
        from ..data.pg19 import BOOK_CORPORA
        return BOOK_CORPORA

    def data_vocab(self, d) -> int:
        return d.vocab_size

    def validate(self, d) -> None:
        super().validate(d)
        if not isinstance(d.vocab_size, int) or d.vocab_size < 4:
            fail("data.vocab_size", d.vocab_size, "must be an integer >= 4 (pad, eos, unk and a piece)")
        positive_int("data.tokenizer_chars", d.tokenizer_chars)
        positive_int("data.num_proc", d.num_proc)
        one_of("data.tokenizer", d.tokenizer, ("bpe", "word"))
        if d.source is not None:
            one_of("data.source", d.source, ("hub", "bucket", "local"))
        if d.source == "local" and not d.local_path:
            fail("data.local_path", d.local_path, "is required with data.source=local")


@dataclass
class LRAData(_Common):
    _target_: str = "vqformer.data.lra.datamodule.LRADataModule"
    task: str = "listops"                       # a task of vqformer.data.lra.tasks.TASKS
    source: str = "generated"                   # release (official files) | generated (offline)
    max_len: Optional[int] = None               # null: the task's LRA length; else >= 1
    generator: Dict[str, Any] = field(default_factory=dict)  # source=generated: the generator's settings
    limit_train_examples: Optional[int] = None  # null: all; >= 1
    limit_eval_examples: Optional[int] = None   # null: all; >= 1

    def validate(self, d) -> None:
        self._check(d)
        from ..data.lra.tasks import TASKS
        if d.task not in TASKS:
            fail("data.task", d.task, f"choose one of {sorted(TASKS)}")
        if d.source not in TASKS[d.task].sources:
            fail("data.source", d.source, f"choose one of {list(TASKS[d.task].sources)} for data.task={d.task}")
        for key in ("max_len", "limit_train_examples", "limit_eval_examples"):
            positive_int(f"data.{key}", d[key], optional=True)


@dataclass
class MQARSegment:
    input_seq_len: int = 64                     # tokens per example; >= 1
    num_kv_pairs: int = 4                       # key-value pairs to recall (D); >= 1
    num_examples: int = 1000                    # examples of this segment; >= 1


@dataclass
class MQARData(_Common):
    _target_: str = "vqformer.data.recall_datamodule.MQARDataModule"
    name: str = "mqar"                          # mqar only
    batch_size: int = 64                        # training examples per batch; >= 1
    vocab_size: int = 8192                      # key and value ids together; >= 4
    power_a: float = 0.01                       # power-law parameter of the query gaps; > 0
    num_passes: int = 1                         # times the key-value pairs are shown; >= 1
    random_non_queries: bool = False            # fill non-query positions with random tokens
    query_gap: int = 0                          # filler tokens between the context and the first query; >= 0
    train_segments: List[MQARSegment] = field(default_factory=list)   # the training mix; non-empty
    test_segments: List[MQARSegment] = field(default_factory=list)    # the test mix; non-empty

    def registry(self) -> dict:
        return {"mqar": None}

    def data_vocab(self, d) -> int:
        return d.vocab_size

    def validate(self, d) -> None:
        super().validate(d)
        positive_int("data.vocab_size", d.vocab_size)
        if not d.power_a > 0:
            fail("data.power_a", d.power_a, "must be > 0")
        positive_int("data.num_passes", d.num_passes)
        nonneg_int("data.query_gap", d.query_gap)
        for key in ("train_segments", "test_segments"):
            if not d[key]:
                fail(f"data.{key}", OmegaConf.to_container(d[key]), "must list at least one segment")
            for i, s in enumerate(d[key]):
                for f in ("input_seq_len", "num_kv_pairs", "num_examples"):
                    positive_int(f"data.{key}[{i}].{f}", s[f])


KINDS = {"bytes": BytesData, "byte_file": ByteFileData, "images": ImageData, "books": BooksData, "lra": LRAData, "mqar": MQARData}


def kind_of(d) -> Optional[_Common]:
    """The schema of a data node (an instance, for its registry and vocabulary), or None for a foreign module."""
    t = OmegaConf.get_type(d)
    for cls in KINDS.values():
        if t is cls:
            return cls()
    target = d.get("_target_") if OmegaConf.is_dict(d) else None
    for cls in KINDS.values():
        if cls._target_ == target:     # exact class path, never a suffix
            return cls()
    return None
