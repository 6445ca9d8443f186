"""Expected numbers with bands (``paper.EXPECTED``): finished runs are judged inside / outside on their
whole-split score, short or unscored runs are not judged, a row without a band says so, the repro step prints
"reproduction holds / does not hold", and every row selects the runs of the experiment file it describes."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vqformer import repro
from vqformer.results import expected, paper
from vqformer.results.__main__ import main as results_cli
from vqformer.results.collect import load_run
from vqformer.results.tables import SPECS, summarize

ENWIK8 = {"data": {"name": "enwik8"}, "model": {"attn_type": "vq", "n_code": 512, "block_len": 512,
                                                 "agg_cache": True, "d_model": 768}}


def full_run(root: Path, name: str, cfg: dict, *, seed=0, step=125_000, scores: dict | None = None,
             val_bpb=1.1) -> Path:
    """A finished run directory: config.yaml, DONE (the training-time validation) and, when given, the
    eval_<split>.json that `python -m vqformer.evaluate` writes."""
    d = root / f"{name.replace('/', '_')}-{cfg['model'].get('attn_type')}-{cfg['model'].get('n_code')}-" \
               f"{cfg['model'].get('agg_cache')}-seed{seed}"
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(OmegaConf.to_yaml({"name": name, "seed": seed, "task": "lm", **cfg}))
    (d / "DONE").write_text(json.dumps({"val/bpb": val_bpb, "step": step}))
    for split, stage in (("test", "test"), ("validation", "val")):
        mine = {k: v for k, v in (scores or {}).items() if k.startswith(f"{stage}/")}
        if mine:
            (d / f"eval_{split}.json").write_text(json.dumps({"metrics": mine}))
    return d


def verdicts(records):
    _, rows, _ = expected.table(records)
    return {(r["row"], r["seed"] if r["run"] != "mean" else "mean"): r["verdict"] for r in rows}


def test_a_run_inside_its_band_is_marked_inside_one_outside_outside_and_the_mean_is_judged(tmp_path):
    e = paper.EXPECTED["enwik8/vq"]
    runs = [full_run(tmp_path, "tvq/enwik8", ENWIK8, seed=0, scores={"test/bpb": e.value + 0.005}),
            full_run(tmp_path, "tvq/enwik8", ENWIK8, seed=1, scores={"test/bpb": e.value + e.band + 0.04}),
            full_run(tmp_path, "tvq/enwik8", ENWIK8, seed=2, scores={"test/bpb": e.value - e.band})]   # edge
    v = verdicts([load_run(d) for d in runs])
    assert v[("enwik8/vq", 0)] == "inside" and v[("enwik8/vq", 2)] == "inside"
    assert v[("enwik8/vq", 1)] == "outside (0.060 worse than expected)"
    assert v[("enwik8/vq", "mean")] == "inside"                    # mean 0.990 + 0.015 - 0.0
    # the training-time validation (DONE's val/bpb) is never the judged score: the row needs the whole split
    assert v[("ablation_codebook/512", 0)].startswith("not judged: no val/bpb yet")
    assert "split=validation" in v[("ablation_codebook/512", 0)]


def test_short_unscored_and_unbanded_runs_are_not_judged_and_say_why(tmp_path):
    e = paper.EXPECTED["enwik8/vq"]
    short = full_run(tmp_path, "tvq/enwik8", ENWIK8, seed=0, step=100, scores={"test/bpb": e.value})
    unscored = full_run(tmp_path, "tvq/enwik8", ENWIK8, seed=1)
    quad = full_run(tmp_path, "tvq/enwik8_quadratic", {**ENWIK8, "model": {**ENWIK8["model"], "attn_type": "full"}},
                    scores={"test/bpb": 1.0})
    v = verdicts([load_run(d) for d in (short, unscored, quad)])
    assert v[("enwik8/vq", 0)] == "not judged: 100 of the full run's 125,000 updates"
    assert v[("enwik8/vq", 1)] == (f"not judged: no test/bpb yet (python -m vqformer.evaluate run_dir={unscored} "
                                   "split=test)")
    assert v[("enwik8/vq", "mean")] == "no judged run (none is full-length with a whole-split score)"
    assert v[("enwik8/full", 0)] == v[("enwik8/full", "mean")] == \
        "no band: the paper has no same-size quadratic row on enwik8 (docs/transformer_vq.md §5.2)"


def test_accuracy_rows_count_higher_as_better_and_unverified_rows_are_no_acceptance_test(tmp_path):
    lra = {"task": "classify", "data": {"task": "listops", "source": "generated"},
           "model": {"attn_type": "full", "ssm": "ema", "d_model": 80}}
    e = paper.EXPECTED["lra/listops/mega"]
    d = full_run(tmp_path, "longvq/baselines_listops", lra, step=90_000, scores={"test/acc": e.value + 0.05})
    assert expected.run_verdict(e, load_run(d)) == (pytest.approx(e.value + 0.05), "outside (5.00% better than expected)")
    cache_off = {**ENWIK8, "model": {**ENWIK8["model"], "n_code": 256, "agg_cache": False}}
    d = full_run(tmp_path, "tvq/ablation_cache", cache_off, scores={"val/bpb": 1.03})
    e = paper.EXPECTED["ablation_cache/False"]
    x, verdict = expected.run_verdict(e, load_run(d))
    assert verdict == "inside" and expected.sentence(e, x, verdict).startswith(
        "inside the band around an unverified number, not an acceptance test: 1.030 val bpb, expected 1.026 ± 0.020")


def test_the_expected_family_writes_a_verdict_column_and_prints_a_line_per_run(tmp_path, capsys):
    e = paper.EXPECTED["pg19"]
    pg19 = {"data": {"name": "pg19"}, "model": {"attn_type": "vq", "d_model": 2048, "n_code": 512}}
    full_run(tmp_path / "logs", "tvq/pg19", pg19, step=500_000, scores={"test/word_ppl": e.value + 0.4})
    full_run(tmp_path / "logs", "tvq/pg19", pg19, seed=1, step=500_000, scores={"test/word_ppl": e.value + 3})
    results_cli(["expected", "--runs", str(tmp_path / "logs"), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "pg19 seed 0" in out and "reproduction holds: 27.00 test word ppl, expected 26.60 ± 1.00" in out
    assert "reproduction does not hold (3.00 worse than expected): 29.60 test word ppl" in out
    assert "pg19, mean of 2 judged run(s): reproduction does not hold (1.70 worse than expected)" in out
    md = (tmp_path / "out" / "expected.md").read_text()
    assert "| pg19 | 26.60 ± 1.00 test/word_ppl | Transformer-VQ 1.3B, the paper's abstract (paper) | 2 | 2 | " \
           "28.30 | outside (1.70 worse than expected) |" in md
    assert "enwik8/vq (0.990 ± 0.020 test/bpb)" in md            # rows with a number and no run are listed
    csv_rows = (tmp_path / "out" / "expected.csv").read_text().splitlines()
    assert csv_rows[0] == "row,run,seed,step,metric,score,verdict" and len(csv_rows) == 4   # 2 runs + mean


def test_mark_table_adds_a_band_column_to_the_full_size_tables_and_says_when_a_row_has_none(tmp_path):
    spec = {s.name: s for s in SPECS}
    e = paper.EXPECTED["enwik8/vq"]
    recs = [load_run(full_run(tmp_path, "tvq/enwik8", ENWIK8, seed=s, scores={"test/bpb": e.value + s / 100}))
            for s in (0, 1)]
    quad = {**ENWIK8, "model": {**ENWIK8["model"], "attn_type": "full"}}
    recs.append(load_run(full_run(tmp_path, "tvq/enwik8_quadratic", quad, scores={"test/bpb": 1.2})))
    rows = summarize(spec["enwik8"], recs)
    lines = expected.mark_table(spec["enwik8"], rows, recs)
    band = {r["arm"]: r["band"] for r in rows}
    assert band["vq"] == "inside: 0.995 vs 0.990 ± 0.020 test/bpb"
    assert band["full"].startswith("no band: the paper has no same-size quadratic row")
    assert "[results] enwik8 attn_type=vq: inside: 0.995 vs 0.990 ± 0.020 test/bpb" in lines
    mini = {"data": {"name": "wiki_sample"}, "tags": ["mini"], "sequence_len": 2048,
            "model": {"attn_type": "vq", "n_code": 64, "block_len": 64, "agg_cache": True}}
    mini_recs = [load_run(full_run(tmp_path / "m", "tvq/mini_cache", mini, step=800))]
    mini_rows = summarize(spec["mini_cache"], mini_recs)
    assert expected.mark_table(spec["mini_cache"], mini_rows, mini_recs) == []
    assert mini_rows[0]["band"] == "no band defined for this row"


def test_the_repro_test_step_says_whether_the_reproduction_holds(tmp_path, monkeypatch, capsys):
    """`make repro-enwik8`'s last step on two finished seeds (the evaluation itself stubbed: its
    eval_test.json is already there): one line per run, and the mean of the seeds."""
    e = paper.EXPECTED["enwik8/vq"]
    dirs = [full_run(tmp_path, "tvq/enwik8", ENWIK8, seed=0, scores={"test/bpb": 0.9912}),
            full_run(tmp_path, "tvq/enwik8", ENWIK8, seed=1, scores={"test/bpb": 1.0331})]
    monkeypatch.setattr(repro, "job_dirs", lambda overrides: (dirs, "cpu", "tvq/enwik8"))
    monkeypatch.setattr(repro.subprocess, "run", lambda cmd: subprocess.CompletedProcess(cmd, 0))
    assert repro.main(["test", "experiment=tvq/enwik8"]) == 0
    out = capsys.readouterr().out
    assert f"tvq/enwik8 test bpb 0.9912 ({dirs[0]})" in out
    assert f"enwik8/vq: reproduction holds: 0.991 test bpb, expected 0.990 ± 0.020 ({e.source}; band: our estimate" in out
    assert "enwik8/vq: reproduction does not hold (0.043 worse than expected): 1.033 test bpb, expected 0.990 ± 0.020" in out
    assert "enwik8/vq, mean of 2 runs: reproduction does not hold (0.022 worse than expected): 1.012 test bpb" in out
    assert "no tolerance band" not in out
    quad = full_run(tmp_path, "tvq/enwik8_quadratic", {**ENWIK8, "model": {**ENWIK8["model"], "attn_type": "full"}},
                    scores={"test/bpb": 1.0})
    monkeypatch.setattr(repro, "job_dirs", lambda overrides: ([quad], "cpu", "tvq/enwik8_quadratic"))
    assert repro.main(["test", "experiment=tvq/enwik8_quadratic"]) == 0
    assert "enwik8/full: no band: the paper has no same-size quadratic row" in capsys.readouterr().out


# Every experiment file behind a row, and the rows each of its jobs must belong to (by config, as the tables).
ROWS_OF = {
    "tvq/enwik8": {"enwik8/vq", "ablation_codebook/512"},
    "tvq/enwik8_quadratic": {"enwik8/full"},
    "tvq/ablation_codebook": {"ablation_codebook/256", "ablation_cache/True", "ablation_codebook/512", "enwik8/vq",
                              "ablation_codebook/1024"},
    "tvq/ablation_cache": {"ablation_cache/True", "ablation_codebook/256", "ablation_cache/False"},
    "tvq/pg19": {"pg19"}, "tvq/imagenet64": {"imagenet64/1.2B"}, "tvq/imagenet64_190m": {"imagenet64/190M"},
    "longvq/enwik8": {"longvq_lm/enwik8"}, "longvq/wikitext103": {"longvq_lm/wikitext103"},
    "recall/mqar_L64_D4": {"recall"},
    **{f"longvq/lra_{t}": {f"lra/{task}/longvq"} for t, task in
       [("listops", "listops"), ("text", "text"), ("retrieval", "retrieval"), ("image", "image"),
        ("pathfinder", "pathfinder32"), ("pathx", "pathx"), ("scifar", "scifar")]},
    **{f"longvq/baselines_{t}": {f"lra/{task}/{a}" for a in ("mega", "mega_chunk", "no_ssm")} for t, task in
       [("listops", "listops"), ("text", "text"), ("retrieval", "retrieval"), ("image", "image"),
        ("pathfinder", "pathfinder32"), ("pathx", "pathx"), ("scifar", "scifar")]},
}


def test_every_row_selects_the_jobs_of_its_experiment_file_and_knows_their_length(tmp_path):
    """A run made by the row's own command belongs to the row, and the row's `updates` is that file's
    trainer.max_steps: nothing in paper.EXPECTED drifts from conf/experiment/."""
    seen = set()
    for name, want in ROWS_OF.items():
        found = set()
        jobs = repro.sweep_jobs([f"experiment={name}"])
        for i, job in enumerate(jobs[:1] if name.startswith("recall/") else jobs):
            cfg = repro._compose(job)
            d = tmp_path / f"{name.replace('/', '_')}{i}"
            d.mkdir()
            (d / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
            (d / "DONE").write_text("{}")
            rows = paper.expected_rows(load_run(d))
            assert rows, f"{name} job {job} belongs to no row"
            for key, e in rows.items():
                assert e.updates in (None, cfg.trainer.max_steps), (name, key, e.updates, cfg.trainer.max_steps)
            found |= set(rows)
        assert found == want, name
        seen |= found
    assert seen == set(paper.EXPECTED)


def test_every_band_is_labelled_and_every_page_states_its_rows(tmp_path):
    """Each band says where it comes from (our estimate unless a paper's spread), each number-less row why; each
    experiments page carries the expected value ± band of its rows as written here."""
    for key, e in paper.EXPECTED.items():
        if e.value is None:
            assert e.band is None and e.why, key
        else:
            assert e.band > 0 and re.match(r"our estimate|the paper's seed spread", e.why), key
        assert e.status in (paper.PAPER, paper.UNVERIFIED, paper.REFERENCE)
    root = Path(__file__).resolve().parents[2]
    pages = {"enwik8/": "experiments/enwik8/README.md", "ablation_codebook/": "experiments/ablation_codebook/README.md",
             "ablation_cache/": "experiments/ablation_cache/README.md", "pg19": "experiments/pg19/README.md",
             "imagenet64/": "experiments/imagenet64/README.md", "lra/": "experiments/lra/README.md",
             "longvq_lm/": "docs/longvq.md", "recall": "experiments/recall/README.md"}
    for key, e in paper.EXPECTED.items():
        page = (root / next(p for k, p in pages.items() if key.startswith(k))).read_text()
        want = "no band" if e.value is None else f"{e.fmt(e.value)} ± {e.fmt(e.band)}"
        assert want in page, (key, want)
