"""Schema of the ``callbacks`` group (conf/callbacks/*.yaml): every entry is null (off) or a node with
``_target_`` that ``vqformer.lit.runner.build_callbacks`` instantiates (the runner adds the checkpoint
directory). The group stays open, so a user's own callback is one override
(``+callbacks.mine._target_=pkg.Module``); ``validate`` checks the entries below and that every other entry
names a ``_target_``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import OmegaConf

from .base import fail, one_of


@dataclass
class CheckpointSchema:
    _target_: str = "lightning.pytorch.callbacks.ModelCheckpoint"
    filename: str = "step{step}"                # file name pattern under <run_dir>/checkpoints
    auto_insert_metric_name: bool = False       # false: the pattern alone names the file
    every_n_train_steps: Optional[int] = None   # optimizer updates between checkpoints; >= 1, null: none
    save_last: Optional[bool] = None            # also keep last.ckpt (the resume point)
    monitor: Optional[str] = None               # step: rank by step, so save_top_k keeps the newest
    mode: str = "min"                           # min | max
    save_top_k: int = 1                         # checkpoints kept besides last.ckpt; -1: all


@dataclass
class GuardSchema:
    _target_: str = "vqformer.lit.guard.DivergenceGuard"
    policy: str = "stop"                        # stop | skip (drop an update with non-finite gradients)
    max_skips: int = 3                          # skip: consecutive skipped updates before stopping; >= 0


@dataclass
class PreemptionSchema:
    _target_: str = "vqformer.lit.preemption.Preemption"
    signals: List[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])   # checkpoint and exit on these
    requeue: Any = "auto"                       # auto (under SLURM) | true | false: scontrol requeue after the checkpoint


@dataclass
class CallbacksSchema:
    checkpoint: Optional[CheckpointSchema] = None    # required: a run without checkpoints cannot resume
    milestones: Optional[CheckpointSchema] = None    # checkpoints kept forever
    guard: Optional[GuardSchema] = None              # non-finite loss / gradients stop the run
    preemption: Optional[PreemptionSchema] = None    # signals checkpoint and exit 128 + signal
    lr_monitor: Optional[Any] = None                 # {_target_: lightning.pytorch.callbacks.LearningRateMonitor}
    progress_bar: Optional[Any] = None               # built only with trainer.enable_progress_bar=true

    @staticmethod
    def validate(c) -> None:
        for name, node in c.items():
            if node is not None and not (OmegaConf.is_dict(node) and node.get("_target_")):
                fail(f"callbacks.{name}", node, "must be null or a node with _target_")
        if c.get("checkpoint") is None:
            fail("callbacks.checkpoint", None, "is required: a run without checkpoints cannot resume")
        for key in ("checkpoint", "milestones"):
            node = c.get(key)
            if node is None:
                continue
            n = node.get("every_n_train_steps")
            if n is not None and (not isinstance(n, int) or n < 1):
                fail(f"callbacks.{key}.every_n_train_steps", n, "must be a positive integer (or null)")
            one_of(f"callbacks.{key}.mode", node.get("mode", "min"), ("min", "max"))
        if c.get("guard") is not None:
            one_of("callbacks.guard.policy", c.guard.get("policy", "stop"), ("stop", "skip"))
            skips = c.guard.get("max_skips", 0)
            if not isinstance(skips, int) or skips < 0:
                fail("callbacks.guard.max_skips", skips, "must be an integer >= 0")
        if c.get("preemption") is not None:
            import signal
            for s in c.preemption.get("signals", []):
                if s not in signal.Signals.__members__:
                    fail("callbacks.preemption.signals", list(c.preemption.signals), f"{s} is not a signal name")
            if c.preemption.get("requeue", "auto") not in ("auto", True, False):
                fail("callbacks.preemption.requeue", c.preemption.requeue, "auto | true | false")
