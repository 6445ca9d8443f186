"""Long-context evaluation: ``python -m vqformer.results longctx`` scores trained runs at several contexts
through the evaluation entry point's function, guards full attention's context, and caches every point; and
``evaluate(eval_sequence_len="whole")`` scores the split as one sequence."""
from __future__ import annotations

import csv
import math
import shutil

import pytest
import torch

from conftest import tiny_cfg
from vqformer.lit.checkpoint import load_module, run_config
from vqformer.lit.runner import WHOLE, build_datamodule, evaluate, train
from vqformer.results import longctx

# Tiny runs: 64-byte sequences in 32-byte windows with the state carried (conftest.TINY), 4 updates.
SHORT = ["trainer.max_steps=4", "trainer.val_check_interval=100", "ckpt_every=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, single_thread):
    """Two seeds of Transformer-VQ and one of full attention, as finished run directories."""
    tmp = tmp_path_factory.mktemp("longctx")
    root = tmp / "runs"
    for name, extra in [("vq-seed0", ["seed=0"]), ("vq-seed1", ["seed=1"]),
                        ("full-seed0", ["seed=0", "model.attn_type=full"])]:
        train(tiny_cfg(tmp, *SHORT, *extra), root / name)
    return root


def run_tool(runs, out, *args):
    longctx.main(["--runs", str(runs), "--match", "*", "--out", str(out), "--threads", "1", *args])
    with open(out / "runs.csv") as f:
        return list(csv.DictReader(f))


def point(rows, run, context, limit=""):
    return next(r for r in rows if r["run"].endswith(run) and r["context"] == str(context)
                and r["limit_bytes"] == str(limit))


def test_points_equal_a_direct_evaluate_call_at_that_context(runs, tmp_path):
    rows = run_tool(runs, tmp_path, "--contexts", "64,256", "--limit-bytes", "1024", "--split-contexts", "32,whole")
    for run in ("vq-seed0", "full-seed0"):
        for ctx, limit in [(64, 1024), (256, 1024), (32, None), (WHOLE, None)]:
            direct = evaluate(runs / run, "validation", eval_sequence_len=ctx, limit_eval_bytes=limit)
            row = point(rows, run, ctx, limit or "")
            assert row["status"] == "ok"
            assert float(row["bpb"]) == direct["val/bpb"]   # the same function, the same numbers
            assert int(row["bytes"]) == int(direct["val/tokens"])
        # The context reaches the model: a longer context changes the number.
        assert point(rows, run, 64, 1024)["bpb"] != point(rows, run, 256, 1024)["bpb"]
    assert int(point(rows, "vq-seed0", 64, 1024)["bytes"]) == 1024
    # One mean over the two vq seeds, with their min and max, in the summary and the table.
    with open(tmp_path / "summary.csv") as f:
        summary = {(s["group"], s["context"], s["limit_bytes"]): s for s in csv.DictReader(f)}
    both = [float(point(rows, f"vq-seed{i}", 64, 1024)["bpb"]) for i in (0, 1)]
    s = summary[("Transformer-VQ, cache", "64", "1024")]
    assert (int(s["seeds"]), float(s["min"]), float(s["max"])) == (2, min(both), max(both))
    assert float(s["mean"]) == pytest.approx(sum(both) / 2)
    table = (tmp_path / "tables.md").read_text()
    assert f"{sum(both) / 2:.3f} [{min(both):.3f}–{max(both):.3f}] (2)" in table
    assert "quadratic (full attention)" in table and (tmp_path / "longctx.png").stat().st_size > 0


def test_whole_is_the_split_as_one_sequence(runs):
    module = load_module(runs / "vq-seed0")
    cfg = run_config(runs / "vq-seed0")
    data = build_datamodule(cfg)
    data.prepare_data()
    data.setup("validate")
    raw = torch.from_numpy(data.split_tokens("validation").astype("int64")) + 3   # byte b -> token b + 3
    assert cfg.eval_window == module.eval_window == 32 and len(raw) % 32   # a padded last window
    inputs = torch.cat([torch.tensor([1]), raw[:-1]])[None]                         # EOS, then the bytes
    total, count, _ = module.score(inputs, raw[None], torch.ones_like(raw[None], dtype=torch.bool))
    m = evaluate(runs / "vq-seed0", "validation", eval_sequence_len=WHOLE)
    assert int(m["val/tokens"]) == len(raw) == int(count)
    assert m["val/loss"] == pytest.approx(float(total) / len(raw), rel=1e-5)
    assert m["val/bpb"] == pytest.approx(float(total) / len(raw) / math.log(2), rel=1e-5)
    first = evaluate(runs / "vq-seed0", "validation", eval_sequence_len=WHOLE, limit_eval_bytes=500)
    assert int(first["val/tokens"]) == 500
    with pytest.raises(ValueError, match="eval_sequence_len='all' is invalid"):
        evaluate(runs / "vq-seed0", eval_sequence_len="all")


def test_full_attention_is_not_scored_above_max_full_context(runs, tmp_path):
    rows = run_tool(runs, tmp_path, "--contexts", "64,256", "--limit-bytes", "1024", "--split-contexts", WHOLE,
                    "--max-full-context", "128")
    assert point(rows, "full-seed0", 64, 1024)["status"] == "ok"
    for ctx, limit in [(256, 1024), (WHOLE, "")]:   # the whole split (~3 kB) is one sequence above 128
        assert point(rows, "full-seed0", ctx, limit)["status"].startswith("skipped")
        assert point(rows, "full-seed0", ctx, limit)["bpb"] == ""
        assert point(rows, "vq-seed0", ctx, limit)["status"] == "ok"   # the guard is full attention's only
    assert "not scored (above --max-full-context)" in (tmp_path / "tables.md").read_text()
    rows = run_tool(runs, tmp_path, "--contexts", "256", "--limit-bytes", "1024", "--split-contexts", "",
                    "--max-full-context", "0")   # 0: no limit
    assert point(rows, "full-seed0", 256, 1024)["status"] == "ok"


def test_rerun_scores_only_what_is_missing_and_a_new_checkpoint_again(runs, tmp_path, monkeypatch):
    args = ["--contexts", "64", "--limit-bytes", "512", "--split-contexts", ""]
    first = run_tool(runs, tmp_path, *args)
    assert all(r["status"] == "ok" for r in first) and len(first) == 3
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.suffix != ".json"]   # no temp files
    calls = []
    real = longctx.score

    def counted(run, p, *a):
        calls.append((run.dir.name, p.context))
        return real(run, p, *a)
    monkeypatch.setattr(longctx, "score", counted)
    again = run_tool(runs, tmp_path, *args)
    assert calls == [] and [r["bpb"] for r in again] == [r["bpb"] for r in first]
    run_tool(runs, tmp_path, "--contexts", "64,128", "--limit-bytes", "512", "--split-contexts", "")
    assert sorted(calls) == [("full-seed0", 128), ("vq-seed0", 128), ("vq-seed1", 128)]
    # A retrained checkpoint (other content, same model) is scored again; the other runs come from the cache.
    calls.clear()
    copy = tmp_path / "copy"
    shutil.copytree(runs, copy)
    shutil.copy(copy / "vq-seed1" / "checkpoints" / "last.ckpt", copy / "vq-seed0" / "checkpoints" / "last.ckpt")
    rows = run_tool(copy, tmp_path, *args)
    assert calls == [("vq-seed0", 64)]
    assert point(rows, "vq-seed0", 64, 512)["bpb"] == point(first, "vq-seed1", 64, 512)["bpb"]


def test_bad_options_stop_before_any_scoring(runs, tmp_path):
    with pytest.raises(SystemExit, match="not a multiple of eval_window=32"):
        run_tool(runs, tmp_path, "--contexts", "48")
    with pytest.raises(SystemExit, match="--contexts: 'x'"):
        run_tool(runs, tmp_path, "--contexts", "64,x")
    with pytest.raises(SystemExit, match="--limit-bytes 0"):
        run_tool(runs, tmp_path, "--split", "test")
    assert not (tmp_path / "cache").exists()


def test_whole_is_refused_for_corpora_that_cut_their_own_items(tmp_path):
    run = tmp_path / "books"
    run.mkdir()
    (run / "config.yaml").write_text("data:\n  _target_: vqformer.data.books_datamodule.BookLMDataModule\n"
                                     "  name: pg19\n")
    with pytest.raises(ValueError, match="eval_sequence_len=whole applies to corpora cut into sequences"):
        evaluate(run, eval_sequence_len=WHOLE)   # before any checkpoint is looked for
