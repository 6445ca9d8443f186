"""The steps ``make repro-*`` and ``make data-lra`` run around training.

    python -m vqformer.repro test experiment=tvq/enwik8 hardware=auto [overrides]    # test score of the finished sweep
    python -m vqformer.repro data experiment=longvq/lra_text [overrides]             # prepare an experiment's data

``test`` takes the overrides given to ``python -m vqformer.train -m``, finds every job's run directory the way
the sweep named it (``vqformer.config.run_dir``), scores each on the test split with
``python -m vqformer.evaluate run_dir=<dir> split=test`` and says whether the score is inside the band its table
row expects (``vqformer.results.paper.EXPECTED``): "reproduction holds / does not hold: X, expected Y ± Z".
``data`` builds the experiment's own data module and prepares it (download, generation, cache, checksums), so
the files are the ones the training run will read.
"""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import CONF_DIR
from .config import ConfigError, run_dir, validate
from .results.collect import load_run
from .results.expected import mean_verdict, run_verdict, sentence
from .results.paper import EXPECTED, expected_rows


def _compose(overrides: list[str], hydra_cfg: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=hydra_cfg)


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The jobs ``train -m`` runs for these overrides: the experiment's ``hydra.sweeper.params`` then the command
    line, one value per key (the command line wins), crossed as Hydra's basic sweeper does."""
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    first = [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override()
             else o.input_line for o in parsed]
    params = OmegaConf.select(_compose(first, hydra_cfg=True), "hydra.sweeper.params") or {}
    choices: OrderedDict[str, list[str]] = OrderedDict()
    for o in parser.parse_overrides([f"{k}={v}" for k, v in params.items()] + list(overrides)):
        key = o.get_key_element()
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        choices[key] = [f"{key}={v}" for v in values]
    return [list(job) for job in itertools.product(*choices.values())]


def job_dirs(overrides: list[str]) -> tuple[list[Path], str, str]:
    """Each job's run directory, the hardware choice and the experiment name of the sweep."""
    dirs, hardware, name = [], "auto", ""
    for job in sweep_jobs(overrides):
        cfg = _compose(job, hydra_cfg=True)
        hardware, name = str(OmegaConf.select(cfg, "hydra.runtime.choices.hardware")), str(cfg.name)
        dirs.append(run_dir(cfg, cfg.hydra, multirun=True))
    return dirs, hardware, name


def _verdicts(run: Path, scores: dict[str, list[float]]) -> list[str]:
    """One line per table row the run belongs to that is judged on the test split (or has no band)."""
    rec = load_run(run)
    rows = {k: e for k, e in expected_rows(rec).items() if e.value is None or e.split() == "test"}
    if not rows:
        return ["no expected number: no row of vqformer.results.paper.EXPECTED selects this run's config"]
    lines = []
    for key, e in rows.items():
        x, verdict = run_verdict(e, rec)
        if x is not None:
            scores.setdefault(key, []).append(x)
        lines.append(f"{key}: " + (verdict if x is None else sentence(e, x, verdict)))
    return lines


def test(overrides: list[str]) -> int:
    from .lit.runner import DONE
    dirs, hardware, name = job_dirs(overrides)
    commands = [[sys.executable, "-m", "vqformer.evaluate", f'run_dir="{d}"', "split=test"] for d in dirs]
    if hardware.startswith("slurm"):   # a login node has no GPU: the whole test split wants one
        print(f"[vqformer] hardware={hardware}: score the test split on a GPU node with")
        for cmd in commands:
            print("  python -m vqformer.evaluate " + " ".join(f"'{a}'" for a in cmd[3:]))
        print("[vqformer] then `python -m vqformer.results expected --runs <log dir>` says whether each score is "
              "inside its expected band")
        return 0
    missing = [d for d in dirs if not (d / DONE).is_file()]
    if missing:
        print(f"[vqformer] not finished (no {DONE} marker), so not scored: {', '.join(map(str, missing))}; "
              f"run the same training command again to finish it", file=sys.stderr)
        return 1
    scores: dict[str, list[float]] = {}
    for d, cmd in zip(dirs, commands):
        print("[vqformer] " + " ".join(cmd[1:]), flush=True)
        if subprocess.run(cmd).returncode != 0:
            return 1
        metrics = json.loads((d / "eval_test.json").read_text())["metrics"]
        shown = next((k for k in ("test/bpb", "test/acc") if k in metrics), "test/loss")
        print(f"[vqformer] {name} {shown.replace('/', ' ')} {metrics[shown]:.4f} ({d})")
        for line in _verdicts(d, scores):
            print(f"[vqformer] {line}")
    for key, xs in scores.items():   # several seeds: the mean is judged too
        if len(xs) > 1:
            x, verdict = mean_verdict(EXPECTED[key], xs)
            print(f"[vqformer] {key}, mean of {len(xs)} runs: {sentence(EXPECTED[key], x, verdict)}")
    return 0


def data(overrides: list[str]) -> int:
    from .lit.runner import build_datamodule
    cfg = _compose(overrides)
    validate(cfg, check_device=False)   # a bad value stops before any data is touched
    module = build_datamodule(cfg)
    module.prepare_data()
    where = getattr(module, "cache_dir", None) or cfg.paths.data_dir
    print(f"[vqformer] data of {cfg.name} ready in {where}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    steps = {"test": test, "data": data}
    if not argv or argv[0] not in steps:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        return steps[argv[0]](argv[1:])
    except (ConfigError, HydraException, OmegaConfBaseException) as e:   # composition or validation
        print(f"[vqformer] config error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
