"""Building and running a training job from a composed config: run directory, resume, loggers, markers.

Conventions (docs/conventions.md §3, docs/cluster.md): the run directory is deterministic
(``vqformer.config.run_dir``, from the experiment name and the overrides), so the same command finds its
checkpoints and W&B run again; one process trains in it at a time (``lock.py``); a ``DONE`` marker, written
only after a finite, complete run, makes a finished job a no-op; each job ends its W&B run; the git revision
and the composed config are stored beside the checkpoints.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shlex
import signal
import time
import warnings
from pathlib import Path

import lightning as L
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from ..config import validate
from ..data.identity import record_data_identity
from ..provenance import git_commit
from .atomic import atomic_write_bytes
from .checkpoint import ModelStamp, config_model_hash
from .checkpoint_io import AtomicCheckpointIO, check_writable, resume_path
from .csv_log import updates_per_batch
from .guard import Diverged
from .lock import RunLock
from .preemption import Preempted, Preemption
from .progress_bar import StepProgressBar
from .tasks import task_class
from .wandb_run import flat_config, knob_tags, log_curves, wandb_mode

DONE = "DONE"

# Lightning has its own console handler; without this Hydra's root handler prints each message again.
logging.getLogger("lightning").propagate = False
# Checkpoints are taken after the optimizer step on purpose (a resumed run continues from there).
warnings.filterwarnings("ignore", message=".*manual optimization and every_n_train_steps.*")
# The run directory holds the checkpoints of earlier attempts of the same run: that is how it resumes.
warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")


def is_rank_zero() -> bool:
    """The job's first process (before Lightning has set up distributed training)."""
    return all(int(os.environ.get(k, 0)) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def paste_command(entry: str, run_dir: Path) -> str:
    """A shell command line whose ``run_dir=`` Hydra parses back to exactly ``run_dir``.

    Run directory names hold ``=`` and ``,`` (Hydra's override separators), so the value is a quoted string
    in Hydra's grammar (backslashes and quotes escaped, ``${`` not interpolated), then quoted for the shell.
    """
    # Backslashes are literal except before a double quote (or the closing one), where they are doubled.
    v = re.sub(r'(\\*)("|$)', lambda m: m.group(1) * 2 + ('\\"' if m.group(2) else ""), str(run_dir))
    v = v.replace("${", "\\${")
    return f"python -m vqformer.{entry} " + shlex.quote(f'run_dir="{v}"')


def build_module(cfg: DictConfig) -> L.LightningModule:
    return task_class(cfg.get("task", "lm")).from_config(cfg)


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    return instantiate(cfg.data)


def duration(seconds: float) -> str:
    """``4 min 12 s``: how long a run took, as the closing line prints it."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    """The ``logger`` group: every non-null entry is instantiated with the run directory as ``save_dir``."""
    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if not node:
            continue
        kwargs = {"save_dir": str(run_dir)}
        if issubclass(get_class(node._target_), WandbLogger):   # the same run directory resumes the same W&B run
            flat = flat_config(cfg)   # the compared knobs, top-level, so W&B's table can group by them
            tags = list(dict.fromkeys(list(node.get("tags") or []) + knob_tags(flat)))
            kwargs.update(id=hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16],
                          name=run_dir.name or cfg.name, mode=wandb_mode(node.mode), tags=tags,
                          config={**OmegaConf.to_container(cfg, resolve=True), **flat})
        # a partial, so that the composed config handed to W&B is not itself instantiated
        loggers.append(instantiate(node, _partial_=True, _convert_="all")(**kwargs))
    return loggers


def build_callbacks(cfg: DictConfig, ckpt_dir: Path) -> list:
    """The ``callbacks`` group: null entries and milestones without a period are left out."""
    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None:
            continue
        target = str(node.get("_target_", ""))
        kwargs = {}
        if target.endswith("ModelCheckpoint"):
            if node.get("every_n_train_steps") is None:
                continue
            kwargs["dirpath"] = str(ckpt_dir)
        elif target.endswith(("DivergenceGuard", "Preemption")):
            kwargs["ckpt_dir"] = str(ckpt_dir)
        elif target.endswith("ProgressBar") and not cfg.trainer.get("enable_progress_bar", True):
            continue
        try:
            callbacks.append(instantiate(node, **kwargs))
        except Exception as e:
            cause = e.__cause__ or e
            raise ValueError(f"callbacks.{name}: {cause}") from None
    return callbacks


def train(cfg: DictConfig, run_dir: Path, extra_callbacks: list | None = None) -> dict:
    """Train (or resume) one run in ``run_dir``; returns the final validation metrics.

    Raises ``Diverged`` (non-finite values), ``Preempted`` (a signal; checkpoint written), ``RunLocked``
    (another process trains in ``run_dir``) or ``CheckpointError`` (unwritable checkpoint directory); none
    of them writes ``DONE``.
    """
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])  # compose-API configs carry it
    validate(cfg)
    ckpt_dir = run_dir / "checkpoints"
    callbacks = build_callbacks(cfg, ckpt_dir)
    lock_cfg = cfg.get("lock") or {}
    lock = RunLock(run_dir, **lock_cfg) if is_rank_zero() else None
    run_dir.mkdir(parents=True, exist_ok=True)
    record_data_identity(cfg, run_dir)   # refuses a run directory trained on other data; pins data.sha256
    done = run_dir / DONE
    if done.exists():
        metrics = json.loads(done.read_text())
        print(f"[vqformer] {run_dir} is already finished ({DONE} marker); final metrics: {metrics}")
        return metrics
    if lock is not None:
        lock.acquire()   # a second launch stops here, before it writes anything
    start = time.monotonic()
    try:
        metrics = _train_locked(cfg, run_dir, ckpt_dir, callbacks + list(extra_callbacks or []))
        if is_rank_zero():
            print(f"[vqformer] done in {duration(time.monotonic() - start)}", flush=True)
        return metrics
    finally:
        if lock is not None:
            lock.release()


def start_run_dir(cfg: DictConfig, run_dir: Path, ckpt_dir: Path) -> None:
    """Rank zero probes the checkpoint directory (an unwritable one stops the run before any work) and
    writes config.yaml and git.json. The other ranks write nothing: they start at the same moment, and a
    second probe would race the first one's removal of the directory it made (tests/lit/test_ddp.py)."""
    if not is_rank_zero():
        return
    check_writable(ckpt_dir)
    atomic_write_bytes(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
    atomic_write_bytes(run_dir / "git.json", json.dumps(git_commit(), indent=1).encode())


def _train_locked(cfg: DictConfig, run_dir: Path, ckpt_dir: Path, callbacks: list) -> dict:
    done = run_dir / DONE
    start_run_dir(cfg, run_dir, ckpt_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    if int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0))) == 0:
        hw = cfg.trainer   # resolved (hardware=auto): the line says what this machine gave the run
        print(f"[vqformer] hardware: {hw.accelerator} x {hw.devices} on {hw.get('num_nodes', 1)} node(s), "
              f"strategy {hw.strategy}, precision {hw.precision}")
        datamodule.prepare_data()   # a missing download stops here, before a model is built
    module = build_module(cfg)
    loggers = build_loggers(cfg, run_dir)
    callbacks = callbacks + [ModelStamp(config_model_hash(cfg))]
    preemption = next((c for c in callbacks if isinstance(c, Preemption)), None)
    if not any(isinstance(c, ModelCheckpoint) for c in callbacks):
        raise ValueError("callbacks.checkpoint is missing: a run without checkpoints cannot resume")
    trainer = L.Trainer(**OmegaConf.to_container(cfg.trainer, resolve=True), logger=loggers or False,
                        callbacks=callbacks, default_root_dir=str(run_dir), enable_checkpointing=True,
                        plugins=[AtomicCheckpointIO()])
    last = ckpt_dir / "last.ckpt"
    ckpt_path = resume_path(ckpt_dir) if cfg.resume else None
    if ckpt_path:
        print(f"[vqformer] resuming from {ckpt_path}")
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
        trainer.save_checkpoint(str(last))
        if preemption is not None and preemption.received is not None:
            preemption.saved = str(last)
            preemption.stop(trainer)   # the signal came during the last batch: stop before validating
        try:
            results = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
        except SIGTERMException:   # Lightning's handler during the final validation
            raise Preempted(signal.SIGTERM, str(last)) from None
        metrics = {k: float(v) for k, v in results.items()}
        metrics["step"] = trainer.global_step
        bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        if bad:   # never a DONE holding NaN
            raise Diverged(f"final validation gave non-finite {', '.join(bad)} at step {trainer.global_step}; "
                           f"checkpoint: {last}; no {DONE} written")
        if trainer.is_global_zero:
            atomic_write_bytes(done, json.dumps(metrics, indent=1).encode())
            if "val/bpb" in metrics:
                limit = cfg.data.get("limit_eval_bytes")   # say exactly what was scored (docs/conventions.md)
                scope = f"first {limit:,} tokens of the validation split" if limit else "whole validation split"
                print(f"[vqformer] validation bits per byte: {metrics['val/bpb']:.4f} after {trainer.global_step} "
                      f"steps ({scope})")
            else:
                shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("val/"))
                print(f"[vqformer] validation: {shown} after {trainer.global_step} steps")
            print(f"[vqformer] run directory: {run_dir}  (metrics: {run_dir}/csv/version_0/metrics.csv)")
            print(f"[vqformer] evaluate it with: {paste_command('evaluate', run_dir)} split=test")
            mode = wandb_mode(OmegaConf.select(cfg, "logger.wandb.mode", default="auto"))
            for lg in loggers:
                if isinstance(lg, WandbLogger) and mode != "disabled":
                    try:   # the run is finished and DONE written: a failed plot only costs the image
                        log_curves(lg, run_dir, updates_per_batch(OmegaConf.to_container(cfg, resolve=True)),
                                   trainer.global_step)
                    except Exception as e:
                        print(f"[vqformer] warning: the curves image was not logged to W&B: {e}")
        return metrics
    finally:
        for lg in loggers:
            if isinstance(lg, WandbLogger):
                import wandb
                wandb.finish()


WHOLE = "whole"   # eval_sequence_len: everything the split scores as one sequence (docs/transformer_vq.md §3.5)


def evaluate(run_dir: str | Path, split: str = "validation", ckpt: str = "last",
             eval_sequence_len: int | str | None = None, eval_window: int | None = None,
             limit_eval_bytes: int | None = None, batch_size: int | None = None, data_path: str | None = None,
             data_split=None) -> dict:
    """Score a run's checkpoint on a split with the run's own data config (state carried across windows),
    or on the byte file ``data_path`` cut at ``data_split``. ``eval_sequence_len="whole"`` scores the split
    (validation: its first ``limit_eval_bytes``) as one sequence from an empty state."""
    from omegaconf import open_dict

    from .checkpoint import load_module, run_config

    if split not in ("validation", "test"):
        raise ValueError(f"split={split!r} is invalid: choose validation or test")
    whole = eval_sequence_len == WHOLE
    if not (eval_sequence_len is None or whole or (isinstance(eval_sequence_len, int)
                                                   and not isinstance(eval_sequence_len, bool)
                                                   and eval_sequence_len >= 1)):
        raise ValueError(f"eval_sequence_len={eval_sequence_len!r} is invalid: a positive integer, {WHOLE} "
                         "(the whole split as one sequence) or null (the run's own)")
    run = run_config(run_dir)
    if data_path:   # another byte file, prepared and hashed like the run's own data
        from ..data.byte_file import byte_file_data
        run.data = byte_file_data(run.data, data_path, data_split)
    if whole and not str(run.data.get("_target_", "")).endswith((".ByteLMDataModule", ".ByteFileDataModule")):
        raise ValueError(f"eval_sequence_len={WHOLE} applies to corpora cut into sequences (bytes); data="
                         f"{run.data.get('name')} cuts its own evaluation items (books: eval_sequence_len=null "
                         "scores every book whole)")
    with open_dict(run):
        run.data.limit_eval_bytes = limit_eval_bytes
        if eval_sequence_len and not whole:
            run.data.eval_sequence_len = eval_sequence_len
        if batch_size:
            run.data.eval_batch_size = batch_size
    module = load_module(run_dir, ckpt)
    if eval_window:
        module.eval_window = eval_window
    datamodule = build_datamodule(run)
    if whole:   # whole windows: the padded tail of the last one scores nothing
        datamodule.prepare_data()
        datamodule.setup("validate" if split == "validation" else "test")
        n = datamodule.eval_tokens(split)
        datamodule.eval_sequence_len = -(-n // module.eval_window) * module.eval_window
    trainer = L.Trainer(accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, callbacks=[StepProgressBar()])   # batches with ETA
    run_fn = trainer.validate if split == "validation" else trainer.test
    return {k: float(v) for k, v in run_fn(module, datamodule=datamodule, verbose=False)[0].items()}
