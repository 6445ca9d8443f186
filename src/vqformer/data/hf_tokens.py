"""Tokenize a text `DatasetDict` (PG-19 or WikiText-103 from `datasets`) into a memory-mapped token cache.

Layout, under the corpus folder `<root>/<name>_<tokenizer><vocab_size>/` (pg19.book_dir):

* `tokenizer.json` (+ `tokenizer.params.json`): trained on the first `train_chars` characters of train and
  reused while its settings and sha256 are unchanged;
* `tokens-<first 16 hex of the tokenizer's sha256>/<split>.bin` (token ids) and `<split>.books.npy` (one row per
  document: start, n_tokens, n_bytes, n_words, n_unk; the columns of pg19.py), so tokens made by another
  tokenizer can never be read with this one;
* `meta.json`, written last, with the sha256 of every file (files.check_prepared; docs/data_integrity.md).

Tokenization is `Dataset.map` (batched, `num_proc` processes) over 20 contiguous shards of each split, its Arrow
output under `tokens-<sha>/.map-<source hash>/`, keyed by the same hashes (a killed run reuses every finished
shard); the ids are then streamed into `<split>.bin` and the map output deleted.

Two document schemes: `books` (one row = one document, followed by EOS: PG-19) and `lines` (one row = one line,
each followed by EOS as fairseq does for WikiText-103; documents are articles, which start at a level-1
heading line ` = Title = `; `n_words` counts the EOS of every line, the token count behind WikiText-103's
word-level perplexity).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..progress import progress
from .files import atomic_path, atomic_write_bytes, load_meta, sha256_file
from .tokenizer import EOS, TOKENIZER_FILE, UNK, first_chars, load_tokenizer, save_tokenizer

__all__ = ["META_VERSION", "is_article_start", "prepare_from_datasets", "tokens_dir"]

META_NAME = "meta.json"
META_VERSION = 2   # 1 = the bucket layout of pg19.py (token files next to meta.json)
BOOK_COLUMNS = ("start", "n_tokens", "n_bytes", "n_words", "n_unk")
SPLITS = ("train", "validation", "test")
MAP_SHARDS = 20   # one progress line per 5 % of a split
_ROWS = {True: 2048, False: 16}   # rows per map / write batch: lines (WikiText) or whole books (PG-19, ~100k tokens each)


def tokens_dir(out_dir: Path, tokenizer_sha256: str) -> Path:
    return out_dir / f"tokens-{tokenizer_sha256[:16]}"


def is_article_start(line: str) -> bool:
    """A WikiText level-1 heading (` = Title = `), not a section heading (` = = Section = = `)."""
    s = line.strip()
    return s.startswith("= ") and s.endswith(" =") and not s.startswith("= =") and len(s) > 3


def _encode(batch: dict, tok, text_column: str, lines: bool) -> dict:
    texts = batch[text_column]
    encs = tok.encode_batch(texts, add_special_tokens=False)
    ids = [e.ids + [EOS] for e in encs]
    return {"ids": ids,
            "n_bytes": [len(t.encode("utf-8")) for t in texts],
            "n_words": [len(t.split()) + int(lines) for t in texts],
            "n_unk": [sum(i == UNK for i in e.ids) for e in encs],
            "doc_start": [is_article_start(t) for t in texts] if lines else [True] * len(texts)}


def _texts(ds, text_column: str) -> Iterator[str]:
    for batch in ds.iter(batch_size=256):
        yield from batch[text_column]


def _tokenizer(out_dir: Path, train_ds, text_column: str, train: Callable, params: dict, known_sha256: str | None):
    """Reuse `tokenizer.json` if trained with `params` and unchanged since (its recorded sha256); else train it."""
    path, params_path = out_dir / TOKENIZER_FILE, out_dir / "tokenizer.params.json"
    try:
        saved = json.loads(params_path.read_text())
        recorded = {saved.pop("sha256", None), known_sha256} - {None}
        if saved == params and sha256_file(path) in recorded:
            return load_tokenizer(path)
    except Exception:   # missing or corrupt (any error of json or tokenizers): train again
        pass
    tok = train(first_chars(_texts(train_ds, text_column), params["train_chars"]), params["vocab_size"],
                params["train_chars"])
    save_tokenizer(tok, path)
    atomic_write_bytes(params_path, json.dumps({**params, "sha256": sha256_file(path)}).encode())
    return tok


def _write_split(mapped, tokens_path: Path, books_path: Path, dtype, desc: str, batch_rows: int) -> dict:
    """Stream the `ids` column into `tokens_path`, and per-document sums of the stats into `books_path`."""
    import pyarrow.compute as pc

    cols = {c: [] for c in ("n_tokens", "n_bytes", "n_words", "n_unk", "doc_start")}
    sha = hashlib.sha256()
    bar = progress(total=len(mapped), desc=desc, unit="row")
    with atomic_path(tokens_path) as tmp, open(tmp, "wb") as f:
        for table in mapped.with_format("arrow").iter(batch_size=batch_rows):
            data = pc.list_flatten(table["ids"]).to_numpy().astype(dtype).tobytes()
            f.write(data)
            sha.update(data)
            cols["n_tokens"].append(pc.list_value_length(table["ids"]).to_numpy())
            for c in ("n_bytes", "n_words", "n_unk", "doc_start"):
                cols[c].append(table[c].to_numpy())
            bar.update(table.num_rows)
    bar.close()
    rows = {c: np.concatenate(v) if v else np.zeros(0) for c, v in cols.items()}
    n_rows = len(rows["n_tokens"])
    starts_row = np.flatnonzero(rows["doc_start"].astype(bool) | (np.arange(n_rows) == 0))
    row_start = np.concatenate([[0], np.cumsum(rows["n_tokens"])[:-1]]).astype(np.int64)
    table = np.zeros((len(starts_row), len(BOOK_COLUMNS)), np.int64)
    if n_rows:
        table[:, 0] = row_start[starts_row]
        for j, c in enumerate(BOOK_COLUMNS[1:], 1):
            table[:, j] = np.add.reduceat(rows[c].astype(np.int64), starts_row)
    with atomic_path(books_path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, table)
    totals = {c: int(table[:, j].sum()) for j, c in enumerate(BOOK_COLUMNS) if c != "start"}
    rel = tokens_path.parent.name
    return {"file": f"{rel}/{tokens_path.name}", "n_books": len(table), **totals, "sha256": sha.hexdigest(),
            "books_file": f"{rel}/{books_path.name}", "books_sha256": sha256_file(books_path)}


def prepare_from_datasets(out_dir: Path, dsd, source: dict, text_column: str, lines: bool, train: Callable,
                          tokenizer_kind: str, vocab_size: int, train_chars: int, num_proc: int = 1) -> Path:
    """Train (or reuse) the tokenizer on train, tokenize every split with `datasets.map`, write the manifest last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = load_meta(out_dir / META_NAME, META_VERSION, source) or {}
    (out_dir / META_NAME).unlink(missing_ok=True)   # never vouch for files being replaced
    params = {"kind": tokenizer_kind, "vocab_size": vocab_size, "train_chars": train_chars, "source": source}
    tok = _tokenizer(out_dir, dsd["train"], text_column, train, params, previous.get("tokenizer_sha256"))
    tok_sha = sha256_file(out_dir / TOKENIZER_FILE)
    tdir = tokens_dir(out_dir, tok_sha)
    work = tdir / f".map-{hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:12]}"
    work.mkdir(parents=True, exist_ok=True)
    import datasets

    dtype = np.uint16 if vocab_size <= 1 << 16 else np.int32
    # Typed columns keep the map output at the token file's width (uint16 for BPE: 4 GB for PG-19's train, not 16).
    features = datasets.Features({"ids": datasets.Sequence(datasets.Value(np.dtype(dtype).name)),
                                  **{c: datasets.Value("int64") for c in ("n_bytes", "n_words", "n_unk")},
                                  "doc_start": datasets.Value("bool")})
    splits = {}
    for split in SPLITS:
        ds = dsd[split]
        # Mapped in MAP_SHARDS contiguous pieces, each cached on its own: progress in our one style (datasets' own bar
        # would redraw every 0.1 s in a log file), and a killed run keeps every finished piece.
        n_shards = max(1, min(MAP_SHARDS, len(ds)))
        bar = progress(total=len(ds), desc=f"tokenize {split}", unit="row")
        parts, bars_were_on = [], datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            for i in range(n_shards):
                shard = ds.shard(n_shards, i, contiguous=True)
                parts.append(shard.map(
                    _encode, batched=True, batch_size=_ROWS[lines], num_proc=num_proc if num_proc > 1 else None,
                    remove_columns=ds.column_names, features=features,
                    fn_kwargs={"tok": tok, "text_column": text_column, "lines": lines},
                    cache_file_name=str(work / f"{split}-{i:03d}.arrow"),
                    new_fingerprint=f"{work.name[5:]}-{tok_sha[:16]}-{split}-{i}-of-{n_shards}"))
                bar.update(len(shard))
        finally:
            bar.close()
            if bars_were_on:
                datasets.enable_progress_bars()
        mapped = datasets.concatenate_datasets(parts)
        splits[split] = _write_split(mapped, tdir / f"{split}.bin", tdir / f"{split}.books.npy", dtype,
                                     f"write {split} tokens", _ROWS[lines])
        del mapped, parts
    shutil.rmtree(work, ignore_errors=True)
    meta = {"version": META_VERSION, "source": source, "dtype": np.dtype(dtype).name,
            "format": ("token ids, each " + ("line" if lines else "document") + " followed by EOS (id 1); "
                       "books.npy columns " + ",".join(BOOK_COLUMNS) + " per document"),
            "tokenizer": tokenizer_kind, "vocab_size": vocab_size, "tokenizer_vocab_size": tok.get_vocab_size(),
            "tokenizer_sha256": tok_sha, "splits": splits}
    atomic_write_bytes(out_dir / META_NAME, (json.dumps(meta, indent=2) + "\n").encode())
    for old in out_dir.glob("tokens-*"):   # token caches of earlier tokenizers can never be read again
        if old != tdir:
            shutil.rmtree(old, ignore_errors=True)
    return out_dir
