"""Tests of the data layer (docs/transformer_vq.md §4.3): corpora, atomic files, the byte LM data module."""

from __future__ import annotations

import hashlib
import itertools
import http.server
import json
import socket
import threading
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from vqformer.data import bytes_corpus as bc
from vqformer.data import files
from vqformer.data.files import DataIntegrityError, DataUnavailableError
from vqformer.data.lm_datamodule import EOS, PAD, VOCAB_SIZE, ByteLMDataModule

N_GEN = 20_000


def _dm(tmp_path, **kw):
    args = dict(name="generated", root=str(tmp_path), sequence_len=64, batch_size=8, n_bytes=N_GEN)
    args.update(kw)
    dm = ByteLMDataModule(**args)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".part")))


# ---------------------------------------------------------------- corpora


def test_generated_is_deterministic_by_seed():
    a, b, c = bc.generate_bytes(5000, 3), bc.generate_bytes(5000, 3), bc.generate_bytes(5000, 4)
    assert a == b and a != c and len(a) == 5000
    assert len(set(a)) <= 40


def test_split_bounds():
    assert bc.split_bounds(100_000_000) == {
        "train": (0, 90_000_000),
        "validation": (90_000_000, 95_000_000),
        "test": (95_000_000, 100_000_000),
    }
    sizes = [e - s for s, e in bc.split_bounds(6_089_746).values()]
    assert sizes == [5_480_771, 304_487, 304_488]


def test_prepare_generated_writes_splits_and_meta(tmp_path):
    paths = bc.prepare("generated", tmp_path, n_bytes=N_GEN, seed=1)
    out = tmp_path / f"generated_{N_GEN}_1"
    assert {p.parent for p in paths.values()} == {out}
    data = bc.generate_bytes(N_GEN, 1)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["n_bytes"] == N_GEN
    for split, (start, end) in bc.split_bounds(N_GEN).items():
        content = paths[split].read_bytes()
        assert content == data[start:end]
        assert meta["splits"][split]["n_bytes"] == end - start
        assert meta["splits"][split]["sha256"] == hashlib.sha256(content).hexdigest()
    assert [len(paths[s].read_bytes()) for s in bc.SPLITS] == [18_000, 1_000, 1_000]
    assert _leftovers(out) == []


def test_prepare_skips_when_prepared_and_verify_repairs(tmp_path, monkeypatch):
    paths = bc.prepare_generated(tmp_path, n_bytes=N_GEN, seed=0)
    good = paths["test"].read_bytes()

    def boom(*a, **k):
        raise AssertionError("should have skipped")

    with monkeypatch.context() as m:
        m.setattr(bc, "_write_splits", boom)
        bc.prepare_generated(tmp_path, n_bytes=N_GEN, seed=0)
    # Same size, different content: only the sha256 check (verify=True) notices and rewrites.
    paths["test"].write_bytes(bytes(len(good)))
    bc.prepare_generated(tmp_path, n_bytes=N_GEN, seed=0)
    assert paths["test"].read_bytes() != good
    with pytest.warns(files.DataIntegrityWarning, match=f"{paths['test']}: sha256"):
        bc.prepare_generated(tmp_path, n_bytes=N_GEN, seed=0, verify=True)
    assert paths["test"].read_bytes() == good


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(ValueError, match=r"data.name: unknown dataset 'x'; choose one of \['enwik8', 'wiki_sample', 'generated', 'parity_wiki1m', 'byte_file'\]"):
        bc.prepare("x", tmp_path)


def test_prepared_splits_requires_prepare(tmp_path):
    with pytest.raises(DataUnavailableError, match="python -m vqformer.data.prepare wiki_sample"):
        bc.prepared_splits("wiki_sample", tmp_path)


def test_wiki_sample(tmp_path):
    try:
        bc._gensim_file(bc.WIKI_SAMPLE_FILE)
    except DataUnavailableError as e:
        pytest.skip(str(e))
    paths = bc.prepare_wiki_sample(tmp_path)
    assert [paths[s].stat().st_size for s in bc.SPLITS] == [5_480_771, 304_487, 304_488]
    assert paths["train"].read_bytes()[:100].lstrip().startswith(b"<mediawiki")


def test_wiki_sample_without_gensim(tmp_path, monkeypatch):
    monkeypatch.setattr(bc.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataUnavailableError, match=r"pip install --no-deps gensim==4\.4\.0"):
        bc.prepare_wiki_sample(tmp_path)


# ---------------------------------------------------------------- enwik8


def _fake_enwik8(tmp_path, monkeypatch, content: bytes, member: bytes | None = None) -> Path:
    """A small enwik8.zip whose member is `member`, with the expected md5/size set to `content`'s."""
    monkeypatch.setattr(bc, "ENWIK8_SIZE", len(content))
    monkeypatch.setattr(bc, "ENWIK8_MD5", hashlib.md5(content).hexdigest())
    zip_path = tmp_path / "enwik8" / "enwik8.zip"
    zip_path.parent.mkdir(parents=True)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("enwik8", content if member is None else member)
    return zip_path


def test_enwik8_small_valid_zip_is_accepted(tmp_path, monkeypatch):
    content = bytes(np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8))
    _fake_enwik8(tmp_path, monkeypatch, content)
    paths = bc.prepare_enwik8(tmp_path, allow_download=False)
    assert b"".join(paths[s].read_bytes() for s in bc.SPLITS) == content
    assert [paths[s].stat().st_size for s in bc.SPLITS] == [9_000, 500, 500]


def test_enwik8_wrong_md5_is_rejected(tmp_path, monkeypatch):
    content = b"a" * 10_000
    zip_path = _fake_enwik8(tmp_path, monkeypatch, content, member=b"b" * 10_000)
    with pytest.raises(DataIntegrityError) as err:
        bc.prepare_enwik8(tmp_path, allow_download=False)
    message = str(err.value)
    assert str(zip_path) in message and "md5" in message and bc.ENWIK8_MD5 in message
    assert hashlib.md5(b"b" * 10_000).hexdigest() in message
    assert sorted(p.name for p in zip_path.parent.iterdir()) == ["enwik8.zip"]


def test_enwik8_truncated_zip_is_rejected(tmp_path, monkeypatch):
    zip_path = _fake_enwik8(tmp_path, monkeypatch, bytes(range(256)) * 40)
    zip_path.write_bytes(zip_path.read_bytes()[:-200])
    with pytest.raises(DataIntegrityError, match="corrupt or truncated") as err:
        bc.prepare_enwik8(tmp_path, allow_download=False)
    assert str(zip_path) in str(err.value)
    assert sorted(p.name for p in zip_path.parent.iterdir()) == ["enwik8.zip"]


def test_enwik8_missing_without_network(tmp_path, monkeypatch):
    def offline(url, dest, **kw):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(bc, "download", offline)
    with pytest.raises(DataUnavailableError) as err:
        bc.prepare_enwik8(tmp_path)
    message = str(err.value)
    assert bc.ENWIK8_URL in message and str(tmp_path / "enwik8" / "enwik8.zip") in message


# ---------------------------------------------------------------- files


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with files.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer failed")
    assert list(tmp_path.iterdir()) == []
    files.atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with files.atomic_path(target) as tmp:
            tmp.write_bytes(b"new")
            raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_hash_helpers(tmp_path):
    p = files.atomic_write_bytes(tmp_path / "x", b"abc")
    assert files.md5_file(p) == hashlib.md5(b"abc").hexdigest()
    assert files.sha256_file(p) == hashlib.sha256(b"abc").hexdigest()


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = bytes(range(256)) * 64

    def do_GET(self):
        body, status = self.payload, 200
        if rng := self.headers.get("Range"):
            start = int(rng.split("=")[1].rstrip("-"))
            body, status = self.payload[start:], 206
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(self.payload) - 1}/{len(self.payload)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/file.bin"
    server.shutdown()
    server.server_close()


def test_download_resumes_and_verifies(tmp_path, http_url):
    payload = _RangeHandler.payload
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(payload[:1000])
    files.download(http_url, dest, md5=hashlib.md5(payload).hexdigest())
    assert dest.read_bytes() == payload and _leftovers(tmp_path) == []

    with pytest.raises(DataIntegrityError) as err:
        files.download(http_url, tmp_path / "bad.bin", sha256="0" * 64)
    message = str(err.value)
    assert "bad.bin" in message and "0" * 64 in message and hashlib.sha256(payload).hexdigest() in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]


def test_download_unreachable(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/enwik8.zip"
    with pytest.raises(DataUnavailableError) as err:
        files.download(url, tmp_path / "enwik8.zip", timeout=5)
    assert url in str(err.value) and str(tmp_path / "enwik8.zip") in str(err.value)


# ---------------------------------------------------------------- data module


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"sequence_len": -5}, "data.sequence_len must be a positive integer, got -5"),
        ({"sequence_len": 0}, "data.sequence_len"),
        ({"batch_size": 0}, "data.batch_size"),
        ({"eval_batch_size": -1}, "data.eval_batch_size"),
        ({"num_workers": -1}, "data.num_workers"),
        ({"seed": -1}, "data.seed"),
        ({"limit_eval_bytes": 0}, "data.limit_eval_bytes"),
        ({"eval_sequence_len": 1.5}, "data.eval_sequence_len"),
        ({"n_bytes": 10}, "data.n_bytes"),
        ({"name": "enwik9"}, "data.name: unknown dataset 'enwik9'"),
        ({"name": "wiki_sample", "n_bytes": 5000}, "data.n_bytes"),
    ],
)
def test_bad_config(tmp_path, kw, key):
    args = dict(name="generated", root=str(tmp_path), sequence_len=64, batch_size=8)
    args.update(kw)
    with pytest.raises(ValueError, match=key.replace(".", r"\.").replace("(", r"\(")):
        ByteLMDataModule(**args)
    assert list(tmp_path.iterdir()) == []


def test_batch_too_large_for_corpus(tmp_path):
    with pytest.raises(ValueError, match="data.batch_size"):
        _dm(tmp_path, sequence_len=1024, batch_size=64)


def test_train_batch_alignment(tmp_path):
    dm = _dm(tmp_path)
    assert dm.vocab_size == VOCAB_SIZE == 259
    raw = np.asarray(dm.split_tokens("train"))
    assert dm.n_bytes("train") == len(raw) == 18_000
    batch = next(iter(dm.train_dataloader()))
    inputs, targets, mask = batch["inputs"], batch["targets"], batch["mask"]
    assert inputs.shape == targets.shape == mask.shape == (8, 64)
    assert inputs.dtype == targets.dtype == torch.long and mask.dtype == torch.bool and mask.all()
    assert (inputs[:, 0] == EOS).all() and torch.equal(inputs[:, 1:], targets[:, :-1])
    assert ((targets >= 3) & (targets < 259)).all()
    for row in targets.numpy():
        # Each target row is a contiguous slice of the corpus, offset by 3.
        hits = [s for s in range(len(raw) - 63) if raw[s] == row[0] - 3 and np.array_equal(raw[s : s + 64], row - 3)]
        assert hits


def _starts(loader, n_batches=None):
    return torch.cat([batch["targets"] for batch in itertools.islice(loader, n_batches)])


def test_train_loader_deterministic_by_seed(tmp_path):
    a = _starts(_dm(tmp_path, seed=0).train_dataloader())
    b = _starts(_dm(tmp_path, seed=0).train_dataloader())
    c = _starts(_dm(tmp_path, seed=1).train_dataloader())
    assert torch.equal(a, b) and not torch.equal(a, c)
    # One epoch: non-overlapping windows, drop_last.
    assert len(a) == (18_000 - 63) // 64 // 8 * 8
    loader = _dm(tmp_path, seed=0).train_dataloader()
    loader.sampler.set_epoch(1)
    assert not torch.equal(_starts(loader), a)


def test_train_loader_windows_cover_epoch_without_overlap(tmp_path):
    dm = _dm(tmp_path)
    sampler = dm.train_dataloader().sampler
    for epoch in range(3):
        starts = np.sort(sampler.offsets(epoch))
        assert np.all(np.diff(starts) == 64) and starts[0] < 64 and starts[-1] + 64 <= 18_000


def test_train_loader_state_dict_resume(tmp_path):
    dm = _dm(tmp_path)
    full = dm.train_dataloader()
    epoch0 = _starts(full)
    full.sampler.set_epoch(1)
    epoch1 = _starts(full)
    n = len(full)

    first = dm.train_dataloader()
    head = _starts(first, n_batches=5)
    state = first.state_dict()
    assert state == {"epoch": 0, "windows_done": 40}
    resumed = dm.train_dataloader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(0)  # Lightning re-announces the epoch after restoring
    assert torch.equal(torch.cat([head, _starts(resumed)]), epoch0)

    # A state saved at the end of an epoch resumes at the start of the next one.
    resumed.load_state_dict({"epoch": 0, "windows_done": n * 8})
    assert torch.equal(_starts(resumed), epoch1)


@pytest.mark.filterwarnings("ignore")  # Lightning and torch chatter; equality below is the check
def test_lightning_mid_epoch_resume(tmp_path):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(VOCAB_SIZE, 2)
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append(batch["targets"].clone())
            return self.emb(batch["inputs"]).sum() * 0.0

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    def fit(max_steps, ckpt=None, callbacks=()):
        trainer = L.Trainer(
            max_steps=max_steps, accelerator="cpu", devices=1, logger=False, callbacks=list(callbacks),
            enable_checkpointing=bool(callbacks), enable_progress_bar=False, enable_model_summary=False,
            limit_val_batches=0, num_sanity_val_steps=0,
        )
        model = Recorder()
        trainer.fit(model, datamodule=_dm(tmp_path, sequence_len=256, batch_size=4), ckpt_path=ckpt)
        return torch.cat(model.seen)

    per_epoch = (18_000 - 255) // 256 // 4  # 17 batches
    every_step = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1)
    reference = fit(per_epoch + 8, callbacks=[every_step])
    assert len(reference) == (per_epoch + 8) * 4
    # Mid-epoch 0, exactly at the epoch boundary, and mid-epoch 1.
    for step in (5, per_epoch, per_epoch + 3):
        (ckpt,) = (tmp_path / "ckpt").glob(f"*-step={step}.ckpt")
        tail = fit(per_epoch + 8, ckpt=str(ckpt))
        assert torch.equal(tail, reference[step * 4 :]), step


def test_eval_split_covered_once_in_order(tmp_path):
    dm = _dm(tmp_path, eval_sequence_len=48, eval_batch_size=5)
    raw = np.asarray(dm.split_tokens("validation")).astype(np.int64)
    assert len(raw) == 1000
    batches = list(dm.val_dataloader())
    targets = torch.cat([b["targets"] for b in batches])
    inputs = torch.cat([b["inputs"] for b in batches])
    mask = torch.cat([b["mask"] for b in batches])
    assert targets.shape == (21, 48)  # ceil(1000 / 48)
    assert torch.equal(targets[mask], torch.from_numpy(raw) + 3)
    assert int(mask.sum()) == 1000 and mask[:-1].all()
    assert mask[-1, : 1000 - 20 * 48].all() and not mask[-1, 1000 - 20 * 48 :].any()
    assert (targets[~mask] == PAD).all()
    assert (inputs[:, 0] == EOS).all() and torch.equal(inputs[:, 1:], targets[:, :-1])

    limited = _dm(tmp_path, limit_eval_bytes=100)
    vt = torch.cat([b["targets"] for b in limited.val_dataloader()])
    assert vt.shape == (2, 64) and torch.equal(vt[0], torch.from_numpy(raw[:64]) + 3)
    # The test split is never truncated.
    test_mask = torch.cat([b["mask"] for b in limited.test_dataloader()])
    assert int(test_mask.sum()) == limited.n_bytes("test") == 1000


def test_window_sampler_shards_by_rank_without_overlap():
    from vqformer.data.lm_datamodule import WindowSampler

    full = WindowSampler(10_000, 64, seed=3)
    shards = [WindowSampler(10_000, 64, seed=3, rank=r, world_size=3) for r in range(3)]
    got = [set(s.offsets(1).tolist()) for s in shards]
    assert all(len(g) == len(shards[0]) == full.n_windows // 3 for g in got)
    assert not (got[0] & got[1]) and not (got[1] & got[2]) and not (got[0] & got[2])
    assert set().union(*got) <= set(full.offsets(1).tolist())
