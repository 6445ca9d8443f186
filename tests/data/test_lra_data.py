"""Pathfinder generator and the real LRA loaders on tiny local fixtures (docs/longvq.md §4)."""
from __future__ import annotations

import gzip
import io
import pickle
import tarfile

import numpy as np
import pytest
import torch

from vqformer.data.files import DataUnavailableError, md5_file
from vqformer.data.lra import pathfinder as pf
from vqformer.data.lra import sources
from vqformer.data.lra.datamodule import LRADataModule

pytestmark = pytest.mark.usefixtures("single_thread")


# ------------------------------------------------------------------------------------------ Pathfinder


def test_presets_follow_the_lra_table():
    p32, px = pf.PRESETS["pathfinder32"], pf.PRESETS["pathx"]
    assert (p32.window_size, p32.paddle_length, p32.paddle_thickness, p32.continuity, p32.contour_length,
            p32.distractor_length, p32.num_distractor_snakes, p32.seed_distance) == (32, 2, 0.5, 1.0, 14, 4, 5, 7)
    assert (px.window_size, px.paddle_margin_list, px.seed_distance, px.marker_radius, px.continuity,
            px.contour_length) == (128, (2, 3), 20, 3, 1.8, 14)


def test_generator_is_seeded_per_image():
    p = pf.PRESETS["pathfinder32"]
    x, y = pf.generate(p, 6, seed=3)
    assert x.shape == (6, 1024) and x.dtype == np.uint8 and set(y) <= {0, 1}
    x2, y2 = pf.generate(p, 3, seed=3, start=3)
    assert np.array_equal(x[3:], x2) and np.array_equal(y[3:], y2)          # any subset regenerates alike
    assert not np.array_equal(pf.generate(p, 6, seed=4)[0], x)
    assert (x.max(1) == 255).all()                                            # min-max rescaled to 8 bit
    ink = (x > 64).mean(1)
    assert ((ink > 0.05) & (ink < 0.7)).all(), ink                            # strokes, not blank nor full


def test_labels_are_balanced():
    y = np.array([pf.generate_image(pf.PRESETS["pathfinder32"], 0, i)[1] for i in range(40)])
    assert 10 <= y.sum() <= 30


def test_markers_differ_between_labels_of_the_same_scene():
    """Same scene (rng stream after the label draw), label 1 vs 0: only the second marker moves."""
    p = pf.PRESETS["pathfinder32"]
    imgs = []
    for label in (0, 1):
        g = pf._Generator(p, np.random.default_rng(7))
        imgs.append(g.image(label))
    assert imgs[0] is not None and imgs[1] is not None
    diff = imgs[0].astype(int) != imgs[1].astype(int)
    assert 0 < diff.mean() < 0.1


def test_pathfinder_release_reader(tmp_path):
    from PIL import Image
    hard = tmp_path / "lra" / "raw" / "lra_release" / "pathfinder32" / "curv_contour_length_14"
    (hard / "imgs" / "0").mkdir(parents=True)
    (hard / "metadata").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(hard / "imgs" / "0" / f"sample_{i}.png")
        rows.append(f"imgs/0 sample_{i}.png {i} {i % 2} 1.0 14 4 2 0.5 1 1")
    (hard / "metadata" / "0.npy").write_text("\n".join(rows) + "\n")
    x, y = pf.read_release(tmp_path, "pathfinder32")
    assert x.shape == (10, 1024) and y.tolist() == [i % 2 for i in range(10)]
    splits = pf.build_pathfinder("pathfinder32", tmp_path, "release", {})
    assert [len(splits[s]["labels"]) for s in ("train", "val", "test")] == [8, 1, 1]
    with pytest.raises(DataUnavailableError, match="lra_release.gz"):
        pf.read_release(tmp_path, "pathx")


def test_pathfinder_datamodule(tmp_path):
    dm = LRADataModule(task="pathfinder32", root=str(tmp_path), batch_size=4,
                       generator={"n_train": 8, "n_val": 4, "n_test": 4})
    dm.prepare_data()
    dm.setup()
    b = next(iter(dm.train_dataloader()))
    assert b["inputs"].shape == (4, 1024) and b["inputs"].dtype == torch.float32 and b["mask"].all()
    assert b["inputs"].min() >= -1.0 and b["inputs"].max() <= 1.0             # (x - 0.5) / 0.5


# ------------------------------------------------------------------------------------------ real loaders


def add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_text_loader_on_a_tiny_imdb_archive(tmp_path):
    raw = tmp_path / "lra" / "raw"
    raw.mkdir(parents=True)
    with tarfile.open(raw / "aclImdb_v1.tar.gz", "w:gz") as tar:
        for split in ("train", "test"):
            for i, (lab, text) in enumerate([("pos", b"great film"), ("neg", b"dull"), ("pos", b"fine" * 5)]):
                add(tar, f"aclImdb/{split}/{lab}/{i}_1.txt", text)
    md5 = md5_file(raw / "aclImdb_v1.tar.gz")
    dm = LRADataModule(task="text", root=str(tmp_path), batch_size=2, source="release", max_len=12,
                       generator={"md5": md5, "download": False})
    dm.prepare_data()
    dm.setup()
    ds = dm.dataset("train")
    assert len(ds) == 3 and sorted(ds.labels.tolist()) == [0, 1, 1]
    item = ds[int(np.argmax(ds.lengths == 4))]                                 # b"dull"
    assert item["inputs"][:4].tolist() == [c + 3 for c in b"dull"] and item["mask"].sum() == 4
    assert ds.lengths.max() == 12                                              # truncated to max_len
    with pytest.raises(Exception, match="md5"):
        sources.fetch(tmp_path, "aclImdb_v1.tar.gz", sources.IMDB_URL, "0" * 32, allow_download=False)


def test_missing_downloads_say_what_and_where(tmp_path):
    with pytest.raises(DataUnavailableError, match="aclImdb_v1.tar.gz.*md5"):
        sources.build("text", tmp_path, "release", 16, {"download": False})
    with pytest.raises(DataUnavailableError, match="cifar-10-python.tar.gz"):
        sources.build("scifar", tmp_path, "release", 1024, {"download": False})
    with pytest.raises(DataUnavailableError, match="lra_release"):
        sources.build("retrieval", tmp_path, "release", 16, {})
    with pytest.raises(DataUnavailableError, match="lra_release"):
        LRADataModule(task="listops", root=str(tmp_path), batch_size=1, source="release").prepare_data()


def test_retrieval_loader_on_tiny_tsv(tmp_path):
    folder = tmp_path / "lra" / "raw" / "lra_release" / "tsv_data"
    folder.mkdir(parents=True)
    for f in ("train", "eval", "test"):
        (folder / f"new_aan_pairs.{f}.tsv").write_bytes(b"1.0\ta\tb\tfirst doc\tsecond\n0.0\tc\td\tx\tyy\n" * 2)
    dm = LRADataModule(task="retrieval", root=str(tmp_path), batch_size=2, source="release", max_len=8)
    dm.prepare_data()
    dm.setup()
    b = next(iter(dm.val_dataloader()))
    assert b["inputs"].shape == (2, 2, 8) and b["mask"].shape == (2, 2, 8)
    assert b["label"].tolist() == [1, 0] and b["mask"][0].sum(-1).tolist() == [8, 6]


def test_cifar_loaders_on_a_tiny_archive(tmp_path):
    raw = tmp_path / "lra" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with tarfile.open(raw / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            d = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, 4))}
            add(tar, f"cifar-10-batches-py/{name}", pickle.dumps(d))
    gen = {"md5": md5_file(raw / "cifar-10-python.tar.gz"), "download": False}
    gray = sources.build("image", tmp_path, "release", 1024, gen)
    rgb = sources.build("scifar", tmp_path, "release", 1024, gen)
    assert [len(gray[s]["labels"]) for s in ("train", "val", "test")] == [18, 2, 4]
    assert gray["train"]["inputs"].shape == (18, 1024) and rgb["train"]["inputs"].shape == (18, 1024, 3)
    r, g, b = (rgb["train"]["inputs"][0, 5, c].astype(float) for c in range(3))
    assert abs(gray["train"]["inputs"][0, 5] - (0.2989 * r + 0.587 * g + 0.114 * b)) < 1.0
    # row-major flattening of the 32x32 image: pixel (0, 1) of the red plane is item 1
    data = sources.read_cifar(raw / "cifar-10-python.tar.gz")["train"][0]
    assert rgb["train"]["inputs"][0, 1, 0] == data[0, 0, 1, 0]


def test_fashion_mnist_standin_from_idx_files(tmp_path):
    def idx(path, arr):
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
        with gzip.open(path, "wb") as f:
            f.write(header + arr.tobytes())
    rng = np.random.default_rng(0)
    for p, n in (("train", 20), ("t10k", 5)):
        idx(tmp_path / f"{p}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        idx(tmp_path / f"{p}-labels-idx1-ubyte.gz", rng.integers(0, 10, n).astype(np.uint8))
    data = sources.fashion_mnist(tmp_path)
    x, y = data["train"]
    assert x.shape == (20, 1024) and y.shape == (20,)
    img = x[0].reshape(32, 32)
    assert (img[:2] == 0).all() and (img[:, :2] == 0).all()
    assert np.array_equal(img[2:30, 2:30], sources.read_idx(tmp_path / "train-images-idx3-ubyte.gz")[0])
    assert sources.fashion_mnist(tmp_path / "missing") is None


def test_generated_image_standin_is_learnable_by_class():
    x, y = sources.gratings(200, 0)
    assert x.shape == (200, 1024) and set(np.unique(y)) == set(range(10))
    assert np.array_equal(sources.gratings(200, 0)[0], x)


# ---------------------------------------------------------------- IMDb and CIFAR-10 through `datasets`


def test_imdb_and_cifar_from_datasets_copies_match_the_archives(tmp_path):
    """The same reviews and images as a `datasets` copy (save_to_disk / parquet) and as the publishers' archives
    give the same LRA arrays, and the data module caches the hub copy under its own key."""
    import datasets
    from PIL import Image

    reviews = {"train": [("great film", 1), ("dull", 0), ("fine" * 5, 1)], "test": [("ok", 1), ("bad é", 0)]}
    raw = tmp_path / "lra" / "raw"
    raw.mkdir(parents=True)
    with tarfile.open(raw / "aclImdb_v1.tar.gz", "w:gz") as tar:
        for split, rows in reviews.items():
            for i, (text, label) in enumerate(rows):
                add(tar, f"aclImdb/{split}/{'pos' if label else 'neg'}/{i}_1.txt", text.encode())
    imdb = tmp_path / "imdb_copy"
    datasets.DatasetDict({s: datasets.Dataset.from_dict({"text": [t for t, _ in r], "label": [y for _, y in r]})
                          for s, r in reviews.items()}).save_to_disk(imdb)
    gen_url = {"md5": md5_file(raw / "aclImdb_v1.tar.gz"), "download": False}
    gen_hf = {"source": "local", "local_path": str(imdb)}
    a, b = (sources.build("text", tmp_path, "release", 8, g) for g in (gen_url, gen_hf))
    for s in ("train", "val", "test"):   # the archive is read sorted by path: compare as sets of rows
        rows = [sorted(zip(map(bytes, d[s]["inputs"].astype(np.uint8)), d[s]["lengths"], d[s]["labels"]))
                for d in (a, b)]
        assert rows[0] == rows[1]
    assert b["test"]["lengths"].tolist() == [2, 6]   # "bad é": é is two UTF-8 bytes

    rng = np.random.default_rng(0)
    batches = {name: (rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 4))
               for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]}
    with tarfile.open(raw / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, (x, y) in batches.items():
            d = {b"data": x.transpose(0, 3, 1, 2).reshape(4, 3072), b"labels": y.tolist()}
            add(tar, f"cifar-10-batches-py/{name}", pickle.dumps(d))
    folder = tmp_path / "cifar_copy" / "plain_text"
    folder.mkdir(parents=True)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        x = np.concatenate([batches[n][0] for n in names])
        y = np.concatenate([batches[n][1] for n in names])
        ds = datasets.Dataset.from_dict({"img": [Image.fromarray(im) for im in x], "label": y.tolist()}, features)
        ds.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    gen_url = {"md5": md5_file(raw / "cifar-10-python.tar.gz"), "download": False}
    gen_hf = {"source": "local", "local_path": str(tmp_path / "cifar_copy")}
    for task in ("image", "scifar"):
        a, b = (sources.build(task, tmp_path, "release", 1024, g) for g in (gen_url, gen_hf))
        for s in ("train", "val", "test"):
            assert all(np.array_equal(a[s][k], b[s][k]) for k in ("inputs", "lengths", "labels"))
    dm = LRADataModule(task="image", root=str(tmp_path), batch_size=2, source="release", generator=gen_hf)
    dm.prepare_data()
    dm.setup()
    assert len(dm.dataset("train")) == 18 and dm.cache_dir.name.startswith("image-release-")
    with pytest.raises(ValueError, match="generator.source"):
        sources.build("image", tmp_path, "release", 1024, {"source": "ftp"})


def test_offline_hub_copy_names_the_dataset_hub_id_and_local_copy(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(DataUnavailableError) as err:
        sources.build("text", tmp_path, "release", 16, {"source": "hub", "download": False})
    message = str(err.value)
    assert message.startswith("IMDb (hub id stanfordnlp/imdb)") and "save_to_disk" in message
    assert "data.generator.source=local data.generator.local_path=" in message
    assert "The fallback, the publisher's archive, failed too" in message and "aclImdb_v1.tar.gz" in message
    assert str(tmp_path / "empty_cache") in message and str(tmp_path / "imdb" / "hf_local") in message
