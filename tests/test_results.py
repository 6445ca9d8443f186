"""The results pipeline on hand-made run directories: selection by config, mean / spread over seeds,
the noise verdict, archiving without checkpoints, and the files `make results` writes."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vqformer.results.__main__ import main
from vqformer.results.collect import load_run, load_wandb
from vqformer.results.tables import SPECS, summarize, to_markdown

SPEC = {s.name: s for s in SPECS}


def fake_run(root: Path, name: str, *, n_code=64, block_len=64, agg_cache=True, attn_type="vq", seed=0,
             bpb=2.0, tags=("mini",), steps=(100, 200)) -> Path:
    d = root / f"{attn_type}-S{n_code}-L{block_len}-cache_{agg_cache}-seed{seed}"
    (d / "csv" / "version_0").mkdir(parents=True)
    (d / "checkpoints").mkdir()
    (d / "checkpoints" / "last.ckpt").write_bytes(b"x")
    cfg = {"name": name, "seed": seed, "tags": list(tags), "sequence_len": 256, "data": {"name": "wiki_sample"},
           "model": {"attn_type": attn_type, "head_type": "shga", "n_code": n_code, "block_len": block_len,
                     "agg_cache": agg_cache}}
    (d / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (d / "DONE").write_text(json.dumps({"val/bpb": bpb, "val/loss": bpb * 0.69, "step": steps[-1]}))
    with (d / "csv" / "version_0" / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "train/bpb", "val/bpb", "vq/code_perplexity", "vq/unused_codes"])
        for s in steps:
            w.writerow([0, s - 1, bpb + 1, "", 10.0, 3.0])
            w.writerow([0, s - 1, "", bpb + (steps[-1] - s) / 1000, "", ""])
    return d


def test_tables_select_by_config_and_judge_against_the_seed_spread(tmp_path):
    recs = [load_run(fake_run(tmp_path, "tvq/mini_codebook", n_code=s, seed=seed, bpb=b))
            for s, seed, b in [(16, 0, 2.30), (16, 1, 2.32), (64, 0, 2.10), (64, 1, 2.12), (256, 0, 2.11),
                               (256, 1, 2.13)]]
    recs.append(load_run(fake_run(tmp_path, "tvq/mini_cache", agg_cache=False, seed=0, bpb=2.5)))
    rows = {r["arm"]: r for r in summarize(SPEC["mini_codebook"], recs)}
    assert set(rows) == {16, 64, 256}                       # the cache-off run is not a codebook arm
    assert rows[16]["mean"] == pytest.approx(2.31) and rows[16]["seeds"] == 2
    assert rows[16]["verdict"] == "worse"                   # 0.2 apart, spread 0.02
    assert rows[256]["verdict"] == "within seed spread; worse in each seed (paired)"   # 0.01 apart, spread 0.02
    assert rows[256]["paired"] == "+0.0100 +0.0100"
    assert rows[64]["verdict"] == "reference"
    cache = {r["arm"]: r for r in summarize(SPEC["mini_cache"], recs)}
    assert cache[True]["seeds"] == 2 and cache[False]["verdict"] == "one seed: no noise estimate"
    md = to_markdown(SPEC["mini_codebook"], list(rows.values()))
    assert "| 16 | 2 | 200 | 2.3100" in md
    mixed = [load_run(fake_run(tmp_path / "m", "tvq/mini_block", block_len=L, seed=seed, bpb=b))
             for L, seed, b in [(64, 0, 2.0), (64, 1, 2.1), (32, 0, 2.01), (32, 1, 2.09)]]
    assert summarize(SPEC["mini_block"], mixed)[0]["verdict"] == "within seed spread"   # signs differ


def test_make_results_archives_runs_and_writes_tables_and_plots(tmp_path):
    logs, archive, out = tmp_path / "logs", tmp_path / "archive", tmp_path / "out"
    for seed in (0, 1):
        fake_run(logs / "multiruns" / "tvq_mini", "tvq/mini_quadratic", seed=seed, bpb=2.0 + seed / 100)
        fake_run(logs / "multiruns" / "tvq_mini", "tvq/mini_quadratic", attn_type="full", seed=seed, bpb=1.9)
        fake_run(logs / "multiruns" / "tvq_mini", "tvq/mini_codebook", n_code=16, seed=seed, bpb=2.2)
    fake_run(logs / "runs" / "x", "default", tags=(), seed=5)           # not a mini run: not archived
    main(["--logs", str(logs), "--archive", str(archive), "--out", str(out)])
    archived = sorted(p.name for p in archive.iterdir())
    assert len(archived) == 6 and not any((archive / a / "checkpoints").exists() for a in archived)
    text = (out / "tables.md").read_text()
    assert "| full | 2 | 200 | 1.9000" in text and "_no finished runs found_" in text   # enwik8 tables empty
    for png in ("mini_quadratic_curves.png", "mini_codebook_curves.png", "bpb_vs_codebook.png",
                "codebook_usage.png"):
        assert (out / png).stat().st_size > 1000, png
    # From the archive alone (a fresh clone has no logs/), the same tables come back.
    (out / "tables.md").unlink()
    main(["--logs", str(tmp_path / "nothing"), "--archive", str(archive), "--out", str(out)])
    assert (out / "tables.md").read_text().split("\n", 3)[3] == text.split("\n", 3)[3]


def test_wandb_runs_become_records():
    class Run:
        state, id = "finished", "abc"
        config = {"name": "tvq/enwik8", "seed": 0, "tags": [], "data": {"name": "enwik8"},
                  "model": {"attn_type": "vq", "n_code": 512, "block_len": 512, "agg_cache": True}}
        summary = {"val/bpb": 1.01, "val/loss": 0.7, "step": 1000}

        def scan_history(self):
            return [{"trainer/global_step": 500, "val/bpb": 1.2}, {"trainer/global_step": 1000, "val/bpb": 1.01},
                    {"trainer/global_step": 1000, "train/bpb": 1.1}]

    class Crashed(Run):
        state = "crashed"

    class Api:
        def runs(self, path):
            assert path == "me/vqformer"
            return [Run(), Crashed()]

    recs = load_wandb("vqformer", "me", api=Api())
    assert len(recs) == 1 and recs[0]["curves"]["val/bpb"] == [(500, 1.2), (1000, 1.01)]
    rows = summarize(SPEC["enwik8"], recs)
    assert rows[0]["arm"] == "vq" and rows[0]["mean"] == 1.01


def test_notebook_code_runs_on_local_runs(tmp_path, monkeypatch):
    """The notebook's cells execute (IPython display stubbed) against a tiny local archive."""
    import sys
    import types

    nb = json.loads((Path(__file__).resolve().parents[1] / "notebooks" / "compare_runs.ipynb").read_text())
    for seed in (0, 1):
        fake_run(tmp_path / "experiments" / "mini" / "runs", "tvq/mini_codebook", n_code=16, seed=seed, bpb=2.2)
    (tmp_path / "conf").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    shown = []
    display = types.ModuleType("IPython.display")
    display.Markdown, display.display = str, shown.append
    monkeypatch.setitem(sys.modules, "IPython", types.ModuleType("IPython"))
    monkeypatch.setitem(sys.modules, "IPython.display", display)
    scope: dict = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            exec("".join(cell["source"]), scope)
    assert len(scope["records"]) == 2 and any("| 16 | 2 |" in s for s in shown)
