"""Token-level LM data over books (PG-19 and its Shakespeare stand-in; docs/transformer_vq.md §4.3–4.4).

Training is the byte module's scheme on token ids: the books of the train split, each followed by EOS,
are one stream cut into random windows of T tokens with EOS as the first input of every window; exact
mid-epoch resume comes from the shared `WindowSampler` / `ResumableDataLoader`.

Evaluation scores every token of the split (each book's EOS included) exactly once:

* `eval_sequence_len: null` (default): one item per **whole book**, the state carried from the book's
  first token to its last (LMModule.score runs windows of `eval_window` with the state carried), so the
  model sees the whole book. Items are ordered by length so a batch pads little; books are padded to a
  multiple of `sequence_len` (fully padded windows are skipped by the module).
* `eval_sequence_len: N`: each book is cut in order into segments of N tokens, each scored from a fresh
  state (context bounded by N, as the official evaluation with `-t N`).

`limit_eval_bytes` (kept under the byte modules' name so `debug=fast` applies) counts **tokens** here:
validation during training scores the first that many tokens of the split, books in order.
`eval_stats(split)` gives the tokens, UTF-8 bytes and words of exactly what is scored, from which the
module reports bits per byte and word-level perplexity.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .lm_datamodule import ByteLMDataModule, _example, _LazyMemmap, _positive_int
from .pg19 import BOOK_COLUMNS, BOOK_CORPORA, META_NAME, book_dir, count_words, prepared_books
from .tokenizer import DEFAULT_VOCAB, EOS, TOKENIZER_FILE, TRAIN_CHARS, load_tokenizer

__all__ = ["BookEvalDataset", "BookLMDataModule", "pad_collate"]

_COL = {c: i for i, c in enumerate(BOOK_COLUMNS)}
_DATASETS_KNOBS = {"pg19": {"source", "hub_id", "hub_revision", "local_path", "num_proc"},
                   "wikitext103": {"source", "hub_id", "hub_config", "hub_revision", "local_path", "num_proc", "tokenizer"},
                   "wikitext103_shakespeare": {"num_proc", "tokenizer"}}


def pad_collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack examples of different lengths, right-padding with PAD targets and a False mask."""
    length = max(len(it["inputs"]) for it in items)
    out = {}
    for key in ("inputs", "targets", "mask"):
        rows = [torch.nn.functional.pad(it[key], (0, length - len(it[key]))) for it in items]
        out[key] = torch.stack(rows)
    return out


class BookEvalDataset(Dataset):
    """The books of a split (optionally only their first `limit_tokens` tokens) as whole books or segments."""

    def __init__(self, out_dir: str | os.PathLike, split: str, dtype, segment_len: int | None,
                 pad_multiple: int, limit_tokens: int | None = None):
        out_dir = Path(out_dir)
        info = json.loads((out_dir / META_NAME).read_text())["splits"][split]
        self.tokens = _LazyMemmap(out_dir / info["file"], dtype)
        table = np.load(out_dir / info["books_file"])
        pieces, left = [], limit_tokens
        for row in table:
            n = int(row[_COL["n_tokens"]]) if left is None else min(int(row[_COL["n_tokens"]]), left)
            if n <= 0:
                break
            pieces.append((int(row[_COL["start"]]), n, row))
            if left is not None:
                left -= n
        self.stats = self._stats(out_dir, pieces, dtype)
        if segment_len is None:
            # Longest first: consecutive items (one batch) have similar lengths.
            pieces.sort(key=lambda p: -p[1])
            self.items = [(s, n, math.ceil(n / pad_multiple) * pad_multiple) for s, n, _ in pieces]
        else:
            self.items = [(s + k, min(segment_len, n - k), segment_len)
                          for s, n, _ in pieces for k in range(0, n, segment_len)]

    def _stats(self, out_dir: Path, pieces, dtype) -> dict[str, int]:
        stats = {"n_books": len(pieces), "n_tokens": 0, "n_bytes": 0, "n_words": 0}
        tok = None
        for start, n, row in pieces:
            stats["n_tokens"] += n
            if n == row[_COL["n_tokens"]]:
                stats["n_bytes"] += int(row[_COL["n_bytes"]])
                stats["n_words"] += int(row[_COL["n_words"]])
            else:   # a truncated book: count the bytes and words of the text its scored tokens decode to
                tok = tok or load_tokenizer(out_dir / TOKENIZER_FILE)
                ids = np.memmap(self.tokens.path, dtype=dtype, mode="r")[start:start + n].tolist()
                text = tok.decode([t for t in ids if t != EOS], skip_special_tokens=True)
                stats["n_bytes"] += len(text.encode("utf-8"))
                stats["n_words"] += count_words(text)
        return stats

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} out of range [0, {len(self)})")
        start, n, length = self.items[i]
        return _example(self.tokens.array[start:start + n], length, offset=0)


class BookLMDataModule(ByteLMDataModule):
    """PG-19 (`name: pg19`), its Shakespeare stand-in (`name: shakespeare`), BPE-tokenized, or WikiText-103
    (`name: wikitext103`, word-level by default; documents are articles)."""

    token_offset = 0   # the files hold token ids

    def __init__(
        self,
        name: str,
        root: str,
        sequence_len: int,
        batch_size: int,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        vocab_size: int = DEFAULT_VOCAB,
        tokenizer_chars: int = TRAIN_CHARS,
        limit_eval_bytes: int | None = None,
        eval_sequence_len: int | None = None,
        allow_download: bool = True,
        n_bytes: int | None = None,
        tokenizer: str = "bpe",
        source: str | None = None,
        hub_id: str | None = None,
        hub_config: str | None = None,
        hub_revision: str | None = None,
        local_path: str | None = None,
        num_proc: int = 1,
    ):
        super().__init__(name, root, sequence_len, batch_size, eval_batch_size, num_workers, seed, n_bytes,
                         limit_eval_bytes, eval_sequence_len)
        _positive_int("vocab_size", vocab_size, minimum=4)
        _positive_int("tokenizer_chars", tokenizer_chars)
        self._vocab_size, self.allow_download = int(vocab_size), bool(allow_download)
        _positive_int("num_proc", num_proc)
        self.tokenizer = tokenizer
        self._corpus_kw = {"vocab_size": self._vocab_size, "train_chars": int(tokenizer_chars)}
        # The datasets knobs (docs/data.md §7) each corpus takes; unset (null) ones keep the corpus's defaults.
        hf_kw = {"source": source, "hub_id": hub_id, "hub_config": hub_config, "hub_revision": hub_revision,
                 "local_path": local_path, "num_proc": int(num_proc), "tokenizer": tokenizer}
        takes = _DATASETS_KNOBS.get(name, set())
        for key, value in hf_kw.items():
            if key not in takes and key != "num_proc" and value not in (None, "bpe"):
                raise ValueError(f"data.{key}={value!r} does not apply to data.name={name!r}; it takes "
                                 f"{sorted(takes) or 'none of the datasets knobs'} (docs/data.md §7)")
        self._corpus_kw.update({k: v for k, v in hf_kw.items() if k in takes and v is not None})
        self.token_dtype = np.uint16 if self._vocab_size <= 1 << 16 else np.int32
        self.eval_sequence_len = eval_sequence_len   # None: whole books
        self._meta: dict | None = None
        self._eval_stats: dict[str, dict] = {}

    @staticmethod
    def _check_corpus(name: str, n_bytes: int | None) -> None:
        if name not in BOOK_CORPORA:
            raise ValueError(f"data.name: unknown book corpus {name!r}; choose one of {list(BOOK_CORPORA)}")
        if n_bytes is not None:
            raise ValueError(f"data.n_bytes only applies to data.name=generated, got {n_bytes!r} for {name!r}")

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def out_dir(self) -> Path:
        return book_dir(self.name, self.root, self._vocab_size, self.tokenizer)

    def _prepare(self) -> None:
        BOOK_CORPORA[self.name](self.root, allow_download=self.allow_download, verify=True, **self._corpus_kw)

    def _prepared_paths(self) -> dict[str, Path]:
        self._meta = prepared_books(self.name, self.root, self._vocab_size, self.tokenizer)
        return {s: self.out_dir / info["file"] for s, info in self._meta["splits"].items()}

    def split_stats(self, split: str) -> dict[str, int]:
        """Totals of a whole prepared split: n_books, n_tokens (EOS included), n_bytes, n_words, n_unk."""
        self._require_setup()
        return {k: v for k, v in self._meta["splits"][split].items() if k.startswith("n_")}

    def eval_stats(self, split: str) -> dict[str, int] | None:
        """Tokens, bytes and words of what the last loader built for `split` scores (None before that)."""
        return self._eval_stats.get(split)

    def eval_dataloader(self, split: str, sequence_len: int | None = None, limit_bytes: int | None = None,
                        batch_size: int | None = None) -> DataLoader:
        self._split_path(split)   # checks the split name and that setup() ran
        dataset = BookEvalDataset(self.out_dir, split, self.token_dtype, sequence_len or self.eval_sequence_len,
                                  self.sequence_len, limit_bytes)
        self._eval_stats[split] = dataset.stats
        return DataLoader(dataset, batch_size=batch_size or self.eval_batch_size, shuffle=False,
                          collate_fn=pad_collate, **self._loader_kw())

