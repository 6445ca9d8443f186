"""Schema of the ``logger`` group (conf/logger/*.yaml): which Lightning loggers a run writes.

Each entry is null (off) or a node with ``_target_``; ``vqformer.lit.runner.build_loggers`` instantiates every
entry with the run directory as ``save_dir`` (W&B also gets a run id derived from the directory, so a
resumed run continues the same W&B run). Options combine entries: ``wandb`` = CSV + W&B, ``csv``,
``tensorboard`` = CSV + TensorBoard, ``none``.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import List, Optional

from .base import fail, one_of

WANDB_MODES = ("auto", "online", "offline", "disabled")


@dataclass
class CSVLoggerSchema:
    _target_: str = "lightning.pytorch.loggers.CSVLogger"
    name: str = "csv"                  # sub-folder of the run directory
    version: int = 0                   # fixed, so a resumed run appends to the same metrics.csv


@dataclass
class WandbLoggerSchema:
    _target_: str = "lightning.pytorch.loggers.WandbLogger"
    project: str = "vqformer"          # W&B project (WANDB_PROJECT)
    entity: Optional[str] = None       # W&B team or user; null: the login's default (WANDB_ENTITY)
    group: Optional[str] = None        # runs of one experiment (the experiment name)
    mode: str = "auto"                 # auto (online with credentials, else offline) | online | offline | disabled
    tags: List[str] = field(default_factory=list)   # W&B run tags (the top-level tags)


@dataclass
class TensorBoardLoggerSchema:
    _target_: str = "lightning.pytorch.loggers.TensorBoardLogger"
    name: str = "tensorboard"          # sub-folder of the run directory
    version: int = 0                   # fixed, so a resumed run appends to the same event files


@dataclass
class LoggerSchema:
    csv: Optional[CSVLoggerSchema] = None               # metrics.csv under <run_dir>/csv/version_0
    wandb: Optional[WandbLoggerSchema] = None           # W&B run in <run_dir>/wandb
    tensorboard: Optional[TensorBoardLoggerSchema] = None  # needs the tensorboard package

    @staticmethod
    def validate(lg) -> None:
        if lg.wandb is not None:
            one_of("logger.wandb.mode", lg.wandb.mode, WANDB_MODES)
            if lg.wandb.mode != "disabled" and importlib.util.find_spec("wandb") is None:
                fail("logger", "wandb", "the wandb package is not installed: pip install wandb, "
                     "or choose logger=csv")
        if lg.tensorboard is not None and not any(importlib.util.find_spec(p) for p in ("tensorboard", "tensorboardX")):
            fail("logger", "tensorboard", "the tensorboard package is not installed: pip install tensorboard, "
                 "or choose logger=csv")
