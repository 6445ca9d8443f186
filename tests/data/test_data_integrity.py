"""Prepared data is what its manifest claims (docs/data_integrity.md).

Every fault is injected for real: bytes flipped in a split file with its size and mtime kept (what bit rot or
a bad copy leaves, and what a size check cannot see), a zeroed or truncated file, a read-only data folder.
A damaged file is prepared again from its source when the source is there, else the run stops naming it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from vqformer.data import bytes_corpus as bc
from vqformer.data import files
from vqformer.data.files import DataIntegrityError, DataIntegrityWarning
from vqformer.data.lm_datamodule import ByteLMDataModule

N_GEN = 20_000


def _flip(path: Path, at: int = 100) -> None:
    """Flip one bit in place, keeping the size and the modification time."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x20]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _zero(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


def _gen_dm(root: Path, **kw) -> ByteLMDataModule:
    return ByteLMDataModule(name="generated", root=str(root), sequence_len=64, batch_size=4, n_bytes=N_GEN, **kw)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def read_only(folder: Path):
    """Make `folder` refuse new entries for the test process, root included.

    Permission bits do not stop root (the tests run as root in this sandbox), so root gets the directory's
    immutable attribute (`chattr +i`, ext4/xfs/btrfs): no file can be created, renamed or deleted in it, as on
    a read-only mount. Other users get `chmod 0555`. The probe below checks that writes really fail.
    """
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot make {folder} read-only for root here (chattr +i: {done.stderr.decode().strip()})")
        undo = ["chattr", "-i", str(folder)]
    else:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        undo = None
    try:
        with pytest.raises(OSError):
            (folder / "probe").write_bytes(b"")
        yield folder
    finally:
        if undo:
            subprocess.run(undo, check=True)
        else:
            folder.chmod(mode)


# ---------------------------------------------------------------- flipped bytes in train.bin


@pytest.mark.parametrize("name", ["generated", "wiki_sample"])
def test_flipped_bytes_in_train_bin_are_found_and_prepared_again_from_the_source(tmp_path, name):
    if name == "wiki_sample":
        try:
            bc._gensim_file(bc.WIKI_SAMPLE_FILE)
        except files.DataUnavailableError as e:
            pytest.skip(str(e))
        dm = ByteLMDataModule(name="wiki_sample", root=str(tmp_path), sequence_len=64, batch_size=4)
    else:
        dm = _gen_dm(tmp_path)
    dm.prepare_data()
    train = bc.corpus_dir(name, tmp_path, **({"n_bytes": N_GEN} if name == "generated" else {})) / "train.bin"
    good = train.read_bytes()
    _flip(train, at=len(good) // 2)
    assert train.stat().st_size == len(good) and train.read_bytes() != good

    again = ByteLMDataModule(**{k: getattr(dm, k) for k in ("name", "root", "sequence_len", "batch_size")},
                             n_bytes=N_GEN if name == "generated" else None)
    with pytest.warns(DataIntegrityWarning, match=rf"{train}: sha256 [0-9a-f]{{64}}, its manifest records"):
        again.prepare_data()
    assert train.read_bytes() == good
    meta = json.loads((train.parent / "meta.json").read_text())
    assert meta["splits"]["train"]["sha256"] == _sha(train)


def test_hashes_are_checked_once_per_data_module(tmp_path, monkeypatch):
    _gen_dm(tmp_path).prepare_data()
    calls = []
    real = files.sha256_file
    monkeypatch.setattr(files, "sha256_file", lambda p: calls.append(Path(p).name) or real(p))
    dm = _gen_dm(tmp_path)
    dm.prepare_data()
    assert sorted(calls) == ["test.bin", "train.bin", "validation.bin"]
    dm.prepare_data()   # Lightning calls it again in fit / validate: no second hashing
    dm.setup("fit")     # every rank: sizes only
    assert len(calls) == 3


# ---------------------------------------------------------------- no source: stop before training


def _fake_enwik8(tmp_path: Path, monkeypatch) -> tuple[bytes, Path]:
    """A small stand-in for enwik8.zip with its size and md5 patched in, and no network."""
    def offline(*a, **k):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    content = bytes(np.random.default_rng(0).integers(32, 127, 200_000, dtype=np.uint8))
    monkeypatch.setattr(bc, "ENWIK8_SIZE", len(content))
    monkeypatch.setattr(bc, "ENWIK8_MD5", hashlib.md5(content).hexdigest())
    zip_path = tmp_path / "data" / "enwik8" / "enwik8.zip"
    zip_path.parent.mkdir(parents=True)
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("enwik8", content)
    return content, zip_path


SMALL = ["model.d_model=32", "model.d_k=16", "model.d_v=64", "model.n_layer=1", "codebook=s16", "block=l16",
         "sequence_len=64", "update_len=32", "eval_window=32", "data.batch_size=2", "data.eval_batch_size=2",
         "data.limit_eval_bytes=1024", "trainer.max_steps=2", "trainer.val_check_interval=1", "ckpt_every=2",
         "logger=csv", "trainer.enable_progress_bar=false"]


def test_damaged_train_bin_without_its_source_stops_the_run_before_training(tmp_path, monkeypatch, capsys):
    from conftest import make_cfg
    from vqformer.lit.runner import DONE, train

    _, zip_path = _fake_enwik8(tmp_path, monkeypatch)
    paths = bc.prepare_enwik8(tmp_path / "data")
    zip_bytes = zip_path.read_bytes()
    zip_path.unlink()                              # the source is gone (deleted to save space)
    _flip(paths["train"])
    damaged = paths["train"].read_bytes()

    cfg = make_cfg("experiment=tvq/enwik8", *SMALL, f"paths.data_dir={tmp_path / 'data'}")
    with pytest.raises(DataIntegrityError) as err:
        train(cfg, tmp_path / "run")
    message = str(err.value)
    assert f"{paths['train']}: sha256" in message                        # names the damaged file
    assert str(zip_path) in message and "make data-enwik8" in message    # and how to fix it
    assert str(paths["validation"]) not in message                       # only the damaged one
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / DONE).exists()
    assert paths["train"].read_bytes() == damaged                        # nothing deleted or half-rewritten

    # The preparation command (it verifies by default) says the same and fails.
    from vqformer.data.prepare import main
    capsys.readouterr()
    assert main(["enwik8", "--root", str(tmp_path / "data"), "--offline"]) == 1
    assert f"{paths['train']}: sha256" in capsys.readouterr().err

    # With the source back in place the same command prepares the split again and trains.
    zip_path.write_bytes(zip_bytes)
    with pytest.warns(DataIntegrityWarning, match="train.bin"):
        metrics = train(make_cfg("experiment=tvq/enwik8", *SMALL, f"paths.data_dir={tmp_path / 'data'}"),
                        tmp_path / "run")
    assert metrics["step"] == 2
    meta = json.loads((paths["train"].parent / "meta.json").read_text())
    assert _sha(paths["train"]) == meta["splits"]["train"]["sha256"]


# ---------------------------------------------------------------- zeroed validation.bin


def test_zeroed_validation_bin_does_not_change_the_reported_bpb(tmp_path):
    from conftest import tiny_cfg
    from vqformer.lit.runner import evaluate, train

    cfg = tiny_cfg(tmp_path, "trainer.max_steps=4", "trainer.val_check_interval=100", "ckpt_every=4")
    logged = train(cfg, tmp_path / "run")
    validation = bc.corpus_dir("generated", cfg.data.root, n_bytes=cfg.data.n_bytes) / "validation.bin"
    good = validation.read_bytes()
    _zero(validation)

    with pytest.warns(DataIntegrityWarning, match=f"{validation}: sha256"):
        again = evaluate(tmp_path / "run", "validation", limit_eval_bytes=cfg.data.limit_eval_bytes)
    assert validation.read_bytes() == good
    assert again["val/bpb"] == pytest.approx(logged["val/bpb"], rel=1e-6)


def test_zeroed_validation_bin_without_its_source_stops_naming_it(tmp_path, monkeypatch):
    _, zip_path = _fake_enwik8(tmp_path, monkeypatch)
    paths = bc.prepare_enwik8(tmp_path / "data")
    zip_path.unlink()
    _zero(paths["validation"])
    dm = ByteLMDataModule(name="enwik8", root=str(tmp_path / "data"), sequence_len=64, batch_size=2)
    with pytest.raises(DataIntegrityError, match=rf"{paths['validation']}: sha256 .*\n.*not available"):
        dm.prepare_data()


def test_truncated_split_is_prepared_again(tmp_path):
    _gen_dm(tmp_path).prepare_data()
    test_bin = bc.corpus_dir("generated", tmp_path, n_bytes=N_GEN) / "test.bin"
    good = test_bin.read_bytes()
    with open(test_bin, "r+b") as f:
        f.truncate(10)
    with pytest.warns(DataIntegrityWarning, match=f"{test_bin}: 10 bytes, its manifest records {len(good)}"):
        _gen_dm(tmp_path).prepare_data()
    assert test_bin.read_bytes() == good


# ---------------------------------------------------------------- read-only data folder


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_read_only_data_dir_with_a_damaged_file_names_the_file(tmp_path, damage):
    _gen_dm(tmp_path).prepare_data()
    out = bc.corpus_dir("generated", tmp_path, n_bytes=N_GEN)
    train = out / "train.bin"
    with read_only(out):
        # Intact data in a read-only folder is used as it is: checking needs no write.
        dm = _gen_dm(tmp_path)
        dm.prepare_data()
        dm.setup("fit")
        assert next(iter(dm.train_dataloader()))["inputs"].shape == (4, 64)

        if damage == "flip":
            _flip(train)
        else:
            with open(train, "r+b") as f:
                f.truncate(1000)
        damaged = train.read_bytes()
        with pytest.raises(DataIntegrityError) as err:
            _gen_dm(tmp_path).prepare_data()
        message = str(err.value)
        assert str(train) in message and f"{out} is not writable" in message
        assert "make the folder writable" in message and f"delete {out}" in message
        assert isinstance(err.value.__cause__, OSError)                     # the OS error is kept as the cause
        assert (out / "meta.json").is_file() and train.read_bytes() == damaged


def test_read_only_data_root_without_prepared_data_says_so(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    with read_only(root):
        with pytest.raises(DataIntegrityError, match=rf"{root / f'generated_{N_GEN}_0'} holds no prepared data.*"
                                                     rf"not writable.*data.root"):
            _gen_dm(root).prepare_data()


# ---------------------------------------------------------------- books, images, LRA, MQAR


def test_books_damaged_tokenizer_is_trained_again_and_without_source_stops(tmp_path, monkeypatch):
    from vqformer.data import pg19
    from vqformer.data.books_datamodule import BookLMDataModule

    counts = {"train": 2, "validation": 1, "test": 1}
    monkeypatch.setattr(pg19, "PG19_COUNTS", counts)
    raw = tmp_path / "pg19" / "raw"
    texts = {"train/1.txt": "the cat sat on the mat. " * 40, "train/2.txt": "a dog ran in the fog. " * 40,
             "validation/3.txt": "the dog sat. " * 10, "test/4.txt": "a cat ran. " * 10}
    for name, text in texts.items():
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        (raw / name).write_text(text)
    dm = lambda: BookLMDataModule(name="pg19", root=str(tmp_path), sequence_len=16, batch_size=2,  # noqa: E731
                                  vocab_size=64, allow_download=False)
    dm().prepare_data()
    out = pg19.book_dir("pg19", tmp_path, 64)
    tokenizer = out / "tokenizer.json"
    spec = json.loads(tokenizer.read_text())
    vocab = spec["model"]["vocab"]
    a, b = sorted(p for p in vocab if not p.startswith("<"))[:2]
    vocab[a], vocab[b] = vocab[b], vocab[a]         # still a loadable tokenizer, but not the one trained
    tokenizer.write_text(json.dumps(spec))
    pg19.load_tokenizer(tokenizer)
    damaged = _sha(tokenizer)
    with pytest.warns(DataIntegrityWarning, match=f"{tokenizer}: sha256"):
        dm().prepare_data()
    meta = json.loads((out / "meta.json").read_text())
    assert _sha(tokenizer) != damaged and _sha(tokenizer) == meta["tokenizer_sha256"]

    # Without the raw books a damaged token file stops the run, naming it and where the books go.
    for p in raw.rglob("*.txt"):
        p.unlink()
    _flip(out / "validation.bin", at=2)
    with pytest.raises(DataIntegrityError, match=rf"(?s){out / 'validation.bin'}: sha256.*{raw}"):
        dm().prepare_data()


def test_images_damaged_split_is_generated_again(tmp_path):
    from vqformer.data.imagenet64 import ImageLMDataModule, image_dir

    make = lambda: ImageLMDataModule(name="generated_images", root=str(tmp_path), sequence_len=48,  # noqa: E731
                                     eval_sequence_len=48, batch_size=2, resolution=4)
    make().prepare_data()
    validation = image_dir("generated_images", tmp_path, 4) / "validation.bin"
    good = validation.read_bytes()
    _zero(validation)
    with pytest.warns(DataIntegrityWarning, match="validation.bin"):
        make().prepare_data()
    assert validation.read_bytes() == good


def _listops_dm(root: Path, **kw):
    from vqformer.data.lra.datamodule import LRADataModule
    gen = {"n_train": 8, "n_val": 4, "n_test": 4, "min_len": 5, "max_len": 40, "max_depth": 3}
    return LRADataModule(task="listops", root=str(root), batch_size=2, source="generated", max_len=64,
                         generator=gen, **kw)


def test_lra_cache_damage_old_caches_and_listops_sources(tmp_path):
    from vqformer.data.lra import listops

    dm = _listops_dm(tmp_path)
    dm.prepare_data()
    cache, tsv_dir = dm.cache_dir, next((tmp_path / "lra" / "listops_generated").iterdir())
    dm.setup()
    good = dm.dataset("train").inputs.copy()
    _flip(cache / "train.npz", at=(cache / "train.npz").stat().st_size // 2)
    with pytest.warns(DataIntegrityWarning, match=f"{cache / 'train.npz'}: sha256"):
        again = _listops_dm(tmp_path)
        again.prepare_data()
    again.setup()
    assert np.array_equal(again.dataset("train").inputs, good)

    # A cache written before manifests (no meta.json) is built again from its source.
    (cache / "meta.json").unlink()
    with pytest.warns(DataIntegrityWarning, match="without a manifest: built again"):
        _listops_dm(tmp_path).prepare_data()
    assert (cache / "meta.json").is_file()

    # The generated ListOps sources carry their own manifest: a damaged TSV is generated again.
    tsv = tsv_dir / "basic_val.tsv"
    source = tsv.read_bytes()
    _flip(tsv, at=20)
    with pytest.warns(DataIntegrityWarning, match=f"{tsv}: sha256"):
        listops.prepare_generated(tmp_path, seed=0, **{k: v for k, v in _listops_dm(tmp_path).generator.items()})
    assert tsv.read_bytes() == source


def test_lra_cache_without_manifest_or_source_is_recorded_then_checked(tmp_path):
    from vqformer.data.lra.datamodule import LRADataModule

    dm = LRADataModule(task="image", root=str(tmp_path), batch_size=2, source="release", generator={"download": False})
    rng = np.random.default_rng(0)
    for s in ("train", "val", "test"):   # an old cache whose CIFAR archive has since been deleted
        dm.cache_dir.mkdir(parents=True, exist_ok=True)
        np.savez(dm.cache_dir / f"{s}.npz", inputs=rng.integers(0, 256, (4, 1024), dtype=np.uint8),
                 lengths=np.full(4, 1024, np.int32), labels=np.arange(4))
    with pytest.warns(DataIntegrityWarning, match="source is not available: its files are hashed and recorded"):
        dm.prepare_data()
    meta = json.loads((dm.cache_dir / "meta.json").read_text())
    assert meta["splits"]["val"]["sha256"] == _sha(dm.cache_dir / "val.npz")
    again = LRADataModule(task="image", root=str(tmp_path), batch_size=2, source="release",
                          generator={"download": False})
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # recorded now: no warning, no rebuild
        again.prepare_data()
    _flip(dm.cache_dir / "val.npz", at=300)
    third = LRADataModule(task="image", root=str(tmp_path), batch_size=2, source="release",
                          generator={"download": False})
    with pytest.raises(DataIntegrityError, match=rf"(?s){dm.cache_dir / 'val.npz'}: sha256.*not available"):
        third.prepare_data()


def test_mqar_damaged_or_unrecorded_cache_is_generated_again(tmp_path):
    from vqformer.data.mqar import MQARSegment, load_segment

    kw = dict(vocab_size=64, seed=0, power_a=0.01, num_passes=1, random_non_queries=False)
    seg = MQARSegment(32, 4, 20)
    x, y = load_segment(tmp_path, seg, "train", 0, **kw)
    (path,) = (tmp_path / "mqar").glob("*.npz")
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    inputs = arrays["inputs"].copy()
    inputs[3, 5] += 1
    np.savez(path, **{**arrays, "inputs": inputs})   # a wrong value in a well-formed file
    assert np.array_equal(load_segment(tmp_path, seg, "train", 0, **kw)[0][3], inputs[3])   # unchecked: as read
    with pytest.warns(DataIntegrityWarning, match=f"{path}: content sha256"):
        x2, y2 = load_segment(tmp_path, seg, "train", 0, verify=True, **kw)
    assert np.array_equal(x2, x) and np.array_equal(y2, y)
    np.savez(path, inputs=arrays["inputs"], labels=arrays["labels"], params=arrays["params"])   # an old cache
    with pytest.warns(DataIntegrityWarning, match="written without a sha256"):
        load_segment(tmp_path, seg, "train", 0, verify=True, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x3, _ = load_segment(tmp_path, seg, "train", 0, verify=True, **kw)
    assert np.array_equal(x3, x)
