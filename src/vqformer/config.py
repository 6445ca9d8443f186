"""Validation of a composed run config before any work starts, and the run directory it will use.

Types and unknown keys are checked by Hydra while it composes (the schemas of ``vqformer/schema``); here
``validate`` checks ranges and the rules between groups, each raising ``ConfigError`` (a ``ValueError``) with
one message naming the key, the value and what is allowed, so an impossible config stops before a run
directory is created, data is prepared or a model is built.
"""
from __future__ import annotations

import hashlib
import itertools
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .models.lm import carries_state
from .models.transformer_vq import RENAMED, TransformerVQConfig
from .schema import ConfigError, kind_of, register, validate_groups
from .schema.rules import check_block_len, check_codebook, check_vocab, uses_vq

__all__ = ["ConfigError", "check_distributed", "validate", "validate_train", "model_config", "run_dir", "short_dirname"]


def short_dirname(name: str, max_len: int = 120) -> str:
    """A run-directory name from Hydra's override string, cut and hashed when too long for a file name."""
    name = name.replace("/", "_")
    if len(name) <= max_len:
        return name
    return f"{name[:max_len - 17]}-{hashlib.sha1(name.encode()).hexdigest()[:16]}"


def auto_hardware() -> dict:
    """``hardware=auto``: every visible GPU (DDP when several) with bf16 autocast, else one CPU process.

    GPUs without bf16 (before Ampere) train in fp32: fp16 autocast would need loss scaling this model is not
    tested with.
    """
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        return {"accelerator": "cpu", "devices": 1, "strategy": "auto", "precision": "32-true"}
    return {"accelerator": "gpu", "devices": n, "strategy": "ddp" if n > 1 else "auto",
            "precision": "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"}


def _hardware(key: str):
    choice = auto_hardware()
    if key not in choice:
        raise ConfigError(f"${{vqformer.hardware:{key}}}: unknown key; choose one of {sorted(choice)}")
    return choice[key]


def register_resolvers() -> None:
    """Named, pure resolvers only (no `eval`), and the schemas; must run before Hydra composes a config."""
    if not OmegaConf.has_resolver("vqformer.dirname"):
        OmegaConf.register_new_resolver("vqformer.dirname", short_dirname)
    if not OmegaConf.has_resolver("vqformer.hardware"):
        OmegaConf.register_new_resolver("vqformer.hardware", _hardware)
    register()


register_resolvers()   # importing the config module (as the compose-API tests do) is enough


def _positive_int(cfg: DictConfig, key: str) -> int:
    value = OmegaConf.select(cfg, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


def _task_cfg(cfg: DictConfig) -> DictConfig:
    """The job's config without Hydra's own node (compose-API configs carry it)."""
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg


def validate(cfg: DictConfig, check_device: bool = True) -> None:
    """Every check of a training config: each group's ranges, then the task's rules between groups.

    ``check_device=False`` skips the checks against this machine (a GPU config composed on a laptop).
    """
    from .lit.tasks import task_class

    cfg = _task_cfg(cfg)
    validate_groups(cfg, check_device)
    task_class(cfg.task).validate_config(cfg)


class ValidateSweep(Callback):
    """Hydra callback (conf/hydra/default.yaml): before a sweep creates its directory or submits a job, compose
    every job of the grid (the sweeper's params, then the command line, as Hydra's basic sweeper does) and
    validate it, so one bad value stops the whole sweep with nothing written. Device checks wait for the
    job itself (a SLURM login node has no GPU)."""

    def on_multirun_start(self, config: DictConfig, config_name: str | None = None, **kwargs) -> None:
        from hydra import compose
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params = OmegaConf.select(config, "hydra.sweeper.params") or {}
        lines = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
        choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
                   else [o.input_line] for o in OverridesParser.create().parse_overrides(lines)]
        for job in itertools.product(*choices):
            try:
                validate(compose(config_name, overrides=list(job)), check_device=False)
            except ConfigError as e:
                sys.exit(f"[vqformer] config error in the sweep job {' '.join(job)}: {e}")


def run_dir(cfg: DictConfig, hydra_cfg: DictConfig, multirun: bool | None = None) -> Path:
    """The deterministic run directory: ``<log_dir>/runs/<name>/<run_name>`` for a single run and
    ``<hydra.sweep.dir>/<run_name>`` for a sweep job, where ``run_name`` defaults to the shortened override
    string, so the same command finds its own ``last.ckpt`` and W&B run again. A single run whose
    ``hydra.run.dir`` is set on the command line uses that directory as it is."""
    if multirun is None:
        multirun = str(hydra_cfg.get("mode")) == "RunMode.MULTIRUN"
    if not multirun and str(hydra_cfg.run.dir) != ".":
        return Path(str(hydra_cfg.run.dir))
    leaf = cfg.get("run_name") or short_dirname(hydra_cfg.job.override_dirname)
    root = Path(hydra_cfg.sweep.dir) if multirun else Path(cfg.paths.log_dir) / "runs" / cfg.name
    return root / leaf


def model_config(cfg: DictConfig):
    """The typed model config (``model.arch`` picks it; default transformer_vq); its own validation names
    ``model.<field>`` and ``model.mixer.<name>.<knob>``."""
    from .models import lm_config
    kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    if kwargs.get("arch", "transformer_vq") == "transformer_vq":
        moved = sorted(k for k in set(kwargs) - set(TransformerVQConfig.__dataclass_fields__) if k in RENAMED)
        if moved:
            raise ConfigError("; ".join(f"model.{k} is now model.{RENAMED[k]}" for k in moved))
    try:
        return lm_config(kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def check_distributed(cfg: DictConfig) -> None:
    """Our data modules shard by rank themselves; Lightning's sampler on top would shard them again."""
    strategy = str(OmegaConf.select(cfg, "trainer.strategy", default="auto"))
    if "ddp" in strategy and OmegaConf.select(cfg, "trainer.use_distributed_sampler", default=True) is not False:
        raise ConfigError(f"trainer.strategy={strategy} needs trainer.use_distributed_sampler=false: the data "
                          "modules shard training windows and evaluation sets by rank themselves "
                          "(hardware=cpu_ddp, gpu_ddp, auto and slurm_* set it)")


def validate_train(cfg: DictConfig):
    """The rules of task=lm between the model, the data and the update schedule."""
    check_distributed(cfg)
    mcfg = model_config(cfg)
    for key in ("sequence_len", "update_len", "eval_window", "ckpt_every", "data.batch_size"):
        _positive_int(cfg, key)
    T, W = cfg.sequence_len, cfg.update_len
    kind = kind_of(cfg.data)
    if kind is None or kind.data_vocab(cfg.data) is None:
        raise ConfigError(f"data._target_={cfg.data.get('_target_')!r} is not a language-modelling data module "
                          "for task=lm; choose data=wiki_sample, enwik8, pg19, imagenet64, ... (conf/data)")
    kind.validate(cfg.data)
    check_vocab(mcfg.vocab_size, kind.data_vocab(cfg.data), f"data={cfg.data.name}")
    if T % W:
        raise ConfigError(f"update_len={W} must divide sequence_len={T}")
    eval_len = cfg.data.get("eval_sequence_len") or T
    if not carries_state(mcfg) and (W != T or cfg.eval_window != eval_len):
        m = cfg.model
        raise ConfigError(f"the model (model.arch={m.get('arch')}, model.attn_type={m.get('attn_type')}, "
                          f"model.truncation={m.get('truncation')}) carries no state between calls: update_len={W} "
                          f"must equal sequence_len={T} and eval_window={cfg.eval_window} the evaluation sequence "
                          f"length {eval_len} (data.eval_sequence_len or sequence_len)")
    if carries_state(mcfg):
        check_block_len(mcfg.block_len, update_len=W, eval_window=cfg.eval_window)
    if eval_len % cfg.eval_window:
        raise ConfigError(f"eval_window={cfg.eval_window} must divide the evaluation sequence length {eval_len} "
                          "(data.eval_sequence_len or sequence_len)")
    if cfg.ckpt_every % (T // W):
        raise ConfigError(f"ckpt_every={cfg.ckpt_every} must be a multiple of sequence_len/update_len={T // W} "
                          "(one training batch makes that many optimizer updates)")
    mb = cfg.get("micro_batch_size")
    if mb is not None and (not isinstance(mb, int) or mb < 1 or cfg.data.batch_size % mb):
        raise ConfigError(f"micro_batch_size={mb!r} must be a positive integer dividing data.batch_size="
                          f"{cfg.data.batch_size}")
    if uses_vq(mcfg):
        check_codebook(mcfg.n_code, cfg.data.batch_size, W)
    if cfg.optim.get("schedule") not in (None, "cosine"):
        raise ConfigError(f"optim.schedule={cfg.optim.schedule!r} is invalid for task={cfg.get('task', 'lm')}: "
                          "its schedule is warmup then cosine (null or cosine)")
    return mcfg
