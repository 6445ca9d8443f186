"""Byte corpora prepared into raw uint8 split files (docs/transformer_vq.md §4.3, Enwik8).

Each corpus becomes `<root>/<dir>/{train,validation,test}.bin` holding the raw
bytes (the +3 vocabulary offset is applied at load time) plus `meta.json` with
each split's size and sha256, written last; a run re-hashes the splits when it starts
(docs/data_integrity.md). Splits are cut by index at 90% / 95% of the
corpus, which for enwik8 is exactly [0, 90M) / [90M, 95M) / [95M, 100M).
Sources (docs/data.md §1):

* `enwik8`: the official zip from mattmahoney.net, member md5-verified.
* `wiki_sample`: the offline stand-in, a Wikipedia XML dump shipped in gensim's wheel.
* `generated`: a small seeded synthetic corpus for tests and smoke runs.
* `parity_wiki1m`: the first 1,000,000 bytes of wiki_sample, split 900k/50k/50k: the corpus on which the
  official code's tiny configuration was measured (experiments/parity/README.md).
* `byte_file`: any local file (`data=byte_file data.path=...`), with its own split fractions; prepared
  under `<root>/byte_file/<stem>-<sha256 prefix>/` by data/byte_file.py.
"""

from __future__ import annotations

import bz2
import hashlib
import importlib.util
import json
import os
import urllib.error
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .files import (
    DataIntegrityError,
    DataUnavailableError,
    atomic_write_bytes,
    check_prepared,
    download,
    split_entries,
)

__all__ = [
    "CORPORA",
    "ENWIK8_URL",
    "SPLITS",
    "corpus_dir",
    "generate_bytes",
    "prepare",
    "prepare_enwik8",
    "prepare_generated",
    "prepare_parity_wiki1m",
    "prepare_wiki_sample",
    "prepared_splits",
    "split_bounds",
]

SPLITS = ("train", "validation", "test")
META_NAME = "meta.json"
META_VERSION = 1

# Module-level so tests can substitute a small fake corpus.
ENWIK8_URL = "http://mattmahoney.net/dc/enwik8.zip"
ENWIK8_MEMBER = "enwik8"
ENWIK8_SIZE = 100_000_000
ENWIK8_MD5 = "a1fa5ffddb56f4953e226637dabbb36a"

WIKI_SAMPLE_FILE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
WIKI_SAMPLE_SIZE = 6_089_746
WIKI_SAMPLE_SHA256 = "34c1c63050c87cc8477b9ae36b1cb0edf372612c92938b742e579a7109c20fa4"

PARITY_WIKI1M_BYTES = 1_000_000
PARITY_WIKI1M_SHA256 = "4ca04da158d5a223278aa69e7865d75fed4e193b7c024feb961082ec95538a4e"

GENERATED_DEFAULT_BYTES = 1_000_000
GENERATED_MIN_BYTES = 1_000
GENERATED_VERSION = 1


def split_bounds(n: int) -> dict[str, tuple[int, int]]:
    """[start, end) of each split: floor(0.9 n) and floor(0.95 n), in exact integer arithmetic."""
    a, b = n * 9 // 10, n * 19 // 20
    return {"train": (0, a), "validation": (a, b), "test": (b, n)}


def _split_paths(out_dir: Path) -> dict[str, Path]:
    return {s: out_dir / f"{s}.bin" for s in SPLITS}


def _intact(out_dir: Path, source: dict, verify: bool, locate_source: Callable[[], str | None], fix: str) -> bool:
    """True if the split files match meta.json (sizes always, sha256 if `verify`); False: prepare them.

    Damaged splits are prepared again when `locate_source()` finds the source, else a DataIntegrityError
    names them and `fix` (files.check_prepared).
    """
    paths = _split_paths(out_dir)
    return check_prepared(out_dir / META_NAME, META_VERSION, source, lambda meta: split_entries(meta, paths),
                          locate_source, fix, verify) is not None


def _command(name: str, root: str | os.PathLike, **kw) -> str:
    command = f"python -m vqformer.data.prepare {name} --root {os.path.abspath(root)}"
    if name == "generated":
        command += f" --n-bytes {kw.get('n_bytes', GENERATED_DEFAULT_BYTES)} --seed {kw.get('seed', 0)}"
    return command


def _write_splits(out_dir: Path, data: bytes, source: dict,
                 bounds: dict[str, tuple[int, int]] | None = None, **extra) -> dict[str, Path]:
    """Write the three splits (`bounds`, default `split_bounds`), then meta.json last so that it only ever
    describes complete files. `extra` adds informational fields to meta.json (not compared on reuse)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # A stale meta.json must not vouch for split files that are being replaced.
    (out_dir / META_NAME).unlink(missing_ok=True)
    view = memoryview(data)
    paths = _split_paths(out_dir)
    splits = {}
    for split, (start, end) in (bounds or split_bounds(len(data))).items():
        chunk = view[start:end]
        atomic_write_bytes(paths[split], chunk)
        splits[split] = {
            "file": paths[split].name,
            "start": start,
            "end": end,
            "n_bytes": end - start,
            "sha256": hashlib.sha256(chunk).hexdigest(),
        }
    meta = {
        "version": META_VERSION,
        "format": "raw uint8 bytes, no vocabulary offset",
        "source": source,
        "n_bytes": len(data),
        "splits": splits,
        **extra,
    }
    atomic_write_bytes(out_dir / META_NAME, (json.dumps(meta, indent=2) + "\n").encode())
    return paths


# ---------------------------------------------------------------- enwik8


def _read_enwik8_member(zip_path: Path) -> bytes:
    hint = f"delete {zip_path} and download {ENWIK8_URL} again"
    try:
        with zipfile.ZipFile(zip_path) as zf:
            try:
                info = zf.getinfo(ENWIK8_MEMBER)
            except KeyError:
                raise DataIntegrityError(
                    f"{zip_path}: no member '{ENWIK8_MEMBER}' (found {zf.namelist()[:5]}); {hint}"
                ) from None
            if info.file_size != ENWIK8_SIZE:
                raise DataIntegrityError(
                    f"{zip_path}: member '{ENWIK8_MEMBER}' has {info.file_size} bytes, "
                    f"expected {ENWIK8_SIZE}; {hint}"
                )
            data = zf.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise DataIntegrityError(f"{zip_path}: corrupt or truncated zip ({e}); {hint}") from e
    md5 = hashlib.md5(data).hexdigest()
    if len(data) != ENWIK8_SIZE or md5 != ENWIK8_MD5:
        raise DataIntegrityError(
            f"{zip_path}: member '{ENWIK8_MEMBER}' md5 mismatch: expected {ENWIK8_MD5}, "
            f"got {md5} ({len(data)} bytes); {hint}"
        )
    return data


def prepare_enwik8(root: str | os.PathLike, verify: bool = False, allow_download: bool = True) -> dict[str, Path]:
    """Prepare enwik8 under `<root>/enwik8/`, downloading the zip there if it is missing."""
    out_dir = Path(os.path.abspath(root)) / "enwik8"
    source = {"kind": "enwik8", "url": ENWIK8_URL, "member": ENWIK8_MEMBER, "md5": ENWIK8_MD5}
    zip_path = out_dir / "enwik8.zip"
    fix = (f"place {ENWIK8_URL} at {zip_path} and run again, or delete {out_dir} and run "
           f"`{_command('enwik8', root)}` (`make data-enwik8`), which downloads it")
    if _intact(out_dir, source, verify, lambda: str(zip_path) if zip_path.is_file() else None, fix):
        return _split_paths(out_dir)
    if not zip_path.is_file():
        manual = (
            f"enwik8 is not available: download {ENWIK8_URL} and place it at {zip_path} "
            f"(its member '{ENWIK8_MEMBER}' must have md5 {ENWIK8_MD5})"
        )
        if not allow_download:
            raise DataUnavailableError(manual)
        try:
            download(ENWIK8_URL, zip_path)
        except DataUnavailableError as e:
            raise DataUnavailableError(f"{manual}\n{e}") from e
        except (urllib.error.URLError, OSError) as e:
            raise DataUnavailableError(f"{manual} ({e})") from e
    return _write_splits(out_dir, _read_enwik8_member(zip_path), source)


# ---------------------------------------------------------------- wiki_sample


def _gensim_file(relative: str) -> Path:
    # find_spec on a top-level package locates it without executing gensim (and its scipy imports).
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError(
            "the wiki_sample corpus ships inside gensim's wheel, which is not installed: "
            "pip install --no-deps gensim==4.4.0"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / relative
        if path.is_file():
            return path
    raise DataUnavailableError(
        f"gensim is installed at {list(spec.submodule_search_locations)} but lacks {relative}: "
        "pip install --force-reinstall --no-deps gensim==4.4.0"
    )


def prepare_wiki_sample(root: str | os.PathLike, verify: bool = False) -> dict[str, Path]:
    """Prepare the 6 MB Wikipedia XML stand-in for enwik8 under `<root>/wiki_sample/`."""
    out_dir = Path(os.path.abspath(root)) / "wiki_sample"
    source = {"kind": "wiki_sample", "file": "gensim/" + WIKI_SAMPLE_FILE, "sha256": WIKI_SAMPLE_SHA256}
    fix = f"pip install --no-deps gensim==4.4.0 and run again (or `{_command('wiki_sample', root)}`)"
    if _intact(out_dir, source, verify, _locate_wiki_sample, fix):
        return _split_paths(out_dir)
    return _write_splits(out_dir, _wiki_sample_bytes(), source)


def _locate_wiki_sample() -> str | None:
    try:
        return str(_gensim_file(WIKI_SAMPLE_FILE))
    except DataUnavailableError:
        return None


def _wiki_sample_bytes() -> bytes:
    """The decompressed wiki_sample XML, checked against its recorded size and sha256."""
    bz2_path = _gensim_file(WIKI_SAMPLE_FILE)
    try:
        data = bz2.decompress(bz2_path.read_bytes())
    except (OSError, ValueError, EOFError) as e:
        raise DataIntegrityError(f"{bz2_path}: cannot decompress ({e})") from e
    sha = hashlib.sha256(data).hexdigest()
    if len(data) != WIKI_SAMPLE_SIZE or sha != WIKI_SAMPLE_SHA256:
        raise DataIntegrityError(
            f"{bz2_path}: decompressed content mismatch: expected {WIKI_SAMPLE_SIZE} bytes with sha256 "
            f"{WIKI_SAMPLE_SHA256}, got {len(data)} bytes with sha256 {sha}; "
            "reinstall with pip install --force-reinstall --no-deps gensim==4.4.0"
        )
    return data


def prepare_parity_wiki1m(root: str | os.PathLike, verify: bool = False) -> dict[str, Path]:
    """The first 1,000,000 bytes of wiki_sample under `<root>/parity_wiki1m/`, split 900k/50k/50k.

    Derived offline from the gensim wheel; the prefix is checked against its own sha256 as well.
    """
    out_dir = Path(os.path.abspath(root)) / "parity_wiki1m"
    source = {"kind": "parity_wiki1m", "file": "gensim/" + WIKI_SAMPLE_FILE, "sha256": WIKI_SAMPLE_SHA256,
              "prefix_bytes": PARITY_WIKI1M_BYTES, "prefix_sha256": PARITY_WIKI1M_SHA256}
    fix = f"pip install --no-deps gensim==4.4.0 and run again (or `{_command('parity_wiki1m', root)}`)"
    if _intact(out_dir, source, verify, _locate_wiki_sample, fix):
        return _split_paths(out_dir)
    data = _wiki_sample_bytes()[:PARITY_WIKI1M_BYTES]
    sha = hashlib.sha256(data).hexdigest()
    if sha != PARITY_WIKI1M_SHA256:   # cannot differ once the whole file matched; guards an edit of the constants
        raise DataIntegrityError(f"parity_wiki1m: prefix sha256 {sha}, expected {PARITY_WIKI1M_SHA256}")
    return _write_splits(out_dir, data, source)


# ---------------------------------------------------------------- generated

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_DIGITS = "0123456789"
# Alphabet: 26 letters + 10 digits + " .,\n" = 40 symbols.
_SEPARATORS = (b" ", b", ", b". ", b".\n")
_SEPARATOR_P = (0.84, 0.07, 0.06, 0.03)
_N_WORDS = 160
_N_SUCCESSORS = 4
_SUCCESSOR_P = (0.55, 0.25, 0.12, 0.08)


def generate_bytes(n_bytes: int, seed: int) -> bytes:
    """A seeded word-bigram text over a 40-symbol alphabet.

    A lexicon of 160 short words (a few with digits) is drawn once; each word
    has 4 fixed successors with skewed probabilities, and separators are iid.
    The result repeats words constantly and has well under 1 bit/byte of
    entropy, so a tiny model's loss falls within a few hundred steps.
    """
    rng = np.random.default_rng([GENERATED_VERSION, seed])
    words: list[bytes] = []
    seen: set[bytes] = set()
    while len(words) < _N_WORDS:
        length = int(rng.integers(2, 9))
        pool = _LETTERS + _DIGITS if rng.random() < 0.1 else _LETTERS
        word = "".join(pool[i] for i in rng.integers(0, len(pool), size=length)).encode()
        if word not in seen:
            seen.add(word)
            words.append(word)
    successors = rng.integers(0, _N_WORDS, size=(_N_WORDS, _N_SUCCESSORS)).tolist()
    out = bytearray()
    w = 0
    while len(out) < n_bytes:
        ranks = rng.choice(_N_SUCCESSORS, size=4096, p=_SUCCESSOR_P).tolist()
        seps = rng.choice(len(_SEPARATORS), size=4096, p=_SEPARATOR_P).tolist()
        for r, s in zip(ranks, seps):
            w = successors[w][r]
            out += words[w]
            out += _SEPARATORS[s]
    return bytes(out[:n_bytes])


def prepare_generated(
    root: str | os.PathLike, n_bytes: int = GENERATED_DEFAULT_BYTES, seed: int = 0, verify: bool = False
) -> dict[str, Path]:
    """Prepare the synthetic corpus under `<root>/generated_<n_bytes>_<seed>/`."""
    if isinstance(n_bytes, bool) or not isinstance(n_bytes, int) or n_bytes < GENERATED_MIN_BYTES:
        raise ValueError(f"data.n_bytes must be an integer >= {GENERATED_MIN_BYTES}, got {n_bytes!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"data.seed must be a non-negative integer, got {seed!r}")
    out_dir = corpus_dir("generated", root, n_bytes=n_bytes, seed=seed)
    source = {"kind": "generated", "n_bytes": n_bytes, "seed": seed, "version": GENERATED_VERSION}
    fix = f"delete {out_dir} and run `{_command('generated', root, n_bytes=n_bytes, seed=seed)}`"
    if _intact(out_dir, source, verify, lambda: f"the generator (seed {seed})", fix):
        return _split_paths(out_dir)
    return _write_splits(out_dir, generate_bytes(n_bytes, seed), source)


# ---------------------------------------------------------------- registry

def _prepare_byte_file(root: str | os.PathLike, **kw) -> dict[str, Path]:
    from .byte_file import prepare_byte_file   # imported here: byte_file.py builds on this module

    return prepare_byte_file(root, **kw)


CORPORA: dict[str, Callable[..., dict[str, Path]]] = {
    "enwik8": prepare_enwik8,
    "wiki_sample": prepare_wiki_sample,
    "generated": prepare_generated,
    "parity_wiki1m": prepare_parity_wiki1m,
    "byte_file": _prepare_byte_file,
}


def _check_name(name: str) -> None:
    if name not in CORPORA:
        raise ValueError(f"data.name: unknown dataset {name!r}; choose one of {list(CORPORA)}")


def prepare(name: str, root: str | os.PathLike, **kw) -> dict[str, Path]:
    """Prepare corpus `name` under `root` (idempotent) and return its split files."""
    _check_name(name)
    return CORPORA[name](root, **kw)


def corpus_dir(
    name: str, root: str | os.PathLike, n_bytes: int = GENERATED_DEFAULT_BYTES, seed: int = 0
) -> Path:
    """Directory holding the prepared splits of `name` (generated corpora are keyed by size and seed)."""
    _check_name(name)
    base = Path(os.path.abspath(root))
    return base / (f"generated_{n_bytes}_{seed}" if name == "generated" else name)


def prepared_splits(name: str, root: str | os.PathLike, **kw) -> dict[str, Path]:
    """Split files of an already prepared corpus, checked against meta.json sizes; never prepares.

    Used on every rank in `setup()`, where preparing would race with rank 0.
    """
    out_dir = corpus_dir(name, root, **kw)
    command = _command(name, root, **kw)
    try:
        meta = json.loads((out_dir / META_NAME).read_text())
    except (OSError, ValueError):
        raise DataUnavailableError(f"{out_dir} holds no prepared corpus (missing or bad {META_NAME}); run: {command}")
    paths = _split_paths(out_dir)
    for split, path in paths.items():
        expected = meta["splits"][split]["n_bytes"]
        actual = path.stat().st_size if path.is_file() else None
        if actual != expected:
            raise DataIntegrityError(
                f"{path}: expected {expected} bytes per {META_NAME}, found {actual}; run: {command}"
            )
    return paths
