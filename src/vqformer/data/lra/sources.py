"""Real LRA loaders (IMDb bytes, AAN pairs, CIFAR-10 grayscale, sCIFAR, the ListOps release) and the offline
image stand-in (Fashion-MNIST from Debian's ``dataset-fashion-mnist``, else generated gratings).

Spec: ``docs/longvq.md`` §4.1–4.2 and §4.4; ``docs/data.md`` §3–4 (URLs, checksums, the Debian
path). IMDb and CIFAR-10 come from one of three places, ``generator.source`` (docs/data.md §7):

* ``hub``: the `datasets` copies ``stanfordnlp/imdb`` and ``uoft-cs/cifar10`` (``generator.hub_id``), through the HF
  cache (``data.hf``), falling back to the archives (``url``) when they cannot be loaded;
* ``local``: a `datasets` copy (``save_to_disk`` folder or parquet files) at ``generator.local_path``;
* ``url`` (the default when unset): the publishers' archives under ``<root>/lra/raw/``, downloaded when missing
  (checked by md5, resumable).

The 8 GB LRA release is never downloaded: every missing file raises ``DataUnavailableError`` saying what to
download and where to put it.
"""
from __future__ import annotations

import gzip
import pickle
import tarfile
from pathlib import Path

import numpy as np

from .. import hf
from ..files import DataUnavailableError, download, verify_file

IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_MD5 = "7c2ac02c03563afcf9b574c7e56c153a"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
LRA_URL = "https://storage.googleapis.com/long-range-arena/lra_release.gz"
IMDB_HUB_ID = "stanfordnlp/imdb"
CIFAR_HUB_ID = "uoft-cs/cifar10"
FETCH_SOURCES = ("hub", "local", "url")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
BYTE_OFFSET = 3                     # 0 pad, 1 eos, 2 unk, byte b -> b + 3 (as the byte LM data)


def raw_dir(root) -> Path:
    return Path(root) / "lra" / "raw"


def fetch(root, name: str, url: str, md5: str, allow_download: bool = True) -> Path:
    """``<root>/lra/raw/<name>``, downloaded if missing and allowed, always md5-checked."""
    path = raw_dir(root) / name
    if not path.is_file():
        manual = f"{name} is not available: download {url} and place it at {path} (md5 {md5})"
        if not allow_download:
            raise DataUnavailableError(manual)
        try:
            download(url, path, md5=md5)
        except DataUnavailableError as e:
            raise DataUnavailableError(f"{manual}\n{e}") from e
    verify_file(path, md5=md5)
    return path


def release_path(root, *parts: str) -> Path:
    path = raw_dir(root).joinpath("lra_release", *parts)
    if not path.exists():
        raise DataUnavailableError(
            f"{path} is not available: download {LRA_URL} (about 8 GB, a gzipped tar), extract it and place its "
            f"lra_release/ folder under {raw_dir(root)}")
    return path


def listops_release_dir(root) -> Path:
    return release_path(root, "listops-1000")


def encode_bytes(texts: list[bytes], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    out = np.zeros((len(texts), max_len), np.uint16)
    lengths = np.zeros(len(texts), np.int32)
    for i, t in enumerate(texts):
        ids = np.frombuffer(t[:max_len], np.uint8).astype(np.uint16) + BYTE_OFFSET
        out[i, :len(ids)] = ids
        lengths[i] = len(ids)
    return out, lengths


# ------------------------------------------------------------------------------------------ text (IMDb)


def read_imdb(path: Path) -> dict[str, tuple[list[bytes], list[int]]]:
    data = {"train": ([], []), "test": ([], [])}
    with tarfile.open(path) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 4 and parts[1] in data and parts[2] in ("pos", "neg"):
                texts, labels = data[parts[1]]
                texts.append(tar.extractfile(member).read())
                labels.append(int(parts[2] == "pos"))
    if not data["train"][0] or not data["test"][0]:
        raise DataUnavailableError(f"{path}: no aclImdb/{{train,test}}/{{pos,neg}}/*.txt members; is it {IMDB_URL}?")
    return data


def _fetch_source(gen: dict) -> str:
    source = gen.get("source", "url")
    if source not in FETCH_SOURCES:
        raise ValueError(f"data.generator.source={source!r}: choose one of {list(FETCH_SOURCES)}")
    return source


def _hub(name: str, root, gen: dict, hub_id: str):
    """The train and test splits of a `datasets` copy (hub or local), per generator.source / hub_id / local_path."""
    return hf.load_splits(name, root, gen.get("hub_id") or hub_id, None, _fetch_source(gen), gen.get("local_path"),
                          ("train", "test"), keys="data.generator.")


def read_imdb_datasets(root, gen: dict) -> dict[str, tuple[list[bytes], list[int]]]:
    """IMDb's reviews as UTF-8 bytes and labels (1 = positive) from its `datasets` copy."""
    dsd = _hub("IMDb", root, gen, IMDB_HUB_ID)
    return {s: ([t.encode("utf-8") for t in dsd[s]["text"]], [int(y) for y in dsd[s]["label"]]) for s in dsd}


def read_cifar_datasets(root, gen: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10 from its `datasets` copy: {"train": (uint8 [N, 32, 32, 3], labels), "test": ...}, in its row order."""
    dsd = _hub("CIFAR-10", root, gen, CIFAR_HUB_ID)
    out = {}
    for split, ds in dsd.items():
        image = "img" if "img" in ds.column_names else "image"
        x = np.stack([np.asarray(im.convert("RGB"), np.uint8) for im in ds[image]])
        out[split] = (x, np.asarray(ds["label"], np.int64))
    return out


def _hub_or_url(gen: dict, from_hub, from_url):
    """`from_hub()` for source hub / local; `from_url()` for url, and as the fallback when the hub copy fails."""
    source = _fetch_source(gen)
    if source == "url":
        return from_url()
    try:
        return from_hub()
    except DataUnavailableError as hub_error:
        if source == "local":
            raise
        try:
            return from_url()
        except DataUnavailableError as e:
            raise DataUnavailableError(f"{hub_error}\nThe fallback, the publisher's archive, failed too:\n{e}") from e


def _text(root, max_len: int, gen: dict) -> dict:
    data = _hub_or_url(gen, lambda: read_imdb_datasets(root, gen), lambda: read_imdb(
        fetch(root, "aclImdb_v1.tar.gz", IMDB_URL, gen.get("md5", IMDB_MD5), gen.get("download", True))))
    out = {}
    for split, src in (("train", "train"), ("val", "test"), ("test", "test")):   # LRA: test doubles as val
        x, n = encode_bytes(data[src][0], max_len)
        out[split] = {"inputs": x, "lengths": n, "labels": np.asarray(data[src][1], np.int64)}
    return out


# ------------------------------------------------------------------------------------------ retrieval (AAN)


def read_aan(path: Path, max_len: int) -> dict:
    labels, docs = [], ([], [])
    with open(path, "rb") as f:
        for line in f:
            cols = line.rstrip(b"\n").split(b"\t")
            if len(cols) < 5:
                continue
            try:
                label = int(float(cols[0]))
            except ValueError:      # a header row
                continue
            labels.append(label)
            docs[0].append(cols[3])
            docs[1].append(cols[4])
    (x1, n1), (x2, n2) = encode_bytes(docs[0], max_len), encode_bytes(docs[1], max_len)
    return {"inputs": np.stack([x1, x2], 1), "lengths": np.stack([n1, n2], 1), "labels": np.asarray(labels, np.int64)}


def _retrieval(root, max_len: int, gen: dict) -> dict:
    folder = release_path(root, "tsv_data")
    return {s: read_aan(folder / f"new_aan_pairs.{f}.tsv", max_len)
            for s, f in (("train", "train"), ("val", "eval"), ("test", "test"))}


# ------------------------------------------------------------------------------------------ CIFAR-10


def read_cifar(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """-> {"train": (uint8 [50000, 32, 32, 3], labels), "test": ...}."""
    batches = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    out = {}
    with tarfile.open(path) as tar:
        for split, names in batches.items():
            xs, ys = [], []
            for name in names:
                d = pickle.load(tar.extractfile(f"cifar-10-batches-py/{name}"), encoding="bytes")
                xs.append(np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                ys.append(np.asarray(d[b"labels"], np.int64))
            out[split] = (np.concatenate(xs), np.concatenate(ys))
    return out


def grayscale(rgb: np.ndarray) -> np.ndarray:
    """torchvision's rgb_to_grayscale on uint8 (ITU-R 601-2 luma, truncated back to uint8)."""
    return (rgb.astype(np.float32) @ np.array([0.2989, 0.587, 0.114], np.float32)).astype(np.uint8)


def _cifar(root, gen: dict, rgb: bool) -> dict:
    data = _hub_or_url(gen, lambda: read_cifar_datasets(root, gen), lambda: read_cifar(
        fetch(root, "cifar-10-python.tar.gz", CIFAR_URL, gen.get("md5", CIFAR_MD5), gen.get("download", True))))
    conv = (lambda x: x.reshape(len(x), 1024, 3)) if rgb else (lambda x: grayscale(x).reshape(len(x), 1024))
    x, y = data["train"]
    n_val = len(y) // 10                                        # the last 10% of train (45k / 5k)
    splits = {"train": (x[:-n_val], y[:-n_val]), "val": (x[-n_val:], y[-n_val:]), "test": data["test"]}
    return {s: {"inputs": conv(a), "lengths": np.full(len(b), 1024, np.int32), "labels": b}
            for s, (a, b) in splits.items()}


# ------------------------------------------------------------------------------------------ image stand-in


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist(folder: Path = FASHION_DIR) -> dict | None:
    """Fashion-MNIST padded to 32×32 (1,024 pixels, LRA-Image's length); None when not installed."""
    files = {s: (folder / f"{p}-images-idx3-ubyte.gz", folder / f"{p}-labels-idx1-ubyte.gz")
             for s, p in (("train", "train"), ("test", "t10k"))}
    if not all(f.is_file() for pair in files.values() for f in pair):
        return None
    out = {}
    for s, (fi, fl) in files.items():
        x = np.pad(read_idx(fi), ((0, 0), (2, 2), (2, 2))).reshape(-1, 1024)
        out[s] = (x, read_idx(fl).astype(np.int64))
    return out


def gratings(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic 10-class 32×32 images: class k is a grating at angle 18k° with random phase, frequency, noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    theta = np.deg2rad(18.0 * y)[:, None, None]
    freq = rng.uniform(0.25, 0.6, n)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    img = 0.5 + 0.35 * np.sin(freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
    img = img + rng.normal(0, 0.15, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8).reshape(n, 1024), y.astype(np.int64)


def _image_standin(gen: dict) -> dict:
    data = None if gen.get("synthetic") else fashion_mnist(Path(gen.get("fashion_dir", FASHION_DIR)))
    if data is None:
        n_train, n_val, n_test = (int(gen.get(k, d)) for k, d in (("n_train", 9000), ("n_val", 1000), ("n_test", 1000)))
        x, y = gratings(n_train + n_val + n_test, int(gen.get("seed", 0)))
        data = {"train": (x[:n_train + n_val], y[:n_train + n_val]), "test": (x[n_train + n_val:], y[n_train + n_val:])}
    x, y = data["train"]
    n_val = len(y) // 10
    splits = {"train": (x[:-n_val], y[:-n_val]), "val": (x[-n_val:], y[-n_val:]), "test": data["test"]}
    return {s: {"inputs": a, "lengths": np.full(len(b), 1024, np.int32), "labels": b} for s, (a, b) in splits.items()}


def build(task: str, root, source: str, max_len: int, gen: dict) -> dict:
    if task == "text":
        return _text(root, max_len, gen)
    if task == "retrieval":
        return _retrieval(root, max_len, gen)
    if task == "image":
        return _cifar(root, gen, rgb=False) if source == "release" else _image_standin(gen)
    if task == "scifar":
        return _cifar(root, gen, rgb=True)
    raise ValueError(f"data.task={task!r} has no loader here")


__all__ = ["build", "encode_bytes", "fashion_mnist", "grayscale", "gratings", "listops_release_dir", "read_aan",
           "read_cifar", "read_cifar_datasets", "read_idx", "read_imdb", "read_imdb_datasets"]
