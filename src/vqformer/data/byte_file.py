"""Your own byte file as a corpus: ``data=byte_file data.path=/some/file.txt [data.split=[0.9,0.05,0.05]]``.

The file is cut by index at the split fractions, in exact decimal arithmetic (a 1,000,000-byte file at
[0.9, 0.05, 0.05] gives exactly 900k / 50k / 50k bytes), and prepared like the built-in corpora
(docs/data_integrity.md): `{train,validation,test}.bin` written atomically, then `meta.json` with the
source's path and sha256 and each split's size and sha256, re-hashed when a run starts. The folder is
`<root>/byte_file/<file stem>-<first 16 hex digits of its sha256>/`: keyed by content, so a file that
changed is never read through the splits of its old content. The run records the source's sha256 too
(``data.sha256`` in its config.yaml and ``data.json``, data/identity.py).
"""
from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .bytes_corpus import META_NAME, _intact, _split_paths, _write_splits
from .files import DataIntegrityError, DataUnavailableError, sha256_file
from .lm_datamodule import ByteLMDataModule

__all__ = ["DEFAULT_SPLIT", "ByteFileDataModule", "byte_file_data", "byte_file_dir", "byte_file_identity", "fraction_bounds",
           "prepare_byte_file", "source_sha256", "split_fractions"]

DEFAULT_SPLIT = (0.9, 0.05, 0.05)
_SHA256 = re.compile(r"[0-9a-f]{64}")


def split_fractions(split) -> tuple[float, float, float]:
    """`data.split` checked: three finite fractions >= 0 (train, validation, test) that sum to 1."""
    ok = isinstance(split, Sequence) and not isinstance(split, str) or OmegaConf.is_list(split)
    values = list(split) if ok else []
    if len(values) != 3 or any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in values):
        raise ValueError(f"data.split must be three fractions [train, validation, test], got {split!r}")
    values = [float(v) for v in values]
    if any(not math.isfinite(v) or v < 0 for v in values) or abs(sum(values) - 1) > 1e-9:
        raise ValueError(f"data.split={values}: the fractions must be >= 0 and sum to 1")
    return tuple(values)


def fraction_bounds(n: int, fractions: Sequence[float]) -> dict[str, tuple[int, int]]:
    """[start, end) of each split: floor(n·f_train), floor(n·(f_train + f_val)), in exact decimal arithmetic
    (Fraction of the shortest repr, so 0.9 is 9/10 and not the float just above it)."""
    f = [Fraction(repr(float(x))) for x in fractions]
    a = min(n, math.floor(n * f[0]))
    b = min(n, max(a, math.floor(n * (f[0] + f[1]))))
    return {"train": (0, a), "validation": (a, b), "test": (b, n)}


def source_sha256(path: str | os.PathLike, pinned: str | None = None) -> str:
    """The sha256 of a byte file; with `pinned` (data.sha256), a mismatch is an error naming both hashes."""
    src = Path(path)
    if not src.is_file():
        raise DataUnavailableError(f"data.path={path}: no such file")
    actual = sha256_file(src)
    if pinned is not None and actual != pinned:
        raise DataIntegrityError(
            f"data.path={path} has sha256 {actual}, but data.sha256 pins {pinned} (the content this run was "
            "configured or trained on). Restore that file, or drop data.sha256 and start a new run on the new content")
    return actual


def byte_file_identity(path: str | os.PathLike) -> dict:
    """Absolute path, sha256 and prepared-folder name of a byte file (for records of what was scored)."""
    src = os.path.abspath(os.path.expanduser(str(path)))
    sha = source_sha256(src)
    return {"path": src, "sha256": sha, "dir": byte_file_dir(".", src, sha).name}


def _check_sha(sha256: str | None) -> str | None:
    if sha256 is not None and not (isinstance(sha256, str) and _SHA256.fullmatch(sha256)):
        raise ValueError(f"data.sha256 must be null or 64 lowercase hex digits, got {sha256!r}")
    return sha256


def byte_file_dir(root: str | os.PathLike, path: str | os.PathLike, sha256: str) -> Path:
    """`<root>/byte_file/<stem>-<sha256[:16]>`: the stem says what it is, the hash which content."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem)[:40] or "file"
    return Path(os.path.abspath(root)) / "byte_file" / f"{stem}-{sha256[:16]}"


def _source(sha256: str, fractions: Sequence[float]) -> dict:
    # What the prepared splits are made of: the content and the cut. The path is recorded beside it only,
    # so the same content reached by another path reuses the prepared splits.
    return {"kind": "byte_file", "sha256": sha256, "split": list(fractions)}


def prepare_byte_file(root: str | os.PathLike, path: str | os.PathLike | None = None, split=DEFAULT_SPLIT,
                      sha256: str | None = None, verify: bool = False) -> dict[str, Path]:
    """Prepare `path` cut at `split` under `byte_file_dir` (idempotent) and return its split files.

    With `sha256` (pinned), intact prepared splits of that content are used even when the source has gone;
    anything else must come from a source with exactly that hash.
    """
    if path is None or not str(path):
        raise ValueError("data.path is required for data.name=byte_file: the file to train on, "
                         "e.g. data=byte_file data.path=/some/file.txt")
    fractions = split_fractions(split)
    src = Path(os.path.abspath(os.path.expanduser(str(path))))
    sha = _check_sha(sha256) or source_sha256(src)
    out_dir = byte_file_dir(root, src, sha)
    fix = f"put the file with sha256 {sha} back at {src} and run again"
    if _intact(out_dir, _source(sha, fractions), verify, lambda: str(src) if src.is_file() else None, fix):
        return _split_paths(out_dir)
    if not src.is_file():
        raise DataUnavailableError(f"data.path={src}: no such file, and {out_dir} holds no prepared copy of "
                                   f"its content (sha256 {sha})")
    data = src.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha:
        raise DataIntegrityError(f"data.path={src} has sha256 {actual}, but data.sha256 pins {sha}; restore that "
                                 "file, or drop data.sha256 and start a new run on the new content")
    if not data:
        raise ValueError(f"data.path={src} is empty")
    return _write_splits(out_dir, data, _source(sha, fractions), fraction_bounds(len(data), fractions),
                         source_path=str(src))


def _prepared(out_dir: Path) -> dict[str, Path]:
    """Split files of an already prepared byte file, sizes checked against meta.json; never prepares."""
    try:
        meta = json.loads((out_dir / META_NAME).read_text())
    except (OSError, ValueError):
        raise DataUnavailableError(f"{out_dir} holds no prepared byte file (missing or bad {META_NAME}); "
                                   "prepare_data() prepares it") from None
    paths = _split_paths(out_dir)
    for split, path in paths.items():
        expected, actual = meta["splits"][split]["n_bytes"], (path.stat().st_size if path.is_file() else None)
        if actual != expected:
            raise DataIntegrityError(f"{path}: expected {expected} bytes per {META_NAME}, found {actual}")
    return paths


class ByteFileDataModule(ByteLMDataModule):
    """Byte-level LM data from any local file; windows, exact resume and evaluation as for enwik8."""

    def __init__(self, path: str | None = None, split=DEFAULT_SPLIT, sha256: str | None = None,
                 name: str = "byte_file", **kw):
        if path is None or not str(path) or str(path) == "???":
            raise ValueError("data.path is required for data=byte_file: the file to train on, "
                             "e.g. data=byte_file data.path=/some/file.txt")
        self.path = os.path.abspath(os.path.expanduser(str(path)))
        self.fractions = split_fractions(split)
        self.sha256 = _check_sha(sha256)
        self._dir: Path | None = None
        super().__init__(name=name, **kw)

    @staticmethod
    def _check_corpus(name: str, n_bytes: int | None) -> None:
        if name != "byte_file":
            raise ValueError(f"data.name must be byte_file with ByteFileDataModule, got {name!r}")
        if n_bytes is not None:
            raise ValueError(f"data.n_bytes only applies to data.name=generated, got {n_bytes!r} for byte_file")

    def _prepare(self) -> None:
        paths = prepare_byte_file(self.root, self.path, self.fractions, self.sha256, verify=True)
        self._dir = paths["train"].parent

    def _prepared_paths(self) -> dict[str, Path]:
        if self._dir is None:   # another rank: the runner pins data.sha256, else the file is hashed here
            self._dir = byte_file_dir(self.root, self.path, self.sha256 or source_sha256(self.path))
        return _prepared(self._dir)

    def setup(self, stage: str | None = None) -> None:
        if self._paths is not None:
            return
        needed = {"validate": ("validation",), "test": ("test",)}.get(stage)
        if needed is None:   # fit (or all): a train split of whole windows and a validation split
            super().setup(stage)
            needed = ("validation",)
            paths = self._paths
        else:                # scoring only: the train split may be empty (data.split=[0,0,1] scores the file)
            paths = self._prepared_paths()
        for split in needed:
            if self._n_tokens(paths[split]) == 0:
                self._paths = None
                raise ValueError(f"data.split={list(self.fractions)} leaves the {split} split of {self.path} empty")
        self._paths = paths


def byte_file_data(run_data: DictConfig, path: str, split=None) -> DictConfig:
    """A byte-level run's data config pointed at another byte file (same sequence length, batch sizes and
    data root), for scoring a checkpoint on it; `split` defaults to the run's own, else [0.9, 0.05, 0.05]."""
    target = str(run_data.get("_target_", ""))
    if not target.endswith((".ByteLMDataModule", ".ByteFileDataModule")):
        raise ValueError(f"data.path: this run trains on {run_data.get('name')!r} ({target}), not on bytes; "
                         "only a byte-level model can score a byte file")
    if split is None:
        split = run_data.get("split") if run_data.get("name") == "byte_file" else DEFAULT_SPLIT
    keep = ("root", "sequence_len", "batch_size", "eval_batch_size", "num_workers", "seed", "limit_eval_bytes",
            "eval_sequence_len")
    return OmegaConf.create({"_target_": f"{__name__}.ByteFileDataModule", "name": "byte_file",
                             "path": os.path.abspath(os.path.expanduser(str(path))),
                             "split": list(split_fractions(split)), "sha256": None,
                             **{k: run_data.get(k) for k in keep}})
