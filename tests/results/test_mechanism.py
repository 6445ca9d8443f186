"""The mechanism experiment's configuration (it composes and validates; the gap is beyond the no-cache reach)
and its results family on fake runs: per-arm accuracy, the paired 95% t interval, chance, the verdicts, and
the archive of the runs' small files."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import make_cfg
from vqformer.config import ConfigError, validate
from vqformer.lit.runner import DONE
from vqformer.results import mechanism
from vqformer.results.stats import paired_ci


def test_experiment_composes_validates_and_sweeps_cache_by_seed():
    cfg = make_cfg("experiment=tvq/mechanism_cache")
    validate(cfg, check_device=False)
    assert cfg.task == "recall" and cfg.model.attn_type == "vq" and cfg.data.name == "mqar"
    assert cfg.data.query_gap > 2 * cfg.model.block_len
    seg = cfg.data.test_segments[0]
    assert 2 * seg.num_kv_pairs + cfg.data.query_gap + 2 * seg.num_kv_pairs <= seg.input_seq_len
    params = cfg.hydra.sweeper.params
    assert str(params["model.agg_cache"]) == "true,false" and str(params.seed) == "0,1,2"


@pytest.mark.parametrize("gap, match", [(-1, r"data\.query_gap"), (113, r"data\.query_gap")])
def test_a_bad_gap_fails_before_any_work_naming_the_key(gap, match):
    with pytest.raises(ConfigError, match=match):
        validate(make_cfg("experiment=tvq/mechanism_cache", f"data.query_gap={gap}"), check_device=False)


def test_paired_ci_is_the_t_interval():
    lo, hi = paired_ci([0.9, 0.8, 0.85])
    half = 4.303 * 0.05 / math.sqrt(3)                # t(0.975, df 2) · sd / √n
    assert (lo, hi) == pytest.approx((0.85 - half, 0.85 + half))
    with pytest.raises(ValueError, match="at least 2"):
        paired_ci([0.5])


def fake_run(root: Path, cache: bool, seed: int, acc: float, folder: str | None = None) -> Path:
    run = root / (folder or f"model.agg_cache={cache},seed={seed}")
    (run / "csv" / "version_0").mkdir(parents=True)
    (run / "config.yaml").write_text(
        f"name: {mechanism.NAME}\nseed: {seed}\nmodel: {{agg_cache: {str(cache).lower()}, block_len: 16}}\n"
        "data: {vocab_size: 64, query_gap: 64, test_segments: [{input_seq_len: 128, num_kv_pairs: 4, num_examples: 1000}]}\n")
    (run / DONE).write_text(json.dumps({"val/acc": acc, "step": 400}))
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x" * 10)
    (run / mechanism.DETAIL).write_text(json.dumps({"acc": acc, "in_set": 1.0 if cache else 0.125}))   # scored
    rows = "step,val/acc,train/loss\n9,,3.0\n99,0.2,\n199,0.4,\n400,%s,\n" % acc
    (run / "csv" / "version_0" / "metrics.csv").write_text(rows)
    return run


def runs(tmp_path, cache_accs, no_cache_accs):
    return [mechanism.load(fake_run(tmp_path, c, s, a)) for c, accs in ((True, cache_accs), (False, no_cache_accs))
            for s, a in enumerate(accs)]


def test_summary_agrees_when_cache_is_high_and_no_cache_at_chance(tmp_path):
    s = mechanism.summarize(runs(tmp_path, [0.9, 0.95, 0.85], [0.03, 0.031, 0.029]))
    assert s["arms"][True]["mean"] == pytest.approx(0.9) and s["arms"][False]["max"] == 0.031
    diffs = [0.87, 0.919, 0.821]
    assert s["diff"]["seeds"] == pytest.approx(dict(enumerate(diffs)))
    assert (s["diff"]["lo"], s["diff"]["hi"]) == pytest.approx(paired_ci(diffs))
    p, band = s["chance"]
    assert p == 1 / 32 and band == pytest.approx(3 * math.sqrt(p * (1 - p) / 4000))
    assert [v[2] for v in s["verdicts"]] == ["agrees"] * 3
    table = mechanism.to_markdown(s)
    assert "| cache | 0.900 | 0.950 | 0.850 | 0.900 [0.850, 0.950] |" in table and "0.031" in table


def test_summary_disagrees_or_stays_unresolved_otherwise(tmp_path):
    s = mechanism.summarize(runs(tmp_path, [0.1, 0.5, 0.04], [0.05, 0.2, 0.3]))
    assert [v[2] for v in s["verdicts"]] == ["disagrees", "disagrees", "unresolved"]


def test_main_archives_small_files_and_a_logs_run_replaces_the_archived_one(tmp_path):
    logs, archive, out = tmp_path / "logs", tmp_path / "archive", tmp_path / "out"
    for s in range(3):
        fake_run(logs, True, s, 0.9)
        fake_run(archive, False, s, 0.03)
    fake_run(archive, True, 0, 0.1)                          # the same folder name as a run in logs: replaced
    mechanism.main(["--logs", str(logs), "--archive", str(archive), "--out", str(out), "--archive-new"])
    copied = archive / "model.agg_cache=True,seed=1"
    assert (copied / "config.yaml").exists() and (copied / "csv" / "version_0" / "metrics.csv").exists()
    assert not (copied / "checkpoints").exists() and (copied / mechanism.DETAIL).exists()
    table = (out / "tables.md").read_text()
    assert "| cache | 0.900 | 0.900 | 0.900 | 0.900 [0.900, 0.900] | 1.0000 (3 seeds) |" in table
    assert (out / "mechanism_acc.png").stat().st_size > 0
    assert len((out / "mechanism.csv").read_text().splitlines()) == 1 + 6


def test_a_trained_run_is_scored_from_its_checkpoint_like_its_logged_validation(tmp_path):
    """A tiny real run: the rescored accuracy equals the logged one; a correct prediction is in the value set."""
    from vqformer.lit.runner import train

    cfg = make_cfg("experiment=tvq/mechanism_cache", f"paths.data_dir={tmp_path / 'data'}", "model.d_model=16",
                   "model.d_k=8", "model.d_ff=32", "data.batch_size=8", "data.eval_batch_size=8",
                   "data.train_segments=[{input_seq_len:128,num_kv_pairs:4,num_examples:32}]",
                   "data.test_segments=[{input_seq_len:128,num_kv_pairs:4,num_examples:24}]",
                   "trainer.max_steps=3", "trainer.val_check_interval=3")
    metrics = train(cfg, tmp_path / "logs" / "model.agg_cache=True,seed=0")
    out = tmp_path / "out"
    mechanism.main(["--logs", str(tmp_path / "logs"), "--archive", str(tmp_path / "archive"), "--out", str(out),
                    "--archive-new"])
    detail = json.loads((tmp_path / "archive" / "model.agg_cache=True,seed=0" / mechanism.DETAIL).read_text())
    assert detail["queries"] == 24 * 4 and detail["acc"] == pytest.approx(metrics["val/acc"])
    assert detail["acc"] <= detail["in_set"] <= 1 and detail["in_set_chance"] == 4 / 32
    assert f"{detail['in_set']:.4f} (1 seeds)" in (out / "tables.md").read_text()
