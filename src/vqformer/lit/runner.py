"""Building and running a training job from a composed config: run directory, resume, loggers, markers.

Conventions (``docs/conventions.md`` §3): the run directory is deterministic (Hydra's
``hydra.run.dir`` / ``hydra.sweep.subdir`` from the overrides), so the same command finds its
``last.ckpt`` and W&B run again; a ``DONE`` marker makes a finished job a no-op; each job ends its W&B
run; the git revision and the composed config are stored beside the checkpoints.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from ..data.identity import record_data_identity
from ..provenance import git_commit
from .tasks import task_class

DONE = "DONE"

# Lightning has its own console handler; without this Hydra's root handler prints each message again.
logging.getLogger("lightning").propagate = False
# Checkpoints are taken after the optimizer step on purpose (a resumed run continues from there).
warnings.filterwarnings("ignore", message=".*manual optimization and every_n_train_steps.*")
# On resume the CSV writer appends to the existing metrics.csv (nothing is deleted despite its warning).
warnings.filterwarnings("ignore", message=".*Previous log files in this directory will be deleted.*")
warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")


def build_module(cfg: DictConfig) -> L.LightningModule:
    return task_class(cfg.get("task", "lm")).from_config(cfg)


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    return instantiate(cfg.data)


def _wandb_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    has_key = bool(os.environ.get("WANDB_API_KEY"))
    netrc = Path.home() / ".netrc"
    has_key = has_key or (netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"))
    return "online" if has_key else "offline"


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    loggers = []
    if cfg.logger.get("csv"):
        loggers.append(CSVLogger(save_dir=str(run_dir), name="csv", version=0))
    wb = cfg.logger.get("wandb")
    if wb:
        run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
        loggers.append(WandbLogger(project=wb.project, entity=wb.entity, group=wb.group, name=run_dir.name or cfg.name,
                                   id=run_id, save_dir=str(run_dir), mode=_wandb_mode(wb.mode),
                                   tags=list(wb.tags or []), config=OmegaConf.to_container(cfg, resolve=True)))
    return loggers


def train(cfg: DictConfig, run_dir: Path, extra_callbacks: list | None = None) -> dict:
    """Train (or resume) one run in ``run_dir``; returns the final validation metrics."""
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])  # compose-API configs carry it
    task_class(cfg.get("task", "lm")).validate_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    record_data_identity(cfg, run_dir)   # refuses a run directory trained on other data; pins data.sha256
    done = run_dir / DONE
    if done.exists():
        metrics = json.loads(done.read_text())
        print(f"[vqformer] {run_dir} is already finished ({DONE} marker); final metrics: {metrics}")
        return metrics

    L.seed_everything(cfg.seed, workers=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (run_dir / "git.json").write_text(json.dumps(git_commit(), indent=1))
    datamodule = build_datamodule(cfg)
    if int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0))) == 0:
        datamodule.prepare_data()   # a missing download stops here, before a model is built
    module = build_module(cfg)
    loggers = build_loggers(cfg, run_dir)
    ckpt_dir = run_dir / "checkpoints"
    callbacks = [ModelCheckpoint(dirpath=str(ckpt_dir), filename="step{step}", auto_insert_metric_name=False,
                                 every_n_train_steps=cfg.ckpt_every, save_last=True, save_top_k=-1)]
    callbacks += list(extra_callbacks or [])
    trainer = L.Trainer(**OmegaConf.to_container(cfg.trainer, resolve=True), logger=loggers or False,
                        callbacks=callbacks, default_root_dir=str(run_dir), enable_checkpointing=True)
    last = ckpt_dir / "last.ckpt"
    ckpt_path = str(last) if cfg.resume and last.exists() else None
    if ckpt_path:
        print(f"[vqformer] resuming from {ckpt_path}")
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        trainer.save_checkpoint(str(last))
        results = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
        metrics = {k: float(v) for k, v in results.items()}
        metrics["step"] = trainer.global_step
        if trainer.is_global_zero:
            done.write_text(json.dumps(metrics, indent=1))
            if "val/bpb" in metrics:
                print(f"[vqformer] validation bits per byte: {metrics['val/bpb']:.4f} after {trainer.global_step} steps")
            else:
                shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("val/"))
                print(f"[vqformer] validation: {shown} after {trainer.global_step} steps")
            print(f"[vqformer] run directory: {run_dir}  (metrics: {run_dir}/csv/version_0/metrics.csv)")
        return metrics
    finally:
        for lg in loggers:
            if isinstance(lg, WandbLogger):
                import wandb
                wandb.finish()


def evaluate(run_dir: str | Path, split: str = "validation", ckpt: str = "last", eval_sequence_len: int | None = None,
             eval_window: int | None = None, limit_eval_bytes: int | None = None,
             batch_size: int | None = None, data_path: str | None = None, data_split=None) -> dict:
    """Score a run's checkpoint on a split with the run's own data config (state carried across windows),
    or on the byte file ``data_path`` cut at ``data_split``."""
    from omegaconf import open_dict

    from .checkpoint import load_module, run_config

    if split not in ("validation", "test"):
        raise ValueError(f"split={split!r} is invalid: choose validation or test")
    run = run_config(run_dir)
    if data_path:   # another byte file, prepared and hashed like the run's own data
        from ..data.byte_file import byte_file_data
        run.data = byte_file_data(run.data, data_path, data_split)
    with open_dict(run):
        run.data.limit_eval_bytes = limit_eval_bytes
        if eval_sequence_len:
            run.data.eval_sequence_len = eval_sequence_len
        if batch_size:
            run.data.eval_batch_size = batch_size
    module = load_module(run_dir, ckpt)
    if eval_window:
        module.eval_window = eval_window
    trainer = L.Trainer(accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False)
    run_fn = trainer.validate if split == "validation" else trainer.test
    return {k: float(v) for k, v in run_fn(module, datamodule=build_datamodule(run), verbose=False)[0].items()}
