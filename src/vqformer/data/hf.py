"""Corpora read through Hugging Face `datasets` (docs/data.md §7): the hub, its cache, or a local copy.

`load_splits` returns a `DatasetDict` with the requested splits from one of:

* `source="hub"`: `datasets.load_dataset(hub_id, hub_config)` into the HF cache: `$HF_DATASETS_CACHE` when set,
  else `<root>/hf_cache` (under `paths.data_dir`), so a second run, or a machine that is offline
  (`HF_DATASETS_OFFLINE=1`) after one online run, reads the cache;
* `source="local"`: `local_path` is a folder written by `DatasetDict.save_to_disk`, or a folder holding the
  dataset's parquet / arrow files with the split in the file or folder name (`train-00000-of-00002.parquet`,
  `validation/…`), as in a clone of the hub repository.

Any failure (no network, a missing cache, a bad local copy) becomes one `DataUnavailableError` naming the
dataset, its hub id and how to place a local copy.
"""

from __future__ import annotations

import os
from pathlib import Path

from .files import DataUnavailableError

__all__ = ["HF_CACHE", "SOURCES", "cache_dir", "default_local_path", "load_splits", "local_copy_help"]

SOURCES = ("hub", "local")
HF_CACHE = "hf_cache"
_SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}


def cache_dir(root: str | os.PathLike) -> Path:
    """The HF datasets cache: `$HF_DATASETS_CACHE` if set, else `<root>/hf_cache`."""
    env = os.environ.get("HF_DATASETS_CACHE")
    return Path(env) if env else Path(os.path.abspath(root)) / HF_CACHE


def default_local_path(dataset: str, root: str | os.PathLike) -> Path:
    """Where the error message suggests placing a local copy: `<root>/<name>/hf_local` (e.g. `wikitext103`)."""
    return Path(os.path.abspath(root)) / "".join(c for c in dataset.lower() if c.isalnum()) / "hf_local"


def _config_args(hub_id: str, hub_config: str | None) -> str:
    return repr(hub_id) + (f", {hub_config!r}" if hub_config else "")


def local_copy_help(dataset: str, hub_id: str, hub_config: str | None, local_path: str | os.PathLike,
                    keys: str = "data.") -> str:
    """How to place a local copy of a hub dataset at `local_path` (the tail of every DataUnavailableError here);
    `keys` is where the config holds `source` and `local_path` (`data.`, or `data.generator.` for LRA)."""
    args = _config_args(hub_id, hub_config)
    return (f"To use it offline, place a local copy at {local_path} and run with {keys}source=local "
            f"{keys}local_path={local_path}: on a machine with network, run\n"
            f"    python -c \"import datasets; datasets.load_dataset({args}).save_to_disk('{local_path}')\"\n"
            f"and copy that folder here, or download the hub repository's parquet files "
            f"(https://huggingface.co/datasets/{hub_id}{'/tree/main/' + hub_config if hub_config else ''}) into "
            f"{local_path}, keeping the split in each file name; or run once online to fill the HF cache at "
            f"$HF_DATASETS_CACHE.")


def _data_files(folder: Path, splits: tuple[str, ...]) -> tuple[str, dict[str, list[str]]]:
    """The parquet (else arrow) files of each split under `folder`, matched by the split's name in their path."""
    for builder, ext in (("parquet", ".parquet"), ("arrow", ".arrow")):
        files = sorted(p for p in folder.rglob(f"*{ext}") if not p.name.startswith("."))
        if not files:
            continue
        out = {}
        for split in splits:
            names = _SPLIT_NAMES.get(split, (split,))
            out[split] = [str(p) for p in files
                          if any(n in part.split(".")[0].replace("_", "-").split("-")
                                 for part in p.relative_to(folder).parts for n in names)]
        return builder, out
    return "", {}


def _load_local(path: Path, splits: tuple[str, ...], cache: Path):
    import datasets

    if (path / "dataset_dict.json").is_file():
        return datasets.load_from_disk(str(path))
    builder, files = _data_files(path, splits)
    missing = [s for s in splits if not files.get(s)]
    if not builder or missing:
        raise FileNotFoundError(f"{path} is neither a save_to_disk folder (no dataset_dict.json) nor a folder of "
                                f"parquet/arrow files for the splits {missing or list(splits)}")
    return datasets.load_dataset(builder, data_files=files, cache_dir=str(cache))


def load_splits(dataset: str, root: str | os.PathLike, hub_id: str, hub_config: str | None = None,
                source: str = "hub", local_path: str | os.PathLike | None = None,
                splits: tuple[str, ...] = ("train", "validation", "test"), revision: str | None = None,
                keys: str = "data."):
    """`DatasetDict` of `splits` of `dataset`, from the hub through the HF cache or from `local_path`."""
    if source not in SOURCES:
        raise ValueError(f"{keys}source={source!r} is not a datasets source here; choose one of {list(SOURCES)}")
    if source == "local" and not local_path:
        raise ValueError(f"{keys}source=local needs {keys}local_path (a save_to_disk folder or parquet files of {dataset})")
    local = Path(os.path.abspath(local_path or default_local_path(dataset, root)))
    cache = cache_dir(root)
    try:
        import datasets

        if source == "local":
            dsd = _load_local(local, splits, cache)
        else:
            dsd = datasets.load_dataset(hub_id, hub_config, revision=revision, cache_dir=str(cache))
        missing = [s for s in splits if s not in dsd]
        if missing:
            raise KeyError(f"no split {missing} (it has {list(dsd)})")
    except Exception as e:   # one message for every way a source can fail: offline, no cache, a bad copy
        where = f"local copy {local}" if source == "local" else f"hub ({cache} as the cache)"
        reason = " ".join(str(e).split())[:300]
        raise DataUnavailableError(f"{dataset} (hub id {hub_id}{', config ' + hub_config if hub_config else ''}) "
                                   f"could not be loaded from the {where}: {type(e).__name__}: {reason}\n"
                                   + local_copy_help(dataset, hub_id, hub_config, local, keys)) from e
    return datasets.DatasetDict({s: dsd[s] for s in splits})


def lazy_splits(dataset: str, root, hub_id: str, hub_config: str | None, source: str, local_path,
                splits: tuple[str, ...], revision: str | None):
    """(load, locate) for a preparer: ``load()`` reads the splits once, on first use; ``locate()`` names where
    they come from, or None when they cannot be read (the manifest check then keeps what is prepared or
    stops naming the damaged file)."""
    loaded: dict = {}

    def load():
        if "dsd" not in loaded:
            loaded["dsd"] = load_splits(dataset, root, hub_id, hub_config, source, local_path, splits, revision)
        return loaded["dsd"]

    def locate() -> str | None:
        try:
            load()
        except DataUnavailableError:
            return None
        return f"{hub_id}{' ' + hub_config if hub_config else ''} ({source})"

    return load, locate
