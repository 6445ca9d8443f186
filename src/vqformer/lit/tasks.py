"""Which LightningModule trains a composed config: the top-level ``task`` key names it.

A task class provides ``validate_config(cfg)`` (raises ``ConfigError`` naming the key, before any work)
and ``from_config(cfg)``; it is loaded back from a checkpoint with Lightning's ``load_from_checkpoint``.
Classes are named by import path so that one task's dependencies are imported only when it runs.
"""
from __future__ import annotations

import importlib

from ..config import ConfigError

TASKS = {
    "lm": "vqformer.lit.lm_module:LMModule",               # byte/token language modelling (Transformer-VQ)
    "classify": "vqformer.lit.cls_module:ClassifyModule",  # sequence classification (LongVQ on LRA)
    "recall": "vqformer.lit.recall_module:RecallModule",
}


def task_class(name: str):
    if name not in TASKS:
        raise ConfigError(f"task={name!r} is unknown; choose one of {sorted(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)
