"""The data a run trains on is part of the run's identity (docs/data_integrity.md).

Run directories are keyed by the command's overrides (docs/conventions.md §3), so `data.path=...` already
separates two files; but the same path with new content would find the old run's DONE marker or
last.ckpt. A run therefore records what it trains on in `<run_dir>/data.json` when it starts, and a later
command whose data differs is refused, naming both, before any work: a finished run is never reported
for data it did not see, and a checkpoint is never resumed on other data.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from .files import atomic_write_text

__all__ = ["RECORD", "DataIdentityError", "data_identity", "record_data_identity"]

RECORD = "data.json"


class DataIdentityError(ValueError):
    """A run directory holds a run on other data than the command gives."""


def _byte_file(cfg: DictConfig) -> tuple[str, dict]:
    from .byte_file import source_sha256, split_fractions

    if OmegaConf.is_missing(cfg.data, "path") or not cfg.data.get("path"):
        raise ValueError("data.path is required for data=byte_file: the file to train on, "
                         "e.g. data=byte_file data.path=/some/file.txt")
    path = os.path.abspath(os.path.expanduser(str(cfg.data.path)))
    pinned = cfg.data.get("sha256")
    if pinned and not Path(path).is_file():
        sha = pinned   # the source has gone: its prepared splits (keyed by this hash) may still be there
    else:
        sha = source_sha256(path, pinned)
    return path, {"name": "byte_file", "sha256": sha, "split": list(split_fractions(cfg.data.get("split")))}


def data_identity(cfg: DictConfig) -> dict:
    """What the run trains on: the corpus name; for a byte file also its content's sha256 and the split.

    A built-in corpus is fixed by its name (and its overrides) and checked against its published checksum
    when prepared; a byte file is whatever its path holds now, so its content is hashed.
    """
    if cfg.data.get("name") == "byte_file":
        return _byte_file(cfg)[1]
    return {"name": str(cfg.data.get("name"))}


def _describe(ident: dict, path: str | None) -> str:
    if ident.get("sha256"):
        return f"{path or 'a byte file'} with sha256 {ident['sha256']} (split {ident.get('split')})"
    return f"data.name={ident.get('name')}"


def record_data_identity(cfg: DictConfig, run_dir: Path) -> dict:
    """Refuse `run_dir` if it recorded other data; else record this data there and pin it in `cfg`.

    For a byte file, `cfg.data.path` becomes absolute and `cfg.data.sha256` the content's hash, so the
    run's config.yaml names both and the data module prepares exactly that content.
    """
    path = None
    if cfg.data.get("name") == "byte_file":
        path, ident = _byte_file(cfg)
    else:
        ident = data_identity(cfg)
    record = Path(run_dir) / RECORD
    if record.exists():
        old = json.loads(record.read_text())
        if old.get("identity") != ident:
            raise DataIdentityError(
                f"{run_dir} holds a run on other data: it recorded {_describe(old.get('identity') or {}, old.get('path'))} "
                f"({record}), this command gives {_describe(ident, path)}. A run directory is never reused or "
                f"resumed on other data. To train on this data, start a new run: add name=<a new name> or "
                f"hydra.run.dir=<a new folder> to the command, or delete {run_dir} to discard the old run.")
    else:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(record, json.dumps({"identity": ident, "path": path}, indent=1) + "\n")
    if path is not None:
        with open_dict(cfg):
            cfg.data.path, cfg.data.sha256 = path, ident["sha256"]
    return ident
