"""Preemption: SIGTERM / SIGUSR1 write a checkpoint at the next batch boundary and end the job.

The handler only records the signal. At the end of the current training batch (the point where
``ModelCheckpoint`` saves, so a resume from it is exact) ``last.ckpt`` is written; the batch then finishes
as usual (its metrics row, the validation due at it), and the job stops before the next batch with
``Preempted``; the entry point exits with ``128 + signal`` (143 for SIGTERM, 138 for SIGUSR1) and no
``DONE``, so the same command, or SLURM's requeue of it, continues exactly.

Lightning's own handlers are replaced while training: its SIGTERM handler stops in the middle of a
validation, and its SLURM SIGUSR1 handler (``SLURMEnvironment(auto_requeue=True)``) checkpoints in the middle
of an update. Requeueing is kept: with ``requeue: auto`` a SIGUSR1 under SLURM (``SLURM_JOB_ID`` set) runs
``scontrol requeue <job id>`` after the checkpoint, as Lightning's handler does (submit with
``#SBATCH --signal=USR1@90``). Under DDP every rank stops at the same batch (one all-reduce per batch).
"""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import lightning as L


class Preempted(Exception):
    def __init__(self, signum: int, ckpt: str):
        self.signum, self.ckpt = signum, ckpt
        self.exit_code = 128 + signum
        super().__init__(f"received {signal.Signals(signum).name}: checkpoint written to {ckpt}; run the same "
                         f"command again to continue (exit code {self.exit_code})")


def _requeue() -> None:
    job = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    rc = subprocess.call(["scontrol", "requeue", job])
    print(f"[vqformer] scontrol requeue {job}: {'done' if rc == 0 else f'failed (exit {rc})'}")


class Preemption(L.Callback):
    def __init__(self, signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1"), requeue: str | bool = "auto",
                 ckpt_dir: str | None = None):
        try:
            self.signals = [signal.Signals[s] if isinstance(s, str) else signal.Signals(s) for s in signals]
        except (KeyError, ValueError) as e:
            raise ValueError(f"callbacks.preemption.signals={list(signals)}: unknown signal {e}") from None
        if requeue not in ("auto", True, False):
            raise ValueError(f"callbacks.preemption.requeue={requeue!r} is invalid: auto | true | false")
        self.requeue, self.ckpt_dir = requeue, ckpt_dir
        self.received: int | None = None
        self.saved: str | None = None
        self._previous: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.received is None:
            print(f"[vqformer] received {signal.Signals(signum).name}: checkpointing at the end of this batch")
        self.received = signum

    def on_train_start(self, trainer, pl_module) -> None:
        # After Lightning registered its handlers in fit(): ours replace them until the end of training.
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handler)

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()

    def _restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stop = self.received is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop and self.saved is None:
            path = str(Path(self.ckpt_dir or trainer.default_root_dir) / "last.ckpt")
            trainer.save_checkpoint(path)
            self.saved = path
            self.received = self.received or signal.SIGTERM

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.saved is not None:
            self.stop(trainer)

    def stop(self, trainer) -> None:
        """Flush the loggers, requeue when asked, and raise ``Preempted`` (also used after ``fit``)."""
        for lg in trainer.loggers:
            lg.save()
        if trainer.is_global_zero and self.received == signal.SIGUSR1 and (
                self.requeue is True or (self.requeue == "auto" and os.environ.get("SLURM_JOB_ID"))):
            _requeue()
        raise Preempted(self.received, self.saved or "the last checkpoint")
