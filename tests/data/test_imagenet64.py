"""ImageNet64 pipeline (docs/transformer_vq.md §4.3–4.4): npz batches -> pixel sequences, stand-ins, image data module,
`experiment=tvq/imagenet64` on generated images, and the PNG sampler."""
from __future__ import annotations

import gzip
import math
import zipfile

import numpy as np
import pytest
import torch

from vqformer.data import imagenet64 as im
from vqformer.data.files import DataIntegrityError, DataUnavailableError
from vqformer.data.lm_datamodule import BYTE_OFFSET, EOS

RES = 8
SEQ = RES * RES * 3   # 192


def test_chw_to_hwc_by_hand():
    # One 2x2 image: channel c, row y, column x holds 100c + 10y + x.
    chw = np.array([[100 * c + 10 * y + x for c in range(3) for y in range(2) for x in range(2)]], dtype=np.int64)
    hwc = im.chw_to_hwc(chw, 2)
    assert hwc.tolist() == [[0, 100, 200, 1, 101, 201, 10, 110, 210, 11, 111, 211]]   # R,G,B per pixel, row-major


def _batches(raw, per_batch=3, n_val=4, as_zip=False):
    """Ten tiny train batches and a val batch in the official format: data (N, 12288) uint8 CHW, labels 1..1000."""
    rng = np.random.default_rng(0)
    raw.mkdir(parents=True, exist_ok=True)
    train = [rng.integers(0, 256, (per_batch, 12288), dtype=np.uint8) for _ in range(10)]
    val = rng.integers(0, 256, (n_val, 12288), dtype=np.uint8)
    files = {f"train_data_batch_{i + 1}.npz": d for i, d in enumerate(train)} | {"val_data.npz": val}
    for name, data in files.items():
        np.savez(raw / name, data=data, labels=rng.integers(1, 1001, len(data)))
    if as_zip:
        for zname, members in ((im.IMAGENET64_ZIPS[0], list(files)[:5]), (im.IMAGENET64_ZIPS[1], list(files)[5:10]),
                               (im.IMAGENET64_ZIPS[2], ["val_data.npz"])):
            with zipfile.ZipFile(raw / zname, "w") as zf:
                for m in members:
                    zf.write(raw / m, f"Imagenet64_x/{m}")
                    (raw / m).unlink()
    return train, val


@pytest.mark.parametrize("as_zip", [False, True])
def test_prepare_imagenet64_from_npz_batches(tmp_path, as_zip):
    train, val = _batches(tmp_path / "imagenet64" / "raw", as_zip=as_zip)
    paths = im.prepare_imagenet64(tmp_path, n_train=25)
    hwc = np.concatenate([im.chw_to_hwc(b, 64) for b in train])   # batches 1, 2, ..., 10 (10 after 9, not after 1)
    got = {s: np.fromfile(p, dtype=np.uint8).reshape(-1, 12288) for s, p in paths.items()}
    assert np.array_equal(got["train"], hwc[:25]) and np.array_equal(got["validation"], hwc[25:])
    assert np.array_equal(got["test"], im.chw_to_hwc(val, 64))
    # Pixel (y, x) channel c of image 0 is byte (y·64 + x)·3 + c of its sequence.
    assert got["train"][0][(5 * 64 + 7) * 3 + 2] == train[0][0].reshape(3, 64, 64)[2, 5, 7]


def test_prepare_imagenet64_is_idempotent_and_checks_counts(tmp_path):
    _batches(tmp_path / "imagenet64" / "raw")
    paths = im.prepare_imagenet64(tmp_path, n_train=25)
    stamp = paths["train"].stat().st_mtime_ns
    assert im.prepare_imagenet64(tmp_path, n_train=25)["train"].stat().st_mtime_ns == stamp
    with pytest.raises(DataIntegrityError, match="fewer than"):
        im.prepare_imagenet64(tmp_path, n_train=31)   # 30 train images only


def test_missing_imagenet64_says_where_to_put_it(tmp_path):
    with pytest.raises(DataUnavailableError) as err:
        im.prepare_imagenet64(tmp_path)
    message = str(err.value)
    assert str(tmp_path / "imagenet64" / "raw") in message and "Imagenet64_val_npz.zip" in message
    assert "image-net.org" in message


def test_corrupt_batch(tmp_path):
    raw = tmp_path / "imagenet64" / "raw"
    _batches(raw)
    (raw / "train_data_batch_3.npz").write_bytes(b"not a zip")
    with pytest.raises(DataIntegrityError, match="train_data_batch_3"):
        im.prepare_imagenet64(tmp_path, n_train=25)


def test_fashion_mnist_stand_in_from_idx_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    src = tmp_path / "fm"
    src.mkdir()
    imgs = {"train": rng.integers(0, 256, (7, 28, 28), dtype=np.uint8), "t10k": rng.integers(0, 256, (2, 28, 28),
                                                                                              dtype=np.uint8)}
    for name, a in imgs.items():
        header = np.array([2051, len(a), 28, 28], dtype=">u4").tobytes()
        (src / f"{name}-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + a.tobytes()))
    monkeypatch.setattr(im, "FASHION_MNIST_DIR", src)
    monkeypatch.setattr(im, "FASHION_MNIST_N_TRAIN", 5)
    paths = im.prepare_fashion_mnist(tmp_path, resolution=56)
    got = {s: np.fromfile(p, dtype=np.uint8).reshape(-1, 56, 56, 3) for s, p in paths.items()}
    assert [len(got[s]) for s in im.SPLITS] == [5, 2, 2]
    up = imgs["train"].repeat(2, axis=1).repeat(2, axis=2)                    # 28 -> 56 nearest = pixel doubling
    assert np.array_equal(got["train"][..., 0], up[:5]) and np.array_equal(got["validation"][..., 1], up[5:])
    assert np.array_equal(got["test"][..., 2], imgs["t10k"].repeat(2, axis=1).repeat(2, axis=2))


def test_fashion_mnist_absent(tmp_path, monkeypatch):
    monkeypatch.setattr(im, "FASHION_MNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(DataUnavailableError, match="dataset-fashion-mnist"):
        im.prepare_fashion_mnist(tmp_path)


# ---------------------------------------------------------------- data module


def _dm(root, **kw):
    args = dict(name="generated_images", root=str(root), sequence_len=SEQ, batch_size=4, resolution=RES)
    args.update(kw)
    dm = im.ImageLMDataModule(**args)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_generated_images_are_seeded_and_distinct():
    a, b = im.generate_images(5, RES, 0), im.generate_images(5, RES, 1)
    assert np.array_equal(a, im.generate_images(5, RES, 0)) and not np.array_equal(a, b)
    assert a.shape == (5, SEQ) and a.std() > 20


def test_training_windows_are_whole_images(tmp_path):
    dm = _dm(tmp_path)
    images = np.fromfile(dm._split_path("train"), dtype=np.uint8).reshape(-1, SEQ)
    assert dm.n_images("train") == 2000
    for epoch in range(2):
        dm.trainer = None
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        batch = next(iter(loader))
        assert bool((batch["inputs"][:, 0] == EOS).all()) and bool(batch["mask"].all())
        for row in (batch["targets"] - BYTE_OFFSET).numpy():
            assert (images == row).all(axis=1).any()      # aligned on an image, never across two


def test_eval_is_one_image_per_sequence_and_limit_rounds_up(tmp_path):
    dm = _dm(tmp_path, limit_eval_bytes=SEQ * 2 + 1, eval_batch_size=16)
    (batch,) = list(dm.val_dataloader())
    images = np.fromfile(dm._split_path("validation"), dtype=np.uint8).reshape(-1, SEQ)
    assert batch["targets"].shape == (3, SEQ) and bool(batch["mask"].all())
    assert np.array_equal((batch["targets"] - BYTE_OFFSET).numpy(), images[:3])
    assert sum(len(b["targets"]) for b in dm.test_dataloader()) == 100


def test_bad_image_config(tmp_path):
    with pytest.raises(ValueError, match="data.sequence_len"):
        im.ImageLMDataModule("generated_images", str(tmp_path), 100, 4, resolution=RES)
    with pytest.raises(ValueError, match="data.name"):
        im.ImageLMDataModule("enwik8", str(tmp_path), SEQ, 4, resolution=RES)
    with pytest.raises(ValueError, match="data.resolution"):
        im.prepare_imagenet64(tmp_path, resolution=32)


# ---------------------------------------------------------------- experiment and sampler

TINY = ["data=imagenet64_generated", f"data.resolution={RES}", f"sequence_len={SEQ}", "update_len=96",
        "eval_window=96", "model.d_model=32", "model.d_k=16", "model.d_v=64", "model.n_layer=1", "codebook=s16",
        "block=l16", "micro_batch_size=null", "data.batch_size=4", "data.eval_batch_size=8",
        f"data.limit_eval_bytes={SEQ * 8}", "optim.warmup_steps=2", "trainer.max_steps=4",
        "trainer.val_check_interval=2", "ckpt_every=2", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "logger=csv"]


def test_experiment_imagenet64_runs_and_samples_a_png(tmp_path, single_thread):
    from conftest import make_cfg
    from vqformer.lit.checkpoint import load_module
    from vqformer.lit.runner import evaluate, train
    from vqformer.sample_images import image_grid, sample_images, write_png

    cfg = make_cfg("experiment=tvq/imagenet64", *TINY, f"paths.data_dir={tmp_path / 'data'}",
                   f"paths.log_dir={tmp_path / 'logs'}")
    assert cfg.name == "tvq/imagenet64" and cfg.model.pe_abs and cfg.optim.name == "adafactor"
    metrics = train(cfg, tmp_path / "run")
    assert metrics["step"] == 4 and metrics["val/tokens"] == 8 * SEQ
    # Bits per byte = bits per subpixel: mean NLL over every byte of every image, in bits.
    assert metrics["val/bpb"] == pytest.approx(metrics["val/loss"] / math.log(2), rel=1e-5)
    test = evaluate(tmp_path / "run", "test")
    assert test["test/tokens"] == 100 * SEQ

    model = load_module(tmp_path / "run").model
    images = sample_images(model, 4, RES, p=0.999, temperature=1.0, seed=0)
    assert images.shape == (4, RES, RES, 3) and images.dtype == np.uint8
    assert np.array_equal(images, sample_images(model, 4, RES, p=0.999, temperature=1.0, seed=0))
    path = write_png(image_grid(images), tmp_path / "grid.png")
    import matplotlib.pyplot as plt
    png = plt.imread(path)
    assert png.shape[:2] == (2 * (RES + 1) + 1,) * 2
    assert np.allclose(png[1:1 + RES, 1:1 + RES, :3] * 255, images[0], atol=0.51)
    assert np.allclose(png[RES + 2:2 * RES + 2, RES + 2:2 * RES + 2, :3] * 255, images[3], atol=0.51)


def test_sampled_pixels_follow_the_model_distribution(single_thread):
    """The first subpixel after EOS is drawn from the model's softmax over byte tokens only (specials excluded)."""
    from vqformer.models import TransformerVQ, TransformerVQConfig
    from vqformer.sample_images import sample_images

    torch.manual_seed(0)
    model = TransformerVQ(TransformerVQConfig(vocab_size=259, d_model=16, d_k=8, d_v=32, n_layer=1, n_code=8,
                                              block_len=4)).eval()
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.zero_()
        model.out.bias[:BYTE_OFFSET] = 50.0           # special ids would win every draw if they were allowed
        model.out.bias[BYTE_OFFSET + 10] = 6.0
        model.out.bias[BYTE_OFFSET + 20] = 5.0
    images = sample_images(model, 4000, 1, p=1.0, temperature=1.0, seed=0)   # 1x1 images: 3 subpixels each
    assert images.shape == (4000, 1, 1, 3)
    z = math.exp(6) + math.exp(5) + 254
    first = images[:, 0, 0, 0]
    assert abs((first == 10).mean() - math.exp(6) / z) < 0.03
    assert abs((first == 20).mean() - math.exp(5) / z) < 0.03
    assert abs((first == 0).mean() - 1 / z) < 0.01      # 0 is an ordinary pixel value (token 3), not pad


def test_image_sequence_length_is_checked_by_the_config():
    from conftest import make_cfg
    from vqformer.config import ConfigError
    from vqformer.lit.tasks import task_class

    cfg = make_cfg("experiment=tvq/imagenet64", *TINY, "sequence_len=384", "data.resolution=8")
    with pytest.raises(ConfigError, match="sequence_len"):
        task_class(cfg.task).validate_config(cfg)


def test_prepare_command_line(tmp_path, capsys):
    from vqformer.data.prepare import main

    assert main(["generated_images", "--root", str(tmp_path), "--resolution", "4"]) == 0
    assert "2,000 images" in capsys.readouterr().out
    assert main(["imagenet64", "--root", str(tmp_path)]) == 1
    assert "imagenet64/raw" in capsys.readouterr().err
