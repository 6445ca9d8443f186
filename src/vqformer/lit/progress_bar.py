"""The training and evaluation progress bar: optimizer updates out of ``max_steps`` with rate and ETA.

Lightning's own bar counts batches of an epoch (our byte streams have no epoch worth counting) and, in a log
file, writes one carriage-return redraw per batch. This bar counts updates towards ``trainer.max_steps`` (a
resumed run starts at its step) and draws through ``vqformer.progress.progress``: in place on a terminal, one
whole line per few percent in a log. Validation and test show their batches the same way.
"""
from __future__ import annotations

import math

from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

from ..progress import progress


class StepProgressBar(ProgressBar):
    def __init__(self, show_eval: bool = True):
        super().__init__()
        self.show_eval = show_eval
        self.enabled = True
        self.train_bar = None
        self.eval_bar = None

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def _on(self, trainer) -> bool:
        return self.enabled and trainer.is_global_zero

    # training: one tick per optimizer update (manual optimization advances global_step itself)
    def on_train_start(self, trainer, pl_module) -> None:
        if self._on(trainer):
            self.train_bar = progress(total=trainer.max_steps, initial=trainer.global_step, desc="train",
                                      unit="step", leave=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.train_bar
        if bar is None:
            return
        loss = trainer.progress_bar_metrics.get("train/loss", trainer.callback_metrics.get("train/loss"))
        if loss is not None:
            bar.set_postfix_str(f"loss {float(loss):.3f}", refresh=False)
        if trainer.global_step > bar.n:
            bar.update(trainer.global_step - bar.n)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.train_bar is not None:
            self.train_bar.close()
            self.train_bar = None

    # validation and test: batches of the (finite) evaluation set
    def _eval_start(self, trainer, totals, desc: str) -> None:
        if not (self.show_eval and self._on(trainer)) or trainer.sanity_checking:
            return
        total = sum(totals) if totals and all(math.isfinite(t) for t in totals) else None
        self.eval_bar = progress(total=total, desc=desc, unit="batch", leave=False)

    def _eval_batch(self) -> None:
        if self.eval_bar is not None:
            self.eval_bar.update(1)

    def _eval_end(self) -> None:
        if self.eval_bar is not None:
            self.eval_bar.close()
            self.eval_bar = None

    def on_validation_start(self, trainer, pl_module) -> None:
        self._eval_start(trainer, trainer.num_val_batches, "validation")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch()

    def on_validation_end(self, trainer, pl_module) -> None:
        self._eval_end()

    def on_test_start(self, trainer, pl_module) -> None:
        self._eval_start(trainer, trainer.num_test_batches, "test")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch()

    def on_test_end(self, trainer, pl_module) -> None:
        self._eval_end()
