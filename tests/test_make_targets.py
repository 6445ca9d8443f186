"""The make targets per paper table: the README table, the pages and the Makefile agree, and the enwik8 target's
test step scores the run directories the sweep really wrote."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY
from vqformer.results.__main__ import FAMILIES
MAKEFILE = (REPO / "Makefile").read_text()
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


def recipes() -> dict[str, list[str]]:
    """target -> its recipe lines (rules with a ``##`` help text, i.e. the user-facing targets)."""
    out, current = {}, None
    for line in MAKEFILE.splitlines():
        m = re.match(r"^([a-zA-Z0-9_-]+):[^=].*## ", line)
        if m:
            current = m.group(1)
            out[current] = []
        elif line.startswith("\t") and current:
            out[current].append(line.strip())
        elif line.strip() and not line.startswith("\t"):
            current = None
    return out


def make_list(name: str) -> list[str]:
    m = re.search(rf"^{name} := (.+)$", MAKEFILE, re.M)
    assert m, f"no {name} in the Makefile"
    return m.group(1).split()


def readme_rows() -> list[dict]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Reproducing the papers"):]
    section = section[:section.index("\n## ", 5)]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:3] == ["table", "command", "results"], header
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def test_every_readme_row_has_a_make_target_its_page_shows_and_a_results_family():
    rows, targets = readme_rows(), recipes()
    assert len(rows) >= 14
    for row in rows:
        commands = re.findall(r"`(make [^`]+)`", row["command"])
        assert commands, f"row {row['table']!r} has no make command"
        for cmd in commands:
            assert cmd.split()[1] in targets, f"{cmd}: no such target in the Makefile"
            page = re.search(r"\((experiments/[^)]+/README\.md)\)", row["page"])
            if page:   # the page names the same command, word for word
                assert re.search(re.escape(cmd) + r"(?=[\s`]|$)", (REPO / page.group(1)).read_text(), re.M), \
                    f"{page.group(1)} does not show `{cmd}`"
        families = re.findall(r"python -m vqformer\.results ([\w-]+)", row["results"])
        assert families or row["results"].startswith("–"), row
        assert all(f in FAMILIES for f in families), (row["table"], families)
    shown = {cmd.split()[1] for row in rows for cmd in re.findall(r"`(make [^`]+)`", row["command"])}
    assert {t for t in targets if re.match(r"(repro|sweep)-", t) and not t.endswith("-test")} <= shown


def expand(value: str) -> list[str]:
    """An ``experiment=`` value of a recipe with its make variables replaced by every allowed value."""
    options = {"$(TASK)": make_list("LRA_TASKS"), "$(DATA)": make_list("LM_DATA")}
    for var, values in options.items():
        if var in value:
            return [value.replace(var, v) for v in values]
    if "$(VARIANT:%=_%)" in value:
        return [value.replace("$(VARIANT:%=_%)", s) for s in ["", *(f"_{v}" for v in make_list("IMAGENET64_VARIANTS"))]]
    return [value]


def test_every_repro_and_sweep_recipe_trains_an_existing_experiment_on_the_chosen_hardware():
    targets = {t: r for t, r in recipes().items() if re.match(r"(repro|sweep)-", t)}
    assert {"repro-enwik8", "repro-quadratic", "repro-pg19", "repro-imagenet64", "repro-lra", "repro-lra-baselines",
            "repro-longvq-lm", "repro-parity", "sweep-codebook", "sweep-cache", "sweep-block"} <= set(targets)
    phony = re.search(r"^\.PHONY: (.+)$", MAKEFILE, re.M).group(1).split()
    for target, lines in targets.items():
        assert target in phony, f"{target} is not .PHONY"
        module = "vqformer.repro test" if target.endswith("-test") else "vqformer.train -m"
        runs = [ln for ln in lines if f"$(PY) -m {module} " in ln]
        assert runs, f"{target}: no `{module}` in its recipe"
        for line in runs:
            assert "hardware=$(HARDWARE)" in line.split(), f"{target}: {line}"
            experiments = re.findall(r"experiment=(\S+)", line)
            assert experiments, f"{target}: {line}"
            for value in experiments:
                for name in expand(value):
                    assert (REPO / "conf/experiment" / f"{name}.yaml").is_file(), f"{target}: no experiment {name}"
    assert re.search(r"^HARDWARE \?= auto$", MAKEFILE, re.M)


def dry_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``make -n`` with a venv whose install marker is newer than the requirements, so install is a no-op."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    (venv / ".installed").touch()
    os.utime(venv / ".installed", (4e9, 4e9))   # later than any checkout of the requirement files
    return subprocess.run(["make", "-n", "-C", str(REPO), f"VENV={venv}", *args], capture_output=True, text=True,
                          timeout=60)


@needs_make
@pytest.mark.parametrize("args, expected", [
    (["repro-lra", "TASK=text"], ["-m vqformer.train -m experiment=longvq/lra_text hardware=auto"]),
    (["repro-lra-baselines", "TASK=pathx", "HARDWARE=slurm_a100x8"],
     ["-m vqformer.train -m experiment=longvq/baselines_pathx hardware=slurm_a100x8"]),
    (["repro-imagenet64", "VARIANT=190m"], ["-m vqformer.train -m experiment=tvq/imagenet64_190m hardware=auto"]),
    (["repro-imagenet64"], ["-m vqformer.train -m experiment=tvq/imagenet64 hardware=auto"]),
    (["repro-longvq-lm", "DATA=wikitext103"], ["-m vqformer.train -m experiment=longvq/wikitext103 hardware=auto"]),
    (["repro-enwik8", "ARGS=trainer.max_steps=100"],
     ["-m vqformer.train -m experiment=tvq/enwik8 hardware=auto trainer.max_steps=100",
      "-m vqformer.repro test experiment=tvq/enwik8 hardware=auto trainer.max_steps=100"]),
    (["repro-parity"], ["-m vqformer.train -m experiment=tvq/parity_official_tiny hardware=auto",
                        "-m vqformer.results parity --out logs/results/parity"]),
    (["repro-mechanism"], ["-m vqformer.train -m experiment=tvq/mechanism_cache hardware=auto",
                           "-m vqformer.results mechanism --out logs/results/mechanism"]),
    (["data-lra", "TASK=listops"], ["-m vqformer.repro data experiment=longvq/lra_listops"]),
    (["longctx", "OUT=elsewhere", "ARGS=--max-full-context 65536"],
     ["-m vqformer.results longctx --out elsewhere/results/longctx --max-full-context 65536"]),
    (["data-pg19"], ["-m vqformer.data.prepare pg19 --root data"]),
])
def test_dry_run_prints_the_page_command(tmp_path, args, expected):
    out = dry_run(tmp_path, *args)
    assert out.returncode == 0, out.stderr
    lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip() and not ln.startswith("make")]
    py = f"{tmp_path / 'venv'}/bin/python "
    assert lines == [py + e for e in expected], out.stdout   # nothing else: no install step, no extra command


@needs_make
@pytest.mark.parametrize("args, message", [
    (["repro-lra", "TASK=cifar"], "TASK='cifar' is not an LRA task; choose one of: listops text retrieval image "
                                  "pathfinder pathx scifar"),
    (["repro-lra"], "TASK='' is not an LRA task"),
    (["data-lra", "TASK=text image"], "TASK='text image' is not an LRA task"),
    (["repro-longvq-lm", "DATA=pg19"], "DATA='pg19' is not a LongVQ language-model corpus; choose one of: enwik8 "
                                       "wikitext103"),
    (["repro-imagenet64", "VARIANT=1b"], "VARIANT='1b' is not an ImageNet64 variant"),
])
def test_an_unknown_row_value_stops_make_before_anything_runs(tmp_path, args, message):
    out = dry_run(tmp_path, *args)
    assert out.returncode != 0 and message in out.stderr, out.stderr
    assert "vqformer" not in out.stdout


SWEEP_TINY = [*TINY, "logger=csv", "trainer.max_steps=2", "trainer.val_check_interval=100", "ckpt_every=2"]

def test_the_test_step_scores_every_job_the_sweep_wrote(tmp_path):
    """What `make repro-enwik8` runs after training, on a tiny two-job sweep: each job's directory is found the
    way Hydra named it, scored on the test split, and the score is printed; an unfinished job is refused."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO / "src")}
    overrides = ["experiment=tvq/enwik8", "hardware=cpu", *SWEEP_TINY, f"paths.data_dir={tmp_path / 'data'}",
                 f"paths.log_dir={tmp_path / 'logs'}", "seed=0,1"]
    run = lambda *cmd: subprocess.run([sys.executable, "-m", *cmd], cwd=REPO, env=env, capture_output=True,
                                      text=True, timeout=600)
    before = run("vqformer.repro", "test", *overrides)   # nothing trained yet
    assert before.returncode == 1 and "not finished" in before.stderr, before.stderr
    trained = run("vqformer.train", "-m", *overrides)
    assert trained.returncode == 0, trained.stderr[-3000:]
    done = sorted(p.parent for p in (tmp_path / "logs" / "multiruns").rglob("DONE"))
    assert len(done) == 2
    scored = run("vqformer.repro", "test", *overrides)
    assert scored.returncode == 0, scored.stderr[-3000:]
    for d in done:
        assert (d / "eval_test.json").is_file(), f"{d} was not scored"
    # each score, then its row's verdict: the tiny model on generated bytes is no row of the paper's
    printed = re.findall(r"tvq/enwik8 test bpb (\d+\.\d+) \((.+?)\)\n\[vqformer\] no expected number: no row",
                         scored.stdout)
    assert sorted(Path(p).resolve() for _, p in printed) == [d.resolve() for d in done], scored.stdout
    assert all(0 < float(b) < 9 for b, _ in printed)


def test_data_step_prepares_the_cache_the_training_run_reads(tmp_path, capsys):
    """`make data-lra TASK=listops` on a tiny generator: the cache is written, hashed, and it is the one the
    experiment's data module (built as training builds it) finds already prepared."""
    from vqformer.lit.runner import build_datamodule
    from vqformer.repro import _compose, main

    overrides = ["experiment=longvq/lra_listops", f"paths.data_dir={tmp_path}", "data.generator.n_train=40",
                 "data.generator.n_val=8", "data.generator.n_test=8", "data.generator.min_len=20",
                 "data.generator.max_len=100", "data.max_len=100"]
    assert main(["data", *overrides]) == 0
    dm = build_datamodule(_compose(overrides))
    assert f"ready in {dm.cache_dir}" in capsys.readouterr().out
    assert sorted(p.name for p in dm.cache_dir.iterdir()) == ["meta.json", "test.npz", "train.npz", "val.npz"]
    stamps = {p: p.stat().st_mtime_ns for p in dm.cache_dir.iterdir()}
    dm.prepare_data()   # the training run's call: verifies, writes nothing
    assert {p: p.stat().st_mtime_ns for p in dm.cache_dir.iterdir()} == stamps
    for bad in ("data.batch_size=0", "data.batch_size=abc"):   # stops before any data is touched, naming the key
        kept = [o for o in overrides if not o.startswith("paths.")]
        assert main(["data", *kept, f"paths.data_dir={tmp_path / 'other'}", bad]) == 1
        assert "data.batch_size" in capsys.readouterr().err
        assert not (tmp_path / "other").exists()
    assert main(["test", "experiment=tvq/nope"]) == 1
    assert "tvq/nope" in capsys.readouterr().err
