"""Data layer of vqformer: byte corpora and the LM data module (docs/transformer_vq.md §4.3)."""

from .bytes_corpus import (
    CORPORA,
    SPLITS,
    corpus_dir,
    prepare,
    prepare_enwik8,
    prepare_generated,
    prepare_wiki_sample,
    prepared_splits,
    split_bounds,
)
from .files import DataIntegrityError, DataUnavailableError

# The data module pulls in Lightning (seconds to import); load it only when asked for,
# so that `python -m vqformer.data.prepare` and the corpus helpers stay light.
_LAZY = {"BYTE_OFFSET", "EOS", "PAD", "UNK", "VOCAB_SIZE", "ByteLMDataModule"}


def __getattr__(name: str):
    if name in _LAZY:
        from . import lm_datamodule

        return getattr(lm_datamodule, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BYTE_OFFSET",
    "CORPORA",
    "EOS",
    "PAD",
    "SPLITS",
    "UNK",
    "VOCAB_SIZE",
    "ByteLMDataModule",
    "DataIntegrityError",
    "DataUnavailableError",
    "corpus_dir",
    "prepare",
    "prepare_enwik8",
    "prepare_generated",
    "prepare_wiki_sample",
    "prepared_splits",
    "split_bounds",
]
