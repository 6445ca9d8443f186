"""Every group has a typed schema, and every bad input stops before anything exists.

The bad inputs run through the real entry point (``vqformer.train.main``, the function behind
``python -m vqformer.train``) with ``paths.log_dir`` / ``paths.data_dir`` in a temporary folder and the
working directory in another: each must exit non-zero with a message naming the key and the value, and
leave the log directory, the data directory and the working directory empty. Composition and validation
only: no case trains.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import CONF, make_cfg
from test_configs import SWEEP_SIZES
from vqformer.config import ConfigError, run_dir, validate
from vqformer.schema import check_known_keys
from vqformer.schema.rules import check_block_len

REPO = Path(__file__).resolve().parents[2]
NO_CUDA = not torch.cuda.is_available()

# (overrides, words the message must contain: the key and the value)
BAD = [
    (["optim.lr=-1"], ["optim.lr", "-1"]),
    (["optim.lr=abc"], ["optim.lr", "abc"]),
    (["optim.eps=-1"], ["optim.eps", "-1"]),
    (["optim.betas=[0.9]"], ["optim.betas", "[0.9]"]),
    (["optim.betas=[0.9,1.5]"], ["optim.betas", "1.5"]),
    (["optim.grad_clip=-1"], ["optim.grad_clip", "-1"]),
    (["optim.warmup_steps=-10"], ["optim.warmup_steps", "-10"]),
    (["optim.min_lr_ratio=5"], ["optim.min_lr_ratio", "5"]),
    (["optim.weight_decay=2.0"], ["optim.weight_decay", "2.0"]),
    (["optim.name=sgd"], ["optim.name", "sgd"]),
    (["model.vocab_size=100"], ["model.vocab_size", "100", "259"]),
    (["trainer.val_check_interval=0"], ["trainer.val_check_interval", "0"]),
    (["model.n_code=4096", "data.batch_size=1"], ["model.n_code", "4096", "256"]),   # 256 keys per update
    (["model.n_code=4096"], ["model.n_code", "4096", "2048"]),                       # 8 × 256 keys per update
    (["model.d_k=15", "model.head_type=mha"], ["model.d_k", "15", "d_model=256"]),
    (["model.d_k=15", "model.head_type=mqa"], ["model.d_k", "15", "d_model=256"]),
    (["trainer.precision=16-mixed"], ["trainer.precision", "16-mixed"]),
    (["trainer.precision=8-bit"], ["trainer.precision", "8-bit"]),
    (["model.n_code=abc"], ["model.n_code", "abc"]),
    (["trainer.accumulate_grad_batches=2"], ["trainer.accumulate_grad_batches", "2", "micro_batch_size"]),
    (["trainer.gradient_clip_val=1.0"], ["trainer.gradient_clip_val", "1.0", "optim.grad_clip"]),
    (["+model.n_heads=4"], ["n_heads"]),
    (["+trainer.max_epochs=3"], ["max_epochs"]),
    (["data.name=nope"], ["data.name", "nope"]),
    (["data.batch_size=0"], ["data.batch_size", "0"]),
    (["block=l512"], ["model.block_len=512", "update_len=256"]),
    (["task=nope"], ["task", "nope"]),
    (["logger.wandb.mode=sometimes"], ["logger.wandb.mode", "sometimes"]),
    (["trainer.profiler=fancy"], ["trainer.profiler", "fancy"]),
    (["run_name=a/b"], ["run_name", "a/b"]),
]
if NO_CUDA:
    BAD.append((["hardware=gpu"], ["trainer.accelerator", "gpu"]))
if not any(__import__("importlib").util.find_spec(p) for p in ("tensorboard", "tensorboardX")):
    BAD.append((["logger=tensorboard"], ["logger", "tensorboard", "pip install tensorboard"]))


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def run_main(tmp_path: Path, monkeypatch, capsys, *overrides: str) -> tuple[object, str]:
    """``python -m vqformer.train <overrides>`` in-process; returns (exit code, everything printed)."""
    from vqformer.lit import runner
    from vqformer.train import main

    def no_training(cfg, run_dir):
        raise AssertionError(f"the config was accepted: training was about to start in {run_dir}")
    monkeypatch.setattr(runner, "train", no_training)
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["vqformer.train", *overrides, f"paths.log_dir={tmp_path / 'logs'}",
                                      f"paths.data_dir={tmp_path / 'data'}"])
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as exit_:
        main()   # an accepted config raises AssertionError here instead
    out = capsys.readouterr()
    code = exit_.value.code
    return code, f"{code}\n{out.out}\n{out.err}"


@pytest.mark.parametrize("overrides, words", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_input_stops_before_anything_exists(tmp_path, monkeypatch, capsys, overrides, words):
    code, text = run_main(tmp_path, monkeypatch, capsys, *overrides)
    assert code not in (0, None), text
    for w in words:
        assert w in text, f"{w!r} not in the message:\n{text}"
    assert tree(tmp_path / "logs") == [], "a run directory was created"
    assert tree(tmp_path / "data") == [], "data was touched"
    assert tree(tmp_path / "cwd") == [], "Hydra wrote into the working directory"


@pytest.mark.parametrize("overrides, words", [
    (["seed=0,1", "optim.lr=0.1,-1"], ["sweep job", "optim.lr=-1"]),             # one bad job stops the sweep
    (["experiment=recall/mqar_L64_D4", "model.d_model=30"], ["model=recall_full", "d_model=30"]),  # file's sweep
])
def test_bad_sweep_stops_before_its_directory_exists(tmp_path, monkeypatch, capsys, overrides, words):
    code, text = run_main(tmp_path, monkeypatch, capsys, "-m", *overrides)
    assert code not in (0, None), text
    for w in words:
        assert w in text, f"{w!r} not in the message:\n{text}"
    assert tree(tmp_path / "logs") == [] and tree(tmp_path / "data") == [] and tree(tmp_path / "cwd") == []


@pytest.mark.parametrize("args, words", [
    (["optim.lr=-1"], ["optim.lr=-1.0", "must be a number > 0"]),
    (["model.n_code=abc", "--cfg", "job"], ["model.n_code", "abc"]),   # typed at composition, even for --cfg
])
def test_bad_input_through_the_command_line(tmp_path, args, words):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "WANDB_MODE": "disabled"}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    cmd = [sys.executable, "-m", "vqformer.train", f"paths.log_dir={tmp_path / 'logs'}",
           f"paths.data_dir={tmp_path / 'data'}", *args]
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    for w in words:
        assert w in out.stderr, out.stderr[-2000:]
    assert tree(tmp_path / "logs") == [] and tree(tmp_path / "data") == [] and tree(cwd) == []


SCHEMA_GROUPS = ("data", "model", "optim", "trainer", "logger", "paths")


@pytest.mark.parametrize("group", SCHEMA_GROUPS)
def test_every_group_option_is_typed_by_a_schema(group):
    """Each option of a group composes into a node whose type is a registered dataclass, so a misspelt key
    fails while Hydra composes, and one added with ``+`` is refused by the validation."""
    for path in sorted((CONF / group).glob("*.yaml")):
        node = make_cfg(f"{group}={path.stem}")[group]
        t = OmegaConf.get_type(node)
        assert dataclasses.is_dataclass(t), f"{group}={path.stem} composes untyped ({t})"
    with pytest.raises(Exception, match="not_a_knob"):
        make_cfg(f"{group}.not_a_knob=1")
    with pytest.raises(ConfigError, match=f"{group}.not_a_knob is not a knob of"):
        check_known_keys(make_cfg(f"+{group}.not_a_knob=1"))


def test_every_schema_field_has_a_comment():
    """A knob's meaning and range are written beside it: one comment on each field of each schema."""
    import ast
    import inspect

    from vqformer.schema import callbacks, data, logger, optim, train, trainer
    for mod in (callbacks, data, logger, optim, train, trainer):
        src = inspect.getsource(mod)
        lines = src.splitlines()
        for cls in ast.walk(ast.parse(src)):
            if isinstance(cls, ast.ClassDef):
                for stmt in cls.body:
                    if isinstance(stmt, ast.AnnAssign) and stmt.target.id != "_target_":
                        assert "#" in lines[stmt.lineno - 1], f"{mod.__name__}.{cls.name}.{stmt.target.id}: no comment"


@pytest.mark.parametrize("mode", sorted(p.stem for p in (CONF / "debug").glob("*.yaml")))
def test_debug_modes_compose_and_validate(mode):
    cfg = make_cfg(f"debug={mode}")
    validate(cfg)
    assert cfg.logger.wandb is None


def test_debug_profile_and_overfit_set_their_trainer_flags():
    assert make_cfg("debug=profile").trainer.profiler == "simple"
    assert make_cfg("debug=overfit").trainer.overfit_batches == 1
    limit = make_cfg("debug=limit").trainer
    assert limit.limit_train_batches and limit.limit_val_batches


def test_precision_and_device_rules_follow_the_machine(monkeypatch):
    cfg = make_cfg("hardware=gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="trainer.accelerator='gpu'"):
        validate(cfg)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    validate(cfg)                                            # bf16-mixed on one GPU is fine
    with pytest.raises(ConfigError, match="trainer.devices=8"):
        validate(make_cfg("hardware=gpu", "trainer.devices=8"))
    validate(make_cfg("hardware=cpu", "trainer.precision=bf16-mixed"))   # bf16 autocast runs on a CPU


def test_codebook_rule_is_keys_per_update():
    validate(make_cfg("model.n_code=2048"))                  # 8 × 256 keys: every code reachable
    with pytest.raises(ConfigError, match="model.n_code=2049"):
        validate(make_cfg("model.n_code=2049"))
    validate(make_cfg("model.n_code=4096", "model.attn_type=full"))   # no codebook: n_code is not live


def test_d_k_is_free_for_the_single_head_gau():
    """shga has one head of width d_k: no width must divide another, so d_k=15 is a valid (if slow) choice;
    mha / mqa split d_model into heads of d_k and refuse it (see the BAD list)."""
    validate(make_cfg("model.d_k=15"))


def test_one_divisibility_rule():
    check_block_len(64, update_len=256, eval_window=128)
    with pytest.raises(ConfigError, match=r"model.block_len=64 must divide eval_window=96"):
        check_block_len(64, update_len=256, eval_window=96)


def test_run_directory_names():
    cfg = make_cfg("seed=3", "optim.lr=0.001")
    single = run_dir(cfg, cfg.hydra, multirun=False)
    assert single == Path(cfg.paths.log_dir) / "runs" / "default" / "optim.lr=0.001,seed=3"
    assert run_dir(cfg, cfg.hydra, multirun=True) == Path(cfg.hydra.sweep.dir) / "optim.lr=0.001,seed=3"
    named = make_cfg("seed=3", "run_name=mine")
    assert run_dir(named, named.hydra, multirun=False).name == "mine"
    # Hydra itself creates nothing: no run directory, no .hydra/ folder, no log file
    assert cfg.hydra.run.dir == "." and cfg.hydra.sweep.subdir == "." and cfg.hydra.output_subdir is None


def test_callbacks_schema_checks_its_entries():
    """conf/callbacks (one entry per callback, each null or a node with _target_) extends this schema."""
    from vqformer.schema.callbacks import CallbacksSchema
    good = {"checkpoint": {"every_n_train_steps": 200, "save_last": True}, "guard": {"policy": "skip"},
            "preemption": {"signals": ["SIGTERM"], "requeue": "auto"}}
    CallbacksSchema.validate(OmegaConf.merge(OmegaConf.structured(CallbacksSchema), good))
    for bad, key in [({"guard": {"policy": "panic"}}, "callbacks.guard.policy"),
                     ({"checkpoint": None}, "callbacks.checkpoint"),
                     ({"checkpoint": {"every_n_train_steps": 0}}, "callbacks.checkpoint.every_n_train_steps"),
                     ({"preemption": {"signals": ["SIGNOPE"]}}, "callbacks.preemption.signals")]:
        cfg = OmegaConf.merge(OmegaConf.structured(CallbacksSchema), good, bad)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            CallbacksSchema.validate(cfg)
    with pytest.raises(Exception, match="not_a_field"):
        OmegaConf.merge(OmegaConf.structured(CallbacksSchema), {"guard": {"not_a_field": 1}})


@pytest.mark.parametrize("experiment", sorted(SWEEP_SIZES))
def test_every_job_of_every_shipped_sweep_validates(experiment):
    """What `python -m vqformer.train -m experiment=<sweep>` checks before it creates anything."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from vqformer.config import ValidateSweep
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("train", overrides=[f"experiment={experiment}"], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        ValidateSweep().on_multirun_start(cfg, config_name="train")   # exits naming the job on a bad one


def test_a_valid_config_gets_its_run_directory_only_after_validation(tmp_path, monkeypatch, capsys):
    """The good path of the same entry point: the directory named by the overrides is created by
    vqformer.train (not Hydra) and handed to the runner; nothing lands in the working directory."""
    from vqformer.lit import runner
    from vqformer.train import main
    seen = []

    def fake_train(cfg, run_dir):
        seen.append((run_dir, sorted(p.name for p in run_dir.iterdir())))
        return {"val/bpb": 1.0}
    monkeypatch.setattr(runner, "train", fake_train)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["vqformer.train", "seed=3", f"paths.log_dir={tmp_path / 'logs'}",
                                      f"paths.data_dir={tmp_path / 'data'}"])
    GlobalHydra.instance().clear()
    main()
    assert seen == [(tmp_path / "logs" / "runs" / "default" / "seed=3", ["train.log"])]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]
