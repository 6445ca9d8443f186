"""ImageNet64 as pixel sequences, and its offline stand-ins (docs/transformer_vq.md §4.3 ImageNet64, §4.4).

An image is one sequence: its pixels flattened row-major H×W×C (R, G, B interleaved per pixel) =
12,288 bytes at 64×64, each byte b the token b + 3, EOS as the first input. Splits (the paper's protocol):
train = the first 1,200,000 images of the official train set, validation = the rest of it, test = the
official validation set (50,000). Metric: bits per byte (bits/dim) over every subpixel of every image.

Sources (docs/data.md §3):

* `imagenet64`: downsampled ImageNet (Chrabaszcz et al., box-resized), a manual download after registration
  at image-net.org: `Imagenet64_train_part1_npz.zip`, `Imagenet64_train_part2_npz.zip`,
  `Imagenet64_val_npz.zip` (or their members `train_data_batch_{1..10}.npz`, `val_data.npz`) placed in
  `<root>/imagenet64/raw/`. Each npz holds `data` (N, 12288) uint8 in C×H×W order, converted here.
* `generated_images`: seeded synthetic images (gradients, rectangles, discs) at any resolution, for tests.
* `fashion_mnist`: the Debian `dataset-fashion-mnist` package, grey 28×28 resized (nearest) and replicated
  to 3 channels, split 55,000 / 5,000 / 10,000 like the paper's protocol. Both are stand-ins, not ImageNet.

Prepared layout, like the byte corpora: `<dir>/{train,validation,test}.bin` (raw uint8, no +3 offset) and
`meta.json` (written last) with each split's images, bytes and sha256.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ..progress import progress
from .files import (DataIntegrityError, DataUnavailableError, atomic_path, atomic_write_bytes, check_prepared,
                    split_entries)
from .lm_datamodule import ByteLMDataModule, _positive_int

__all__ = ["IMAGE_CORPORA", "ImageLMDataModule", "chw_to_hwc", "generate_images", "image_dir", "image_tokens",
           "prepare_fashion_mnist", "prepare_generated_images", "prepare_imagenet64", "prepared_images"]

SPLITS = ("train", "validation", "test")
META_NAME = "meta.json"
META_VERSION = 1

IMAGENET64_ZIPS = ("Imagenet64_train_part1_npz.zip", "Imagenet64_train_part2_npz.zip", "Imagenet64_val_npz.zip")
IMAGENET64_N_TRAIN = 1_200_000      # the paper's train split; the rest of the official train set is validation
IMAGENET64_TRAIN_TOTAL = 1_281_167  # images in the official train set
IMAGENET64_TEST = 50_000            # the official validation set
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_N_TRAIN = 55_000
GENERATED_COUNTS = {"train": 2000, "validation": 100, "test": 100}


def image_tokens(resolution: int) -> int:
    return resolution * resolution * 3


def chw_to_hwc(data: np.ndarray, resolution: int) -> np.ndarray:
    """(N, C·H·W) rows in C×H×W order -> (N, H·W·C) rows, pixels row-major with R, G, B interleaved."""
    n = len(data)
    return np.ascontiguousarray(data.reshape(n, 3, resolution, resolution).transpose(0, 2, 3, 1)).reshape(n, -1)


def _paths(out_dir: Path) -> dict[str, Path]:
    return {s: out_dir / f"{s}.bin" for s in SPLITS}


def _intact(out_dir: Path, source: dict, verify: bool, locate_source, fix: str) -> bool:
    """True if the split files match meta.json (sizes always, sha256 if `verify`); False: prepare them (again).
    Damaged files without a source stop with a DataIntegrityError (files.check_prepared)."""
    paths = _paths(out_dir)
    return check_prepared(out_dir / META_NAME, META_VERSION, source, lambda meta: split_entries(meta, paths),
                          locate_source, fix, verify) is not None


def _command(name: str, root, resolution: int) -> str:
    command = f"python -m vqformer.data.prepare {name} --root {os.path.abspath(root)}"
    return command if name == "imagenet64" else command + f" --resolution {resolution}"


def _write_splits(out_dir: Path, splits: dict[str, Iterable[np.ndarray]], source: dict, resolution: int):
    """Stream each split's (N, H·W·3) uint8 chunks to its file; meta.json last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / META_NAME).unlink(missing_ok=True)
    info = {}
    for split, path in _paths(out_dir).items():
        sha, n = hashlib.sha256(), 0
        with atomic_path(path) as tmp, open(tmp, "wb") as f, \
                progress(desc=f"{out_dir.name} {split}", unit="img") as bar:
            for chunk in splits[split]:
                bar.update(len(chunk))
                assert chunk.dtype == np.uint8 and chunk.shape[1:] == (image_tokens(resolution),), chunk.shape
                data = np.ascontiguousarray(chunk).tobytes()
                f.write(data)
                sha.update(data)
                n += len(chunk)
        info[split] = {"file": path.name, "n_images": n, "n_bytes": n * image_tokens(resolution),
                       "sha256": sha.hexdigest()}
    meta = {"version": META_VERSION, "source": source, "resolution": resolution,
            "format": "raw uint8, one image = H*W*3 bytes row-major (R,G,B per pixel), no vocabulary offset",
            "splits": info}
    atomic_write_bytes(out_dir / META_NAME, (json.dumps(meta, indent=2) + "\n").encode())
    return _paths(out_dir)


# ---------------------------------------------------------------- ImageNet64


def _npz_files(raw_dir: Path) -> tuple[list[Path], Path]:
    """The ten train batches (in batch order) and val_data.npz, extracted from the zips if needed."""
    def batches():
        found = {int(m.group(1)): p for p in raw_dir.rglob("train_data_batch_*.npz")
                 if (m := re.fullmatch(r"train_data_batch_(\d+)\.npz", p.name))}
        return [found[k] for k in sorted(found)], next(iter(raw_dir.rglob("val_data.npz")), None)

    train, val = batches()
    if len(train) < 10 or val is None:
        for name in IMAGENET64_ZIPS:
            zip_path = raw_dir / name
            if not zip_path.is_file():
                continue
            try:
                with zipfile.ZipFile(zip_path) as zf:
                    for member in zf.namelist():
                        dest = raw_dir / Path(member).name
                        if member.endswith(".npz") and not dest.exists():
                            with atomic_path(dest) as tmp, zf.open(member) as src, open(tmp, "wb") as out:
                                while chunk := src.read(1 << 24):
                                    out.write(chunk)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise DataIntegrityError(f"{zip_path}: corrupt or truncated zip ({e}); download it again") from e
        train, val = batches()
    if len(train) != 10 or val is None:
        raise DataUnavailableError(
            f"ImageNet64 is not available under {raw_dir}: it needs a manual download after registering at "
            f"https://image-net.org/download-images (\"Downsampled ImageNet 64x64\"). Place "
            f"{', '.join(IMAGENET64_ZIPS)} (or their members train_data_batch_1..10.npz and val_data.npz) in\n"
            f"    {raw_dir}/\nthen run: python -m vqformer.data.prepare imagenet64 --root {raw_dir.parent.parent} "
            f"(found {len(train)} train batches, val_data.npz {'present' if val else 'missing'})")
    return train, val


def _npz_images(path: Path) -> np.ndarray:
    try:
        with np.load(path) as z:
            data = z["data"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise DataIntegrityError(f"{path}: unreadable ImageNet64 batch ({e}); extract it again") from e
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != image_tokens(64):
        raise DataIntegrityError(f"{path}: 'data' must be (N, 12288) uint8, got {data.shape} {data.dtype}")
    return chw_to_hwc(data, 64)


def _train_and_validation(batches: list[Path], n_train: int) -> tuple[Iterator[np.ndarray], Iterator[np.ndarray]]:
    """Two lazy streams over the train batches: the first `n_train` images, then the rest.

    Each stream reads the batches itself (the files are read twice) so that at most one batch is in memory.
    """
    def stream(keep_first: bool):
        seen = 0
        for path in batches:
            images = _npz_images(path)
            lo, hi = seen, seen + len(images)
            seen = hi
            cut = min(max(n_train - lo, 0), len(images))
            part = images[:cut] if keep_first else images[cut:]
            if len(part):
                yield part
    return stream(True), stream(False)


def prepare_imagenet64(root: str | os.PathLike, resolution: int = 64, verify: bool = False,
                       n_train: int = IMAGENET64_N_TRAIN) -> dict[str, Path]:
    """Convert the npz batches under `<root>/imagenet64/raw/` into `<root>/imagenet64/{split}.bin`."""
    if resolution != 64:
        raise ValueError(f"data.resolution must be 64 for imagenet64, got {resolution!r}")
    out_dir = Path(os.path.abspath(root)) / "imagenet64"
    source = {"kind": "imagenet64", "n_train": n_train, "order": "train_data_batch_1..10 then val_data"}

    def locate() -> str | None:   # presence only: _npz_files would extract the zips
        raw = out_dir / "raw"
        npz = len(list(raw.rglob("train_data_batch_*.npz"))) >= 10 and any(raw.rglob("val_data.npz"))
        return str(raw) if npz or all((raw / name).is_file() for name in IMAGENET64_ZIPS) else None

    fix = (f"place {', '.join(IMAGENET64_ZIPS)} (or their npz members) in {out_dir / 'raw'} and run "
           f"`{_command('imagenet64', root, 64)}`")
    if _intact(out_dir, source, verify, locate, fix):
        return _paths(out_dir)
    train, val = _npz_files(out_dir / "raw")
    first, rest = _train_and_validation(train, n_train)
    paths = _write_splits(out_dir, {"train": first, "validation": rest, "test": iter([_npz_images(val)])},
                          source, 64)
    meta = json.loads((out_dir / META_NAME).read_text())["splits"]
    if meta["train"]["n_images"] != n_train:
        (out_dir / META_NAME).unlink()
        raise DataIntegrityError(f"{out_dir / 'raw'}: the train batches hold only "
                                 f"{meta['train']['n_images'] + meta['validation']['n_images']} images, fewer than "
                                 f"the {n_train} of the train split (the official set has {IMAGENET64_TRAIN_TOTAL})")
    return paths


# ---------------------------------------------------------------- stand-ins


def generate_images(n: int, resolution: int, seed: int) -> np.ndarray:
    """(n, H·W·3) uint8 images: a colour gradient background with a rectangle and a disc on top."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(0, 1, resolution), np.linspace(0, 1, resolution), indexing="ij")
    c0, c1 = rng.uniform(0, 255, (2, n, 1, 1, 3))
    angle = rng.uniform(0, 2 * np.pi, (n, 1, 1, 1))
    t = (np.cos(angle) * x[None, :, :, None] + np.sin(angle) * y[None, :, :, None] + 1.5) / 3
    img = c0 + (c1 - c0) * t
    r0, r1 = np.sort(rng.integers(0, resolution, (2, n)), axis=0)
    q0, q1 = np.sort(rng.integers(0, resolution, (2, n)), axis=0)
    rect = ((y[None] * (resolution - 1) >= r0[:, None, None]) & (y[None] * (resolution - 1) <= r1[:, None, None])
            & (x[None] * (resolution - 1) >= q0[:, None, None]) & (x[None] * (resolution - 1) <= q1[:, None, None]))
    img = np.where(rect[..., None], rng.uniform(0, 255, (n, 1, 1, 3)), img)
    cy, cx, rad = rng.uniform(0, 1, (3, n, 1, 1))
    disc = (y[None] - cy) ** 2 + (x[None] - cx) ** 2 <= (0.3 * rad) ** 2
    img = np.where(disc[..., None], rng.uniform(0, 255, (n, 1, 1, 3)), img)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8).reshape(n, -1)


def prepare_generated_images(root: str | os.PathLike, resolution: int = 64, verify: bool = False,
                             counts: dict[str, int] | None = None, seed: int = 0) -> dict[str, Path]:
    """Synthetic images (a stand-in, not ImageNet) under `<root>/generated_images_r<resolution>/`."""
    _positive_int("resolution", resolution)
    counts = dict(counts or GENERATED_COUNTS)
    out_dir = image_dir("generated_images", root, resolution)
    source = {"kind": "generated_images", "counts": counts, "seed": seed, "version": 1}
    fix = f"delete {out_dir} and run `{_command('generated_images', root, resolution)}`"
    if _intact(out_dir, source, verify, lambda: f"the image generator (seed {seed})", fix):
        return _paths(out_dir)
    splits = {s: iter([generate_images(counts[s], resolution, seed * 3 + i)]) for i, s in enumerate(SPLITS)}
    return _write_splits(out_dir, splits, source, resolution)


def _read_idx_images(path: Path) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataIntegrityError(f"{path}: cannot decompress ({e}); reinstall dataset-fashion-mnist") from e
    magic, n, rows, cols = np.frombuffer(raw[:16], dtype=">u4")
    if magic != 2051 or len(raw) != 16 + n * rows * cols:
        raise DataIntegrityError(f"{path}: not an IDX image file (magic {magic}, {len(raw)} bytes)")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows, cols)


def _grey_to_rgb(images: np.ndarray, resolution: int) -> np.ndarray:
    """Nearest-neighbour resize of (N, h, w) grey images to resolution², replicated to R = G = B."""
    n, h, w = images.shape
    rows = (np.arange(resolution) * h) // resolution
    cols = (np.arange(resolution) * w) // resolution
    out = images[:, rows][:, :, cols]
    return np.repeat(out[..., None], 3, axis=-1).reshape(n, -1)


def prepare_fashion_mnist(root: str | os.PathLike, resolution: int = 64, verify: bool = False) -> dict[str, Path]:
    """Fashion-MNIST as RGB images (a stand-in, not ImageNet) under `<root>/fashion_mnist_r<resolution>/`."""
    _positive_int("resolution", resolution)
    train_path, test_path = (FASHION_MNIST_DIR / f"{s}-images-idx3-ubyte.gz" for s in ("train", "t10k"))
    out_dir = image_dir("fashion_mnist", root, resolution)
    source = {"kind": "fashion_mnist", "dir": str(FASHION_MNIST_DIR), "n_train": FASHION_MNIST_N_TRAIN}
    fix = f"apt-get install --reinstall dataset-fashion-mnist and run `{_command('fashion_mnist', root, resolution)}`"
    located = lambda: str(FASHION_MNIST_DIR) if train_path.is_file() and test_path.is_file() else None  # noqa: E731
    if _intact(out_dir, source, verify, located, fix):
        return _paths(out_dir)
    if not (train_path.is_file() and test_path.is_file()):
        raise DataUnavailableError(f"Fashion-MNIST is not installed at {FASHION_MNIST_DIR}: "
                                   "apt-get install dataset-fashion-mnist (or use data.name=generated_images)")
    train = _grey_to_rgb(_read_idx_images(train_path), resolution)
    test = _grey_to_rgb(_read_idx_images(test_path), resolution)
    splits = {"train": iter([train[:FASHION_MNIST_N_TRAIN]]), "validation": iter([train[FASHION_MNIST_N_TRAIN:]]),
              "test": iter([test])}
    return _write_splits(out_dir, splits, source, resolution)


IMAGE_CORPORA = {"imagenet64": prepare_imagenet64, "generated_images": prepare_generated_images,
                 "fashion_mnist": prepare_fashion_mnist}


def image_dir(name: str, root: str | os.PathLike, resolution: int = 64) -> Path:
    if name not in IMAGE_CORPORA:
        raise ValueError(f"data.name: unknown image corpus {name!r}; choose one of {list(IMAGE_CORPORA)}")
    base = Path(os.path.abspath(root))
    return base / "imagenet64" if name == "imagenet64" else base / f"{name}_r{resolution}"


def prepared_images(name: str, root: str | os.PathLike, resolution: int = 64) -> dict[str, Path]:
    """Split files of an already prepared image corpus, sizes checked against meta.json; never prepares."""
    out_dir = image_dir(name, root, resolution)
    command = _command(name, root, resolution)
    try:
        meta = json.loads((out_dir / META_NAME).read_text())
    except (OSError, ValueError):
        raise DataUnavailableError(f"{out_dir} holds no prepared images (missing or bad {META_NAME}); run: {command}")
    if meta["resolution"] != resolution:
        raise DataIntegrityError(f"{out_dir}: prepared at resolution {meta['resolution']}, not {resolution}")
    for split, path in _paths(out_dir).items():
        expected, actual = meta["splits"][split]["n_bytes"], path.stat().st_size if path.is_file() else None
        if actual != expected:
            raise DataIntegrityError(f"{path}: expected {expected} bytes per {META_NAME}, found {actual}; "
                                     f"run: {command}")
    return _paths(out_dir)


class ImageLMDataModule(ByteLMDataModule):
    """Images as byte sequences: one training window = one whole image (aligned, EOS first), one eval sequence
    = one image scored from a fresh state; `limit_eval_bytes` is rounded up to whole images."""

    shift_windows = False

    def __init__(self, name: str, root: str, sequence_len: int, batch_size: int, eval_batch_size: int | None = None,
                 num_workers: int = 0, seed: int = 0, resolution: int = 64, limit_eval_bytes: int | None = None,
                 eval_sequence_len: int | None = None, n_bytes: int | None = None):
        super().__init__(name, root, sequence_len, batch_size, eval_batch_size, num_workers, seed, n_bytes,
                         limit_eval_bytes, eval_sequence_len)
        _positive_int("resolution", resolution)
        self.resolution = int(resolution)
        n = image_tokens(self.resolution)
        if self.sequence_len != n or self.eval_sequence_len != n:
            raise ValueError(f"data.sequence_len={self.sequence_len} and data.eval_sequence_len="
                             f"{self.eval_sequence_len} must both be one image: {n} tokens at data.resolution="
                             f"{self.resolution}")
        self._corpus_kw = {"resolution": self.resolution}

    @staticmethod
    def _check_corpus(name: str, n_bytes: int | None) -> None:
        if name not in IMAGE_CORPORA:
            raise ValueError(f"data.name: unknown image corpus {name!r}; choose one of {list(IMAGE_CORPORA)}")
        if n_bytes is not None:
            raise ValueError(f"data.n_bytes only applies to data.name=generated, got {n_bytes!r} for {name!r}")

    def _prepare(self) -> None:
        IMAGE_CORPORA[self.name](self.root, verify=True, **self._corpus_kw)

    def _prepared_paths(self) -> dict[str, Path]:
        return prepared_images(self.name, self.root, self.resolution)

    def n_images(self, split: str) -> int:
        return self.n_tokens(split) // self.sequence_len

    def eval_dataloader(self, split: str, sequence_len: int | None = None, limit_bytes: int | None = None,
                        batch_size: int | None = None):
        if limit_bytes is not None:   # whole images only
            limit_bytes = -(-limit_bytes // self.sequence_len) * self.sequence_len
        return super().eval_dataloader(split, sequence_len, limit_bytes, batch_size)

