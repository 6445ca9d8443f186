"""The results pipeline on hand-made run directories: selection by config, mean / spread over seeds,
the noise verdict, archiving without checkpoints, and the files `make results` writes; every results family
rebuilt from the committed record leaves experiments/ untouched and writes under logs/results/."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vqformer.results.__main__ import main as results_cli
from vqformer.results.mini import main
from vqformer.results.collect import load_run, load_wandb
from vqformer.results.tables import SPECS, summarize, to_markdown

SPEC = {s.name: s for s in SPECS}


def fake_run(root: Path, name: str, *, n_code=64, block_len=64, agg_cache=True, attn_type="vq", seed=0,
             bpb=2.0, tags=("mini",), steps=(100, 200), sequence_len=2048, arch=None, ssm=None) -> Path:
    d = root / f"{arch or attn_type}{'-' + ssm if ssm else ''}-S{n_code}-L{block_len}-cache_{agg_cache}-seed{seed}"
    (d / "csv" / "version_0").mkdir(parents=True)
    (d / "checkpoints").mkdir()
    (d / "checkpoints" / "last.ckpt").write_bytes(b"x")
    cfg = {"name": name, "seed": seed, "tags": list(tags), "sequence_len": sequence_len, "data": {"name": "wiki_sample"},
           "model": {"attn_type": attn_type, "head_type": "shga", "n_code": n_code, "block_len": block_len,
                     "agg_cache": agg_cache, **({"arch": arch} if arch else {}), **({"ssm": ssm} if ssm else {})}}
    (d / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (d / "DONE").write_text(json.dumps({"val/bpb": bpb, "val/loss": bpb * 0.69, "step": steps[-1]}))
    with (d / "csv" / "version_0" / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "train/bpb", "val/bpb", "vq/code_perplexity", "vq/unused_codes"])
        for s in steps:
            w.writerow([0, s - 1, bpb + 1, "", 10.0, 3.0])
            w.writerow([0, s - 1, "", bpb + (steps[-1] - s) / 1000, "", ""])
    return d


def test_tables_select_by_config_and_judge_paired_differences_against_the_prediction(tmp_path):
    recs = [load_run(fake_run(tmp_path, "tvq/mini_codebook", n_code=s, seed=seed, bpb=b))
            for s, seed, b in [(16, 0, 2.30), (16, 1, 2.32), (16, 2, 2.31), (64, 0, 2.10), (64, 1, 2.12),
                               (64, 2, 2.11), (256, 0, 2.11), (256, 1, 2.13), (256, 2, 2.10)]]
    recs.append(load_run(fake_run(tmp_path, "tvq/mini_cache", agg_cache=False, seed=0, bpb=2.5)))
    old = load_run(fake_run(tmp_path / "old", "tvq/mini_codebook", n_code=16, seed=3, bpb=9.0, sequence_len=256))
    rows = {r["arm"]: r for r in summarize(SPEC["mini_codebook"], recs + [old])}
    assert set(rows) == {16, 64, 256}                   # neither the cache-off run nor the 256-byte protocol
    assert rows[16]["mean"] == pytest.approx(2.31) and rows[16]["seeds"] == 3
    assert rows[16]["paired"] == "+0.2000 +0.2000 +0.2000"
    assert rows[16]["verdict"] == "agrees (worse)"      # predicted worse; every paired difference 0.2
    assert rows[16]["resolves"] == "yes"                # zero spread: an interval of width 0
    # 256: paired +0.01, +0.01, -0.01: mean +0.0033, sd 0.0115, t(2) 4.303 -> half-width 0.0287
    assert rows[256]["verdict"] == "unresolved" and rows[256]["predicted"] == "better"
    lo, hi = (float(x) for x in rows[256]["ci"].strip("[]").split(","))
    assert lo == pytest.approx(0.01 / 3 - 4.303 * 0.011547 / 3 ** 0.5, abs=1e-4) and hi > 0 > lo
    assert rows[256]["resolves"] == "no"                # wider than the paper's 0.005
    assert rows[64]["verdict"] == "reference"
    cache = {r["arm"]: r for r in summarize(SPEC["mini_cache"], recs)}
    assert cache[True]["seeds"] == 3 and cache[False]["verdict"] == "one seed: no noise estimate"
    md = to_markdown(SPEC["mini_codebook"], list(rows.values()))
    assert "| 16 | 3 | 200 | 2.3100" in md and "agrees (worse)" in md
    better = [load_run(fake_run(tmp_path / "b", "tvq/mini_cache", agg_cache=c, seed=seed, bpb=b))
              for c, seed, b in [(True, 0, 2.0), (True, 1, 2.1), (False, 0, 1.9), (False, 1, 2.01)]]
    assert summarize(SPEC["mini_cache"], better)[0]["verdict"] == "disagrees (better)"   # predicted worse
    mixed = [load_run(fake_run(tmp_path / "m", "tvq/mini_block", block_len=L, seed=seed, bpb=b))
             for L, seed, b in [(64, 0, 2.0), (64, 1, 2.1), (32, 0, 2.01), (32, 1, 2.09)]]
    row = summarize(SPEC["mini_block"], mixed)[0]
    assert row["verdict"] == "unresolved" and row["resolves"] == "" and row["predicted"] == ""   # no paper effect


def test_the_delta_is_over_the_seeds_both_arms_ran(tmp_path):
    """The base arm is shared: a cache sweep with 23 seeds gives the quadratic table a reference of 23 seeds
    against the full arm's 3. Its mean then says nothing about the 3 seeds the full arm ran."""
    vq = [2.0, 2.1, 2.2, 2.6, 2.7]
    recs = [load_run(fake_run(tmp_path, "tvq/mini_cache", seed=s, bpb=b)) for s, b in enumerate(vq)]
    recs += [load_run(fake_run(tmp_path, "tvq/mini_quadratic", attn_type="full", seed=s, bpb=vq[s] + 0.02))
             for s in range(3)]
    rows = {r["arm"]: r for r in summarize(SPEC["mini_quadratic"], recs)}
    assert rows["vq"]["seeds"] == 5 and rows["full"]["seeds"] == 3
    assert rows["full"]["mean"] - rows["vq"]["mean"] < -0.1        # the unpaired difference points the other way
    assert rows["full"]["delta"] == pytest.approx(0.02)
    assert rows["full"]["verdict"] == "disagrees (worse)"           # predicted better


def test_the_longvq_comparison_tells_the_no_ssm_ablation_from_longvq_and_transformer_vq(tmp_path):
    runs = [load_run(fake_run(tmp_path, "longvq/mini_lm_compare", arch=arch, ssm=ssm, seed=seed, sequence_len=1024,
                              bpb=b + seed / 100))
            for arch, ssm, b in [("longvq", "ema", 2.0), ("longvq", "none", 2.1), ("transformer_vq", None, 2.05)]
            for seed in (0, 1)]
    rows = {r["arm"]: r for r in summarize(SPEC["mini_lm_compare"], runs)}
    assert set(rows) == {"longvq/ssm=ema", "longvq/ssm=none", "transformer_vq"}
    assert rows["longvq/ssm=ema"]["verdict"] == "reference"
    assert rows["longvq/ssm=none"]["verdict"] == "agrees (worse)" and rows["transformer_vq"]["verdict"] == "worse"
    assert not summarize(SPEC["mini_cache"], runs)          # 1024-byte LongVQ runs are no cache arm


def test_make_results_archives_runs_and_writes_tables_and_plots(tmp_path):
    logs, archive, out = tmp_path / "logs", tmp_path / "archive", tmp_path / "out"
    for seed in (0, 1):
        fake_run(logs / "multiruns" / "tvq_mini", "tvq/mini_quadratic", seed=seed, bpb=2.0 + seed / 100)
        fake_run(logs / "multiruns" / "tvq_mini", "tvq/mini_quadratic", attn_type="full", seed=seed, bpb=1.9)
        fake_run(logs / "multiruns" / "tvq_mini", "tvq/mini_codebook", n_code=16, seed=seed, bpb=2.2)
    fake_run(logs / "runs" / "x", "default", tags=(), seed=5)           # not a mini run: not archived
    main(["--logs", str(logs), "--archive", str(archive), "--out", str(out)])
    assert not archive.exists()                                          # no --archive-new: record untouched
    assert "| full | 2 | 200 | 1.9000" in (out / "tables.md").read_text()
    main(["--logs", str(logs), "--archive", str(archive), "--out", str(out), "--archive-new"])
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


def test_a_rerun_in_logs_replaces_its_archived_run(tmp_path):
    archive, logs, out = tmp_path / "archive", tmp_path / "logs", tmp_path / "out"
    for seed in (0, 1):
        fake_run(archive, "tvq/mini_quadratic", seed=seed, bpb=2.0)
        fake_run(logs / "multiruns", "tvq/mini_quadratic", seed=seed, bpb=1.5)     # same job folder, new result
    main(["--logs", str(logs), "--archive", str(archive), "--out", str(out)])
    assert "| vq | 2 | 200 | 1.5000" in (out / "tables.md").read_text()


REPO = Path(__file__).resolve().parents[2]


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_family_rebuilds_from_the_committed_record_without_touching_it(tmp_path, monkeypatch):
    """`make results` on a fresh clone: default arguments, the committed record as input. Nothing under
    experiments/ changes (byte for byte) and every table lands under logs/results/<family>/; the tables
    rebuilt from the record are the committed ones."""
    for part in ("mini", "throughput", "recall"):
        shutil.copytree(REPO / "experiments" / part, tmp_path / "experiments" / part)
    before = _tree(tmp_path / "experiments")
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, "-m", "vqformer.results"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    monkeypatch.chdir(tmp_path)
    results_cli(["throughput"])
    results_cli(["recall", "--from-csv", "experiments/recall/runs.csv"])
    assert _tree(tmp_path / "experiments") == before
    out = tmp_path / "logs" / "results"
    rows = lambda p: [line for line in p.read_text().splitlines() if line.startswith(("|", "###"))]
    assert rows(out / "mini" / "tables.md") == rows(tmp_path / "experiments" / "mini" / "tables.md")
    assert len(rows(out / "mini" / "tables.md")) == 8 + 5 * 2 + 9     # headings, 5 table heads, 9 mini arms
    for name in ("mini_codebook.csv", "mini_block.csv"):
        assert (out / "mini" / name).read_bytes() == (REPO / "experiments" / "mini" / name).read_bytes()
    assert (out / "mini" / "bpb_vs_codebook.png").stat().st_size > 1000
    for rec in ("cpu", "cpu-eager"):
        got, want = out / "throughput" / rec, REPO / "experiments" / "throughput" / rec
        assert (got / "table.md").read_text() == (want / "table.md").read_text()
        assert (got / "points.csv").read_bytes() == (want / "points.csv").read_bytes()
        assert json.loads((got / "results.json").read_text())["targets"] == \
            json.loads((want / "results.json").read_text())["targets"]
        assert (got / "throughput.png").stat().st_size > 1000
    assert (out / "recall" / "results.csv").read_bytes() == (REPO / "experiments" / "recall" / "results.csv").read_bytes()
    assert (out / "recall" / "recall_memory.png").stat().st_size > 1000


def test_unknown_family_and_bad_inputs_stop_with_a_message(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="unknown results family 'tables'.*mini, recall"):
        results_cli(["tables"])
    with pytest.raises(SystemExit, match="no benchmark records"):
        results_cli(["throughput"])
    with pytest.raises(SystemExit, match="nope/results.json not found"):
        results_cli(["throughput", "nope"])
    with pytest.raises(SystemExit, match="--from-csv: missing.csv is not a file"):
        results_cli(["recall", "--from-csv", "missing.csv"])
    results_cli(["--help"])
    assert "lra-baseline" in capsys.readouterr().out
    assert not (tmp_path / "logs").exists()


def test_benchmarks_write_under_logs_by_default():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        for bench in ("cpu_quick", "cpu", "gpu"):
            cfg = compose("bench", overrides=[f"bench={bench}"], return_hydra_config=True)
            assert cfg.out_dir == f"logs/bench/{cfg.bench.device_tag}" and cfg.hydra.run.dir == cfg.out_dir
    GlobalHydra.instance().clear()


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


def test_wandb_project_gives_the_same_tables_as_the_local_runs(tmp_path, monkeypatch):
    """The same finished runs, read from their run directories or from a W&B project holding what the W&B
    logger uploaded (the resolved config, the logged history, the summary), give identical tables."""
    local = [fake_run(tmp_path, "tvq/mini_codebook", n_code=s, seed=seed, bpb=2.0 + s / 1000 + seed / 100)
             for s in (16, 64) for seed in (0, 1)]

    class Run:
        state = "finished"

        def __init__(self, d):
            self.id, self.config = d.name, OmegaConf.to_container(OmegaConf.load(d / "config.yaml"))
            done = json.loads((d / "DONE").read_text())
            self.summary = {"val/bpb": done["val/bpb"], "val/loss": done["val/loss"], "trainer/global_step": done["step"]}
            self.history = [{"trainer/global_step": int(r["step"]), **{k: float(v) for k, v in r.items()
                                                                        if v and k not in ("epoch", "step")}}
                            for r in csv.DictReader((d / "csv" / "version_0" / "metrics.csv").open())]

        def scan_history(self):
            return self.history

    class Api:
        def runs(self, path):
            return [Run(d) for d in local]

    from_wandb = load_wandb("p", api=Api())
    from_disk = [load_run(d) for d in local]
    for spec in SPECS:      # compared as written (nan != nan in the reference arm's delta)
        assert to_markdown(spec, summarize(spec, from_wandb)) == to_markdown(spec, summarize(spec, from_disk))
    assert [r["curves"] for r in from_wandb] == [r["curves"] for r in from_disk]
    assert len(summarize(SPEC["mini_codebook"], from_wandb)) == 2
    # The CLI: the project's runs alone (--no-local) give the tables the run directories give.
    import wandb
    monkeypatch.setattr(wandb, "Api", Api)
    main(["--wandb-project", "p", "--no-local", "--logs", str(tmp_path), "--out", str(tmp_path / "w")])
    main(["--logs", str(tmp_path), "--archive", str(tmp_path / "none"), "--out", str(tmp_path / "l")])
    tables = lambda d: (d / "tables.md").read_text().split("\n", 3)[3]
    assert tables(tmp_path / "w") == tables(tmp_path / "l") and "| 16 | 2 | 200 |" in tables(tmp_path / "w")
    with pytest.raises(SystemExit, match="--no-local reads only a W&B project"):
        main(["--no-local"])


def test_lra_curve_and_paper_reference(tmp_path):
    run = tmp_path / "run"
    (run / "csv" / "version_0").mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml({"data": {"task": "listops"}}))
    rows = [("train/loss", 0, 2.0), ("train/loss", 1, 1.0), ("val", 1, (0.3, 1.5)), ("train/loss", 2, 0.5),
            ("val", 3, (0.4, 1.2)), ("val", 3, (0.4, 1.2))]          # the runner's final re-validation
    with (run / "csv" / "version_0" / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "train/loss", "val/acc", "val/loss"])
        for kind, step, v in rows:
            w.writerow([step, v, "", ""] if kind == "train/loss" else [step, "", *v])
    out = tmp_path / "out"
    results_cli(["lra", str(run), "--name", "listops", "--out", str(out), "--ref", "chance=0.1", "--paper", "MEGA"])
    got = list(csv.DictReader((out / "listops.csv").open()))
    assert [(int(r["step"]), float(r["val_acc"]), float(r["train_loss"])) for r in got] == [(2, 0.3, 1.5), (4, 0.4, 0.5)]
    assert (out / "listops.png").stat().st_size > 1000
    from vqformer.results import lra, paper
    assert lra.refs(run, ["chance=0.1"], ["MEGA"]) == [("chance", 0.1), ("MEGA (paper, test)", 0.6314)]
    assert paper.lra_accuracy("MEGA-chunk", "pathx") == 93.81 and paper.lra_accuracy("S4-v2", "pathfinder32") == 94.2
    with pytest.raises(SystemExit, match="--ref 'chance': expected NAME=ACC"):
        results_cli(["lra", str(run), "--out", str(out), "--ref", "chance"])
    with pytest.raises(SystemExit, match="holds no validation accuracy|not found"):
        results_cli(["lra", str(tmp_path), "--out", str(out)])


def test_lra_bag_of_tokens_baseline_writes_its_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gen = {"seed": 0, "n_train": 48, "n_val": 16, "n_test": 16, "min_len": 10, "max_len": 60}
    results_cli(["lra-baseline", "--root", str(tmp_path / "data"), "--max-len", "64", "--generator", json.dumps(gen)])
    out = json.loads((tmp_path / "logs" / "results" / "lra" / "listops_bag_of_tokens.json").read_text())
    assert set(out) == {"majority", "bag_linear", "bag_mlp"}
    assert all(0 <= v[s] <= 1 for v in out.values() for s in ("val", "test"))
    with pytest.raises(SystemExit, match="--generator is not JSON"):
        results_cli(["lra-baseline", "--generator", "{seed: 0}"])


def test_bench_entry_point_writes_record_table_and_plot_under_logs(tmp_path):
    """`make bench` from a checkout: `python -m vqformer.bench` with its default out_dir writes everything under
    logs/bench/<device_tag>/ relative to where it runs, and nothing anywhere else."""
    from conftest import BENCH_TINY as TINY

    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, "-m", "vqformer.bench", *TINY], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == [f"logs/bench/cpu/{n}" for n in ("points.csv", "profile_vq_kernel_T64.txt", "results.json",
                                                      "table.md", "throughput.png")]
    assert "## Targets" in (tmp_path / "logs/bench/cpu/table.md").read_text()
    assert json.loads((tmp_path / "logs/bench/cpu/results.json").read_text())["targets"]


def _scratch_repo(tmp_path: Path, parts: list[str]) -> Path:
    """A git repository holding the Makefile and copies of some committed pages, all committed."""
    repo = tmp_path / "repo"
    for part in parts:
        src, dest = REPO / part, repo / part
        dest.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest)
    for name in ("Makefile", ".gitignore"):
        shutil.copy2(REPO / name, repo / name)
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=repo, check=True,
                                    capture_output=True)
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "record")
    return repo


def _make(repo: Path, target: str, **env) -> str:
    # -o: take the venv as installed; PY: this interpreter (the scratch repository has no .venv)
    proc = subprocess.run(["make", "-s", "-o", ".venv/.installed", target, f"PY={sys.executable}"], cwd=repo,
                          env=dict(os.environ, PYTHONPATH=str(REPO / "src"), MPLBACKEND="Agg", **env),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.skipif(not shutil.which("make") or not shutil.which("git"), reason="needs make and git")
def test_refresh_bench_copies_new_results_into_the_record_and_shows_the_diff(tmp_path):
    repo = _scratch_repo(tmp_path, ["experiments/throughput/cpu", "experiments/lra/bench_4k.jsonl"])
    new = repo / "logs" / "bench" / "cpu"
    shutil.copytree(repo / "experiments/throughput/cpu", new)
    (new / "table.md").write_text("# new table\n")
    (repo / "logs/bench/lra_4k").mkdir(parents=True)
    (repo / "logs/bench/lra_4k/points.jsonl").write_text('{"arm": "longvq"}\n')
    out = _make(repo, "refresh-bench")
    assert (repo / "experiments/throughput/cpu/table.md").read_text() == "# new table\n"
    assert (repo / "experiments/lra/bench_4k.jsonl").read_text() == '{"arm": "longvq"}\n'
    assert "experiments/throughput/cpu/table.md" in out and "experiments/lra/bench_4k.jsonl" in out
    assert "2 files changed" in out


@pytest.mark.skipif(not shutil.which("make") or not shutil.which("git"), reason="needs make and git")
def test_refresh_results_archives_new_runs_rebuilds_the_pages_and_shows_the_diff(tmp_path):
    repo = _scratch_repo(tmp_path, ["experiments/mini", "experiments/recall"])
    for seed in (0, 1):
        fake_run(repo / "logs" / "multiruns" / "x", "tvq/mini_codebook", n_code=1024, seed=seed, bpb=3.0)
    (repo / "logs/results/recall").mkdir(parents=True)
    runs = (repo / "experiments/recall/runs.csv").read_text().splitlines(keepends=True)
    (repo / "logs/results/recall/runs.csv").write_text("".join(runs[:40]))     # a new, smaller table
    _make(repo, "results")                                                     # new runs, the record untouched
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout
    assert status == "" and "| 1024 | 2 | 200 | 3.0000" in (repo / "logs/results/mini/tables.md").read_text()
    out = _make(repo, "refresh-results")
    assert "?? experiments/mini/runs/vq-S1024-L64-cache_True-seed0/" in out          # the new runs, archived
    assert "| 1024 | 2 | 200 | 3.0000" in (repo / "experiments/mini/tables.md").read_text()
    assert "experiments/mini/tables.md" in out and "experiments/recall/results.csv" in out
    assert (repo / "experiments/recall/runs.csv").read_text() == "".join(runs[:40])


def test_curves_are_against_updates_when_a_batch_makes_several(tmp_path):
    """128-byte sequences in four 32-byte update windows: Lightning logs each row against its batch, the curves
    put it at its update (the one train/tokens_seen has counted up to), the final validation at the last."""
    from conftest import read_metrics, tiny_cfg
    from vqformer.lit.runner import train

    run_dir = tmp_path / "run"
    train(tiny_cfg(tmp_path, "sequence_len=128", "trainer.max_steps=16", "trainer.val_check_interval=2",
                   "trainer.log_every_n_steps=1", "ckpt_every=8"), run_dir)
    rec, rows = load_run(run_dir), read_metrics(run_dir)
    per_update = 4 * 32   # batch 4 × 32 tokens, none padded
    counted = [int(float(r["train/tokens_seen"])) // per_update - 1 for r in rows if r["train/bpb"]]
    assert [s for s, _ in rec["curves"]["train/bpb"]] == counted == [3, 7, 11, 15]
    # After 2 and 4 batches (updates 8 and 16, 0-based 7 and 15), then the final validation after fit.
    assert [s for s, _ in rec["curves"]["val/bpb"]] == [7, 15, 16] and rec["step"] == 16
