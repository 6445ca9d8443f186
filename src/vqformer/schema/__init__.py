"""One typed schema per config group, registered in Hydra's ConfigStore, and the validation of a whole run.

Each group's options start with ``defaults: [schema_<name>, _self_]`` (Hydra's "extending a schema" pattern),
so a value of the wrong type or an unknown key fails while Hydra composes (also under ``--cfg job``);
``validate_groups`` then checks the ranges each schema documents, and the task validation the rules
between groups (``rules.py``). conf/README.md maps each group to its file here.
"""
from __future__ import annotations

import dataclasses

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from .base import ConfigError
from .callbacks import CallbacksSchema
from .data import KINDS, kind_of
from .logger import LoggerSchema
from .model import MODELS
from .optim import OptimSchema
from .train import PathsSchema, TrainSchema
from .trainer import TrainerSchema

__all__ = ["ConfigError", "register", "validate_groups", "kind_of"]


def register() -> None:
    """Store every schema (idempotent); must run before Hydra composes conf/train.yaml."""
    cs = ConfigStore.instance()
    cs.store(name="schema_train", node=TrainSchema)
    for kind, cls in KINDS.items():
        cs.store(group="data", name=f"schema_{kind}", node=cls)
    for name, cls in MODELS.items():
        cs.store(group="model", name=name, node=cls)
    cs.store(group="optim", name="schema_optim", node=OptimSchema)
    cs.store(group="trainer", name="schema_trainer", node=TrainerSchema)
    cs.store(group="logger", name="schema_logger", node=LoggerSchema)
    cs.store(group="paths", name="schema_paths", node=PathsSchema)
    cs.store(group="callbacks", name="schema_callbacks", node=CallbacksSchema)


def check_known_keys(cfg) -> None:
    """Hydra's ``+key=value`` may add keys to a typed node; a key no schema declares is a typo or a dead knob."""
    nodes = [("", cfg)] + [(f"{g}.", cfg.get(g)) for g in ("data", "model", "optim", "trainer", "logger", "paths",
                                                                  "callbacks")]
    for prefix, node in nodes:
        t = OmegaConf.get_type(node) if OmegaConf.is_dict(node) else None
        if not dataclasses.is_dataclass(t):
            continue
        known = {f.name for f in dataclasses.fields(t)}
        extra = sorted(set(node) - known - {"hydra"})
        if extra:
            raise ConfigError(f"{prefix}{extra[0]} is not a knob of {t.__name__} (src/vqformer/schema); "
                              f"known: {sorted(known - {'_target_'})}")


def validate_groups(cfg, check_device: bool = True) -> None:
    """Ranges of every group (types were checked when Hydra composed the config)."""
    from . import hardware
    check_known_keys(cfg)
    TrainSchema.validate(cfg)
    OptimSchema.validate(cfg.optim)
    TrainerSchema.validate(cfg.trainer)
    if check_device:
        hardware.validate(cfg.trainer)
    else:
        from .base import one_of
        one_of("trainer.accelerator", cfg.trainer.accelerator, hardware.ACCELERATORS)
        one_of("trainer.precision", str(cfg.trainer.precision), hardware.PRECISIONS)
    LoggerSchema.validate(cfg.logger)
    if OmegaConf.is_dict(cfg.get("callbacks")):
        CallbacksSchema.validate(cfg.callbacks)
    kind = kind_of(cfg.data)
    if kind is not None:
        kind.validate(cfg.data)
