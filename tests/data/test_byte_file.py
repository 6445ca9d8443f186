"""Your own byte file (data=byte_file): split, prepared and hashed like the built-in corpora; the data is part
of a run's identity; `evaluate` scores a checkpoint on any byte file. Small generated files, tiny models."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import make_cfg
from conftest import REPO, TINY, Crash
from vqformer.data.byte_file import (ByteFileDataModule, byte_file_data, byte_file_dir, fraction_bounds,
                                     prepare_byte_file, split_fractions)
from vqformer.data.files import DataIntegrityError, DataIntegrityWarning, DataUnavailableError
from vqformer.data.identity import RECORD, DataIdentityError
from vqformer.lit.runner import DONE, evaluate, train


def _text(n: int, seed: int) -> bytes:
    """Seeded word text over a small alphabet: learnable within a few updates."""
    rng = np.random.default_rng(seed)
    words = [bytes(rng.choice(list(b"abcdefghij"), size=rng.integers(2, 6)).tolist()) for _ in range(30)]
    out = bytearray()
    while len(out) < n:
        out += words[int(rng.integers(0, len(words)))] + b" "
    return bytes(out[:n])


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ split fractions


def test_split_bounds_are_exact_decimal_cuts():
    assert fraction_bounds(1_000_000, (0.9, 0.05, 0.05)) == {
        "train": (0, 900_000), "validation": (900_000, 950_000), "test": (950_000, 1_000_000)}
    # In floats 100 · 0.29 = 28.999999999999996, which would floor to 28.
    assert fraction_bounds(100, (0.29, 0.31, 0.4))["train"] == (0, 29)
    assert fraction_bounds(10, (0, 0, 1)) == {"train": (0, 0), "validation": (0, 0), "test": (0, 10)}


@pytest.mark.parametrize("bad", [[0.9, 0.1], [0.9, 0.2, 0.1], [1.1, -0.05, -0.05], "0.9,0.05,0.05",
                                 [0.9, 0.05, None], [True, 0, 0], [float("nan"), 0.5, 0.5]])
def test_bad_split_names_data_split(bad):
    with pytest.raises(ValueError, match=r"data\.split"):
        split_fractions(bad)


# ------------------------------------------------------------------ preparation


def test_prepared_splits_are_the_file_cut_at_the_fractions_with_hashes(tmp_path):
    data = _text(10_000, 0)
    src = tmp_path / "my notes.txt"
    src.write_bytes(data)
    paths = prepare_byte_file(tmp_path / "data", src, [0.8, 0.1, 0.1])
    out = paths["train"].parent
    assert out == tmp_path / "data" / "byte_file" / f"my_notes-{_sha(data)[:16]}"
    assert [paths[s].read_bytes() for s in ("train", "validation", "test")] == [data[:8000], data[8000:9000],
                                                                                data[9000:]]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"] == {"kind": "byte_file", "sha256": _sha(data), "split": [0.8, 0.1, 0.1]}
    assert meta["source_path"] == str(src)
    for split, path in paths.items():
        assert meta["splits"][split]["sha256"] == _sha(path.read_bytes())
    # Prepared once: a second call reuses the files.
    mtimes = {s: p.stat().st_mtime_ns for s, p in paths.items()}
    assert prepare_byte_file(tmp_path / "data", src, [0.8, 0.1, 0.1], verify=True) == paths
    assert {s: p.stat().st_mtime_ns for s, p in paths.items()} == mtimes
    # Another split of the same content is prepared again (the manifest records the cut).
    other = prepare_byte_file(tmp_path / "data", src, [0.5, 0.25, 0.25])
    assert other["train"].read_bytes() == data[:5000]


def test_new_content_at_the_same_path_gets_its_own_folder(tmp_path):
    src = tmp_path / "f.txt"
    src.write_bytes(_text(4000, 0))
    old = prepare_byte_file(tmp_path / "data", src)
    old_train = old["train"].read_bytes()
    src.write_bytes(_text(4000, 1))
    new = prepare_byte_file(tmp_path / "data", src)
    assert new["train"].parent != old["train"].parent
    assert new["train"].read_bytes() == _text(4000, 1)[:3600]
    assert old["train"].read_bytes() == old_train        # the old content's splits are left alone


def test_flipped_byte_in_a_split_is_prepared_again_from_the_file_or_stops_without_it(tmp_path):
    data = _text(6000, 2)
    src = tmp_path / "f.txt"
    src.write_bytes(data)
    paths = prepare_byte_file(tmp_path / "data", src)
    st = paths["validation"].stat()
    raw = bytearray(paths["validation"].read_bytes())
    raw[10] ^= 0x20
    paths["validation"].write_bytes(raw)
    os.utime(paths["validation"], ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.warns(DataIntegrityWarning, match="validation.bin"):
        prepare_byte_file(tmp_path / "data", src, verify=True)
    assert paths["validation"].read_bytes() == data[5400:5700]

    # The source gone, the content pinned by its hash: intact splits are still used, a damaged one is named.
    src.unlink()
    assert prepare_byte_file(tmp_path / "data", src, sha256=_sha(data), verify=True) == paths
    paths["train"].write_bytes(bytes(paths["train"].stat().st_size))
    with pytest.raises(DataIntegrityError, match=r"train\.bin.*\n.*put the file with sha256"):
        prepare_byte_file(tmp_path / "data", src, sha256=_sha(data), verify=True)


def test_pinned_hash_refuses_other_content_and_missing_file_is_named(tmp_path):
    src = tmp_path / "f.txt"
    src.write_bytes(_text(3000, 0))
    with pytest.raises(DataIntegrityError, match=f"has sha256 {_sha(src.read_bytes())}, but data.sha256 pins {'0' * 64}"):
        prepare_byte_file(tmp_path / "data", src, sha256="0" * 64)
    with pytest.raises(DataUnavailableError, match=r"data\.path=.*nowhere\.txt: no such file"):
        prepare_byte_file(tmp_path / "data", tmp_path / "nowhere.txt")


def test_data_module_trains_and_scores_only_what_it_needs(tmp_path):
    src = tmp_path / "f.txt"
    src.write_bytes(_text(5000, 0))
    dm = ByteFileDataModule(path=str(src), split=[0.9, 0.1, 0.0], root=str(tmp_path / "data"), sequence_len=64,
                            batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["inputs"].shape == (4, 64) and int(batch["targets"].max()) < 256 + 3
    with pytest.raises(ValueError, match=r"data\.split=\[0\.9, 0\.1, 0\.0\] leaves the test split .* empty"):
        ByteFileDataModule(path=str(src), split=[0.9, 0.1, 0.0], root=str(tmp_path / "data"), sequence_len=64,
                           batch_size=4).setup("test")
    # Scoring a whole file: no train split needed.
    whole = ByteFileDataModule(path=str(src), split=[0, 0, 1], root=str(tmp_path / "data"), sequence_len=64,
                               batch_size=4)
    whole.prepare_data()
    whole.setup("test")
    assert whole.n_bytes("test") == 5000


# ------------------------------------------------------------------ runs: identity and evaluation

BYTE_FILE = ["data=byte_file", "data.batch_size=4", "data.eval_batch_size=4", "data.limit_eval_bytes=2048",
             "trainer.max_steps=4", "trainer.val_check_interval=100", "ckpt_every=2"]


def _cfg(tmp_path: Path, *extra: str):
    """test_train's tiny model and loop, on a byte file instead of the generated corpus."""
    model_and_loop = [o for o in TINY if not o.startswith("data")]
    return make_cfg(*model_and_loop, *BYTE_FILE, f"paths.data_dir={tmp_path / 'data'}",
                    f"paths.log_dir={tmp_path / 'logs'}", "logger=csv", *extra)


def _file_cfg(tmp_path: Path, src: Path, *extra: str):
    return _cfg(tmp_path, f"data.path={src}", *extra)


def test_run_records_its_byte_file_and_refuses_other_content_at_the_same_path(tmp_path):
    src = tmp_path / "corpus.txt"
    src.write_bytes(_text(20_000, 0))
    run = tmp_path / "run"
    metrics = train(_file_cfg(tmp_path, src), run)
    written = OmegaConf.load(run / "config.yaml")
    assert written.data.path == str(src) and written.data.sha256 == _sha(src.read_bytes())
    assert json.loads((run / RECORD).read_text())["identity"] == {
        "name": "byte_file", "sha256": _sha(src.read_bytes()), "split": [0.9, 0.05, 0.05]}
    assert (tmp_path / "data" / "byte_file" / f"corpus-{_sha(src.read_bytes())[:16]}" / "meta.json").exists()

    # Same command, same content: the finished run is a no-op.
    assert train(_file_cfg(tmp_path, src), run) == metrics
    # Same command, other content at that path: refused before any work, naming both hashes and the way out.
    old_sha = _sha(src.read_bytes())
    src.write_bytes(_text(20_000, 1))
    done_before = (run / DONE).read_text()
    ckpt_mtime = (run / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    with pytest.raises(DataIdentityError) as err:
        train(_file_cfg(tmp_path, src), run)
    msg = str(err.value)
    assert old_sha in msg and _sha(src.read_bytes()) in msg and "name=" in msg and "hydra.run.dir=" in msg
    assert (run / DONE).read_text() == done_before
    assert (run / "checkpoints" / "last.ckpt").stat().st_mtime_ns == ckpt_mtime
    assert OmegaConf.load(run / "config.yaml").data.sha256 == old_sha
    # Another split of the same content is other data too.
    src.write_bytes(_text(20_000, 0))
    with pytest.raises(DataIdentityError, match="split"):
        train(_file_cfg(tmp_path, src, "data.split=[0.8,0.1,0.1]"), run)


def test_interrupted_run_is_not_resumed_on_other_content(tmp_path):
    src = tmp_path / "corpus.txt"
    src.write_bytes(_text(20_000, 0))
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated preemption"):
        train(_file_cfg(tmp_path, src), run, extra_callbacks=[Crash(at=3)])   # after the checkpoint of update 2
    assert (run / "checkpoints" / "last.ckpt").exists() and not (run / DONE).exists()
    src.write_bytes(_text(20_000, 3))
    with pytest.raises(DataIdentityError):
        train(_file_cfg(tmp_path, src), run)
    assert not (run / DONE).exists()


def test_missing_path_stops_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"data\.path is required"):
        train(_cfg(tmp_path), tmp_path / "run")
    with pytest.raises(DataUnavailableError, match=r"data\.path=.*absent\.txt"):
        train(_file_cfg(tmp_path, tmp_path / "absent.txt"), tmp_path / "run2")
    assert not (tmp_path / "data").exists()
    assert not (tmp_path / "run2" / "config.yaml").exists()


def _mean_nll(run: Path, data: bytes, T: int = 64) -> float:
    """Reference: the checkpoint's mean NLL over `data` cut into sequences of T bytes, built by hand
    (EOS, then the bytes + 3; the last sequence padded and masked)."""
    import torch
    from vqformer.lit.checkpoint import load_module

    module = load_module(run)
    total, count = 0.0, 0
    for s in range(0, len(data), T):
        chunk = torch.tensor(list(data[s:s + T])) + 3
        n = len(chunk)
        targets = torch.zeros(1, T, dtype=torch.long)
        targets[0, :n] = chunk
        inputs = torch.cat([torch.ones(1, 1, dtype=torch.long), targets[:, :-1]], 1)
        mask = torch.arange(T)[None] < n
        nll, cnt, _ = module.score(inputs, targets, mask)
        total, count = total + float(nll), count + int(cnt)
    assert count == len(data)
    return total / count


def test_evaluate_scores_the_checkpoint_on_another_byte_file(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_bytes(_text(20_000, 0))
    b.write_bytes(_text(3_000, 5))
    run = tmp_path / "run"
    train(_file_cfg(tmp_path, a), run)
    own = evaluate(run, "test")
    # The run's own file through data_path gives the run's own numbers (same cut, same prepared splits).
    same = evaluate(run, "test", data_path=str(a))
    assert same == pytest.approx(own, rel=1e-6)
    # The whole of another file: every byte scored once.
    other = evaluate(run, "test", data_path=str(b), data_split=[0, 0, 1])
    assert other["test/tokens"] == 3000
    assert other["test/loss"] == pytest.approx(_mean_nll(run, b.read_bytes()), rel=1e-5)
    prepared = byte_file_dir(tmp_path / "data", b, _sha(b.read_bytes()))
    assert (prepared / "test.bin").read_bytes() == b.read_bytes()


def test_only_byte_level_runs_score_byte_files():
    books = OmegaConf.create({"_target_": "vqformer.data.books_datamodule.BookLMDataModule", "name": "pg19"})
    with pytest.raises(ValueError, match=r"data\.path: this run trains on 'pg19'"):
        byte_file_data(books, "/some/file.txt")


def test_evaluate_command_line_takes_data_path_and_records_the_file(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_bytes(_text(20_000, 0))
    b.write_bytes(_text(3_000, 5))
    run = tmp_path / "run"
    train(_file_cfg(tmp_path, a), run)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "vqformer.evaluate", f"run_dir={run}", f"data.path={b}", "split=test",
           "data.split=[0,0,1]"]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((run / f"eval_test-b-{_sha(b.read_bytes())[:16]}.json").read_text())
    assert record["data"]["sha256"] == _sha(b.read_bytes()) and record["data"]["path"] == str(b)
    assert record["metrics"]["test/tokens"] == 3000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = evaluate(run, "test", data_path=str(b), data_split=[0, 0, 1])
    assert record["metrics"]["test/loss"] == pytest.approx(direct["test/loss"], rel=1e-6)
