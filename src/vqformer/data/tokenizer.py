"""BPE tokenizer for PG-19 (docs/transformer_vq.md §4.3, PG-19; docs/data.md §2).

The official code trains a SentencePiece BPE model of 32,000 pieces on the first 10^9 characters of
the training split, character coverage 1.0, ids pad 0 / eos 1 / unk 2, no BOS. Here the same model
is trained with the `tokenizers` library:

* BPE over SentencePiece-style pieces (spaces become "▁" and start a piece), no normalizer and no
  dummy prefix, so `decode(encode(text)) == text` for every text whose characters occur in the
  training text (full character coverage: every training character is in the alphabet);
* characters never seen in training map to unk (id 2), as with SentencePiece's default (no byte
  fallback);
* the three special pieces come first so they get ids 0, 1, 2; nothing is added on encode (no BOS,
  no EOS: the data pipeline appends EOS to every book).

The tokenizer is saved as `tokenizer.json` next to the prepared data (atomically) and reused.

`train_word_tokenizer` builds the word-level vocabulary of WikiText-103 as MEGA/fairseq use it (docs/longvq.md
§2.3): every whitespace-separated word of the training text (the text's own `<unk>` is our unk, id 2), most
frequent first, capped at `vocab_size` entries including the specials.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .files import atomic_path

__all__ = ["EOS", "PAD", "SPECIAL_TOKENS", "TOKENIZER_FILE", "TRAIN_CHARS", "UNK",
           "first_chars", "load_tokenizer", "save_tokenizer", "train_tokenizer", "train_word_tokenizer"]

PAD, EOS, UNK = 0, 1, 2
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")
TOKENIZER_FILE = "tokenizer.json"
TRAIN_CHARS = 10**9          # the official code trains on the first 1e9 characters of the train split
DEFAULT_VOCAB = 32_000


def first_chars(texts: Iterable[str], n_chars: int) -> Iterator[str]:
    """The texts in order, cut so that exactly the first `n_chars` characters of their concatenation are yielded."""
    left = n_chars
    for text in texts:
        if left <= 0:
            return
        piece = text[:left]
        left -= len(piece)
        yield piece


def _show_progress() -> bool:
    # The trainer's own bar redraws in place; in a log file it would be noise (vqformer.progress covers the rest).
    return sys.stderr.isatty()


def _empty(vocab_size: int) -> tuple[Tokenizer, trainers.BpeTrainer]:
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS[UNK]))
    # prepend_scheme="never": no dummy space before the first word, so decoding restores the text exactly.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    # limit_alphabet left unset keeps every character of the training text (character coverage 1.0).
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  show_progress=_show_progress())
    return tok, trainer


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB, n_chars: int = TRAIN_CHARS) -> Tokenizer:
    """Train the BPE model on the first `n_chars` characters of `texts` (in order)."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"data.vocab_size must be an integer > {len(SPECIAL_TOKENS)}, got {vocab_size!r}")
    tok, trainer = _empty(vocab_size)
    tok.train_from_iterator(first_chars(texts, n_chars), trainer)
    for i, piece in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(piece) == i, (piece, tok.token_to_id(piece))
    return tok


def train_word_tokenizer(texts: Iterable[str], vocab_size: int, n_chars: int = TRAIN_CHARS) -> Tokenizer:
    """A word-level vocabulary (whitespace words) of the first `n_chars` characters of `texts`."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"data.vocab_size must be an integer > {len(SPECIAL_TOKENS)}, got {vocab_size!r}")
    tok = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS[UNK]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=0, special_tokens=list(SPECIAL_TOKENS),
                                        show_progress=_show_progress())
    tok.train_from_iterator(first_chars(texts, n_chars), trainer)
    # The trainer gives a word spelled like a special piece (WikiText's own "<unk>") a second id: renumber so
    # that the specials come first, then the words in the trainer's (frequency) order.
    words = [w for w, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]) if w not in SPECIAL_TOKENS]
    # A fresh tokenizer: the trained one keeps its special pieces bound to their old ids.
    vocab = {w: i for i, w in enumerate([*SPECIAL_TOKENS, *words][:vocab_size])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL_TOKENS[UNK]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    for i, piece in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(piece) == i and tok.encode(piece).ids == [i], (piece, tok.encode(piece).ids)
    return tok


def save_tokenizer(tok: Tokenizer, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tok.save(str(tmp))
    return Path(path)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    tok = Tokenizer.from_file(str(path))
    for i, piece in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(piece) != i:
            raise ValueError(f"{path}: special piece {piece!r} must have id {i}, found {tok.token_to_id(piece)}")
    return tok
