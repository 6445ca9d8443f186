"""Schema of the top-level keys of conf/train.yaml (the groups have their own files in this package)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from .base import fail, positive_int

TASKS = ("lm", "classify", "recall")   # keep in step with vqformer/lit/tasks.py TASKS


@dataclass
class PathsSchema:
    data_dir: str = "data"              # prepared data sets (VQFORMER_DATA_DIR)
    log_dir: str = "logs"               # run directories (VQFORMER_LOG_DIR)


@dataclass
class TrainSchema:
    task: str = "lm"                    # lm | classify | recall: the LightningModule (vqformer/lit/tasks.py)
    name: str = "default"               # experiment name: W&B group and <log_dir>/runs/<name>/...
    seed: int = 0                       # >= 0
    sequence_len: int = 2048            # T: tokens per training sequence; >= 1
    update_len: int = 256               # tokens per optimizer update; divides sequence_len
    micro_batch_size: Optional[int] = None  # null: whole batch; else divides data.batch_size
    eval_window: int = 256              # evaluation window, state carried; divides the evaluation length
    ckpt_every: int = 200               # optimizer steps between checkpoints; a multiple of sequence_len/update_len
    resume: bool = True                 # continue from <run_dir>/checkpoints/last.ckpt when present
    tags: List[str] = field(default_factory=list)   # W&B tags
    run_name: Optional[str] = None      # run folder under the runs/ (or sweep) directory; null: from the overrides
    threads: Optional[int] = None       # torch CPU threads per process; null: the physical cores, fewer when the
                                        # load average says the machine is busy (VQFORMER_THREADS; vqformer/threads.py)
    # groups, each typed by its own option's schema (see conf/README.md)
    data: Any = None                    # schema/data.py (one schema per data-module kind)
    model: Any = None                   # schema/model.py (the model's own config dataclass)
    optim: Any = None                   # schema/optim.py
    trainer: Any = None                 # schema/trainer.py (+ schema/hardware.py for the device fields)
    logger: Any = None                  # schema/logger.py
    paths: Any = None                   # PathsSchema above
    callbacks: Any = None               # conf/callbacks (schema/callbacks.py)
    lock: Any = None                    # run-directory lock settings (vqformer/lit/runner.py)

    @staticmethod
    def validate(cfg) -> None:
        if cfg.task not in TASKS:
            fail("task", cfg.task, f"choose one of {list(TASKS)}")
        if not str(cfg.name):
            fail("name", cfg.name, "must be a non-empty string")
        if not isinstance(cfg.seed, int) or cfg.seed < 0:
            fail("seed", cfg.seed, "must be an integer >= 0")
        for key in ("sequence_len", "update_len", "eval_window", "ckpt_every"):
            positive_int(key, cfg[key])
        positive_int("micro_batch_size", cfg.micro_batch_size, optional=True)
        positive_int("threads", cfg.get("threads"), optional=True)
        if cfg.run_name is not None and ("/" in cfg.run_name or cfg.run_name in ("", ".", "..")):
            fail("run_name", cfg.run_name, "must be a plain folder name (no '/')")
