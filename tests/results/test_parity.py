"""The parity experiment: its corpus (the first 1 MB of wiki_sample), its configuration (the official tiny
one), and the results family that compares the runs' curves with the official window means."""
from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import pytest

from conftest import make_cfg
from conftest import tiny_cfg
from vqformer.data import bytes_corpus as bc
from vqformer.data.files import DataIntegrityWarning
from vqformer.lit.runner import DONE, train
from vqformer.optim import schedule_end, warmup_cosine
from vqformer.results import parity


def test_parity_corpus_is_the_first_megabyte_of_wiki_sample_split_900k_50k_50k(tmp_path):
    paths = bc.prepare("parity_wiki1m", tmp_path, verify=True)
    parts = [paths[s].read_bytes() for s in bc.SPLITS]
    assert [len(p) for p in parts] == [900_000, 50_000, 50_000]
    whole = b"".join(parts)
    assert hashlib.sha256(whole).hexdigest() == bc.PARITY_WIKI1M_SHA256
    # Independently of the constant: the same bytes start the wiki_sample corpus.
    wiki = bc.prepare("wiki_sample", tmp_path)
    assert wiki["train"].read_bytes()[:1_000_000] == whole
    meta = json.loads((paths["train"].parent / "meta.json").read_text())
    assert meta["source"]["prefix_sha256"] == bc.PARITY_WIKI1M_SHA256
    assert {s: meta["splits"][s]["sha256"] for s in bc.SPLITS} == {
        s: hashlib.sha256(p).hexdigest() for s, p in zip(bc.SPLITS, parts)}


def test_parity_corpus_with_a_flipped_byte_is_prepared_again_from_the_wheel(tmp_path):
    paths = bc.prepare("parity_wiki1m", tmp_path)
    good = paths["validation"].read_bytes()
    st = paths["validation"].stat()
    paths["validation"].write_bytes(good[:7] + bytes([good[7] ^ 0x20]) + good[8:])
    os.utime(paths["validation"], ns=(st.st_atime_ns, st.st_mtime_ns))   # size and mtime kept
    with pytest.warns(DataIntegrityWarning, match="validation.bin"):
        bc.prepare("parity_wiki1m", tmp_path, verify=True)
    assert paths["validation"].read_bytes() == good


def test_experiment_is_the_official_tiny_configuration():
    cfg = make_cfg("experiment=tvq/parity_official_tiny")
    assert cfg.data.name == "parity_wiki1m" and cfg.data.batch_size == 4 and cfg.data.limit_eval_bytes == 10_240
    assert (cfg.sequence_len, cfg.update_len, cfg.eval_window) == (256, 256, 256)
    m = cfg.model
    assert (m.block_len, m.n_code, m.d_model, m.d_k, m.d_v, m.n_layer, m.head_type, m.attn_type) == (
        32, 64, 128, 32, 256, 2, "shga", "vq")
    assert m.p_dropsin == m.p_dropres == m.p_droplyr == m.p_dropemb == 0
    o = cfg.optim
    assert (o.name, o.lr, o.grad_clip, o.weight_decay, o.warmup_steps) == ("adamw", 4e-4, 0.1, 2e-4, 20)
    assert cfg.trainer.max_steps == 201 and cfg.trainer.log_every_n_steps == 1
    assert str(cfg.hydra.sweeper.params.seed) == "0,1,2"
    # The official schedule: lr 0 at update 0, the peak at 20, 0.1 of it from update 200 on.
    lr = warmup_cosine(o.warmup_steps, schedule_end(o, cfg.trainer.max_steps), o.min_lr_ratio, o.warmup_from_zero)
    assert [lr(0), lr(10), lr(20), lr(200)] == pytest.approx([0, 0.5, 1, 0.1])


def test_window_means_are_inclusive_and_missing_updates_leave_them_empty():
    train = {t: float(t) for t in range(201)}
    assert parity.window_means(train) == pytest.approx([4.5, 50.5, 100.5, 150.5, 190.5])
    del train[150]
    assert parity.window_means(train)[3] is None


def _fake_run(root: Path, seed: int, offset: float) -> Path:
    run = root / f"official_tiny-seed{seed}"
    (run / "csv" / "version_0").mkdir(parents=True)
    (run / "config.yaml").write_text(f"name: {parity.NAME}\nseed: {seed}\ntags: [parity]\n")
    (run / DONE).write_text(json.dumps({"val/loss": 9.0, "step": 201}))
    rows = [{"step": t, "train/loss": 3 + offset + t / 1000, "val/loss": ""} for t in range(201)]
    rows.insert(200, {"step": 199, "train/loss": "", "val/loss": 2.7 + offset})   # after 200 updates
    rows.append({"step": 201, "train/loss": "", "val/loss": 9.0})                   # the closing validation
    with open(run / "csv" / "version_0" / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "train/loss", "val/loss"])
        w.writeheader()
        w.writerows(rows)
    return run


def test_results_family_writes_table_plot_and_archive(tmp_path):
    logs = tmp_path / "logs" / "multiruns" / "tvq_parity"
    _fake_run(logs, 0, 0.0)
    _fake_run(logs, 1, 0.2)
    out, archive = tmp_path / "out", tmp_path / "archive"
    parity.main(["--logs", str(tmp_path / "logs"), "--archive", str(archive), "--out", str(out), "--archive-new"])
    rows = list(csv.DictReader(open(out / "parity.csv")))
    assert [r["run"] for r in rows] == ["seed 0", "seed 1", "mean of 2 seeds", "official JAX code (quoted)",
                                        "ours - official"]
    assert float(rows[0]["0-9"]) == pytest.approx(3.0045) and float(rows[1]["181-200"]) == pytest.approx(3.3905)
    assert float(rows[2]["val@200"]) == pytest.approx(2.8)
    assert float(rows[4]["0-9"]) == pytest.approx(3.1045 - 6.08)
    assert (out / "parity_curve.png").stat().st_size > 1000
    assert "official JAX code (quoted)" in (out / "tables.md").read_text()
    assert sorted(p.name for p in archive.iterdir()) == ["official_tiny-seed0", "official_tiny-seed1"]
    assert (archive / "official_tiny-seed0" / "csv" / "version_0" / "metrics.csv").exists()
    assert not list(archive.rglob("*.ckpt"))


def test_validation_is_keyed_by_the_updates_trained_in_a_real_run(tmp_path):
    """Lightning logs the in-loop validation with the last update's index and the closing one with the
    global step; `load` must map both to the number of updates trained."""
    run = tmp_path / "run"
    final = train(tiny_cfg(tmp_path, "trainer.max_steps=6", "trainer.val_check_interval=3", "ckpt_every=2",
                           "sequence_len=32", "update_len=32", "trainer.log_every_n_steps=1"), run)
    rec = parity.load(run)
    assert sorted(rec["train"]) == list(range(6))
    assert sorted(rec["val"]) == [3, 6]
    assert rec["val"][6] == pytest.approx(final["val/loss"], rel=1e-6)
