"""Schema of the ``trainer`` group (conf/trainer/*.yaml): the ``lightning.Trainer`` keyword arguments we use.

Every field is passed to ``lightning.Trainer``; defaults equal Lightning's except where the project fixes
them. ``hardware/*`` sets the device fields (checked in ``schema/hardware.py``), ``debug/*`` the limits.
Training uses manual optimization (one update per window of ``update_len`` tokens), so Lightning's own
accumulation and clipping would be silently ignored: they are refused with the project knob to use.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .base import fail, is_int, nonneg_int, one_of, positive_int

PROFILERS = ("simple", "advanced")


@dataclass
class TrainerSchema:
    max_steps: int = 600                        # optimizer updates to train (not batches); >= 1
    val_check_interval: int = 200               # training batches between validations; >= 1
    check_val_every_n_epoch: Optional[int] = None  # null: validate by val_check_interval only; else >= 1
    limit_val_batches: Optional[int] = None     # validation batches per check; null: the data's limit; >= 1
    limit_train_batches: Optional[int] = None   # training batches per epoch; null: all; >= 1
    overfit_batches: int = 0                    # train and validate on this many training batches; >= 0
    log_every_n_steps: int = 10                 # batches between logged training metrics; >= 1
    enable_progress_bar: bool = True            # tqdm bar (false in batch jobs)
    enable_model_summary: bool = True           # parameter table at the start
    num_sanity_val_steps: int = 0               # validation batches before training; >= 0
    profiler: Optional[str] = None              # null | simple | advanced (Lightning's profilers)
    accelerator: str = "cpu"                    # cpu | gpu | cuda | mps | auto (hardware group)
    devices: Any = 1                            # a positive integer, a list of device ids, or auto
    num_nodes: int = 1                          # machines; >= 1
    strategy: str = "auto"                      # auto | ddp | any Lightning strategy name
    precision: str = "32-true"                  # see schema/hardware.py PRECISIONS
    use_distributed_sampler: bool = True        # false under DDP: the data module shards windows by rank
    accumulate_grad_batches: int = 1            # must stay 1: use micro_batch_size (manual optimization)
    gradient_clip_val: Optional[float] = None   # must stay null: use optim.grad_clip (manual optimization)

    @staticmethod
    def validate(t) -> None:
        if t.accumulate_grad_batches != 1:
            fail("trainer.accumulate_grad_batches", t.accumulate_grad_batches,
                 "training uses manual optimization, which ignores it; split each update with "
                 "micro_batch_size=<a divisor of data.batch_size> instead")
        if t.gradient_clip_val is not None:
            fail("trainer.gradient_clip_val", t.gradient_clip_val,
                 "training uses manual optimization, which ignores it; set optim.grad_clip instead")
        for key in ("max_steps", "val_check_interval", "log_every_n_steps", "num_nodes"):
            positive_int(f"trainer.{key}", t[key])
        for key in ("check_val_every_n_epoch", "limit_val_batches", "limit_train_batches"):
            positive_int(f"trainer.{key}", t[key], optional=True)
        nonneg_int("trainer.overfit_batches", t.overfit_batches)
        nonneg_int("trainer.num_sanity_val_steps", t.num_sanity_val_steps)
        if t.profiler is not None:
            one_of("trainer.profiler", t.profiler, PROFILERS)
        d = t.devices
        if isinstance(d, str) and d.isdigit():
            d = int(d)
        if not (d == "auto" or (is_int(d) and d >= 1) or (not isinstance(d, (str, int)) and len(d) > 0)):
            fail("trainer.devices", d, "must be a positive integer, a non-empty list of device ids, or auto")
