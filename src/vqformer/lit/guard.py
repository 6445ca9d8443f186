"""Divergence guard: a non-finite loss, gradient norm or model state (codebook included) stops the run.

Checked on every backward (the loss), every optimizer update before the step is applied (the gradient
norm) and at the end of each batch (parameters and buffers, the EMA codebooks included), i.e. before any
checkpoint of that batch is written (Lightning runs checkpoint callbacks after the others). Each check
costs one device synchronisation. ``policy: skip`` drops an update whose
gradients are non-finite (the parameters keep their values) and stops after ``max_skips`` such updates in a
row; a non-finite loss or state always stops, since it cannot be undone. Stopping raises ``Diverged``
naming the step and the last finite checkpoint: the run gets no ``DONE`` and the process exits non-zero.
"""
from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch

from .checkpoint_io import last_finite_checkpoint

POLICIES = ("stop", "skip")


class Diverged(RuntimeError):
    pass


def grad_norm(module: torch.nn.Module) -> float:
    grads = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


def non_finite_state(module: torch.nn.Module) -> list[str]:
    return [k for k, t in module.state_dict().items()
            if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


class DivergenceGuard(L.Callback):
    def __init__(self, policy: str = "stop", max_skips: int = 3, ckpt_dir: str | None = None):
        if policy not in POLICIES:
            raise ValueError(f"callbacks.guard.policy={policy!r} is invalid: choose one of {list(POLICIES)}")
        if not isinstance(max_skips, int) or max_skips < 0:
            raise ValueError(f"callbacks.guard.max_skips={max_skips!r} must be a non-negative integer")
        self.policy, self.max_skips, self.ckpt_dir = policy, max_skips, ckpt_dir
        self.skips_in_row = 0
        self.skipped_total = 0
        self.bad_loss: float | None = None

    def _stop(self, trainer, what: str) -> None:
        last = last_finite_checkpoint(Path(self.ckpt_dir)) if self.ckpt_dir else "unknown"
        raise Diverged(f"training diverged: {what} at step {trainer.global_step}; nothing was saved from this "
                       f"step on. Last finite checkpoint: {last}. Lower optim.lr, raise optim.warmup_steps or "
                       "set optim.grad_clip, then start a new run (resuming repeats the same updates).")

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if not bool(torch.isfinite(loss.detach()).all()):
            if self.policy == "stop" and trainer.world_size == 1:   # under DDP: at the synced gradients
                self._stop(trainer, f"non-finite loss ({float(loss)})")
            self.bad_loss = float(loss)   # its gradients are non-finite too: the update is skipped below

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return   # fp16 loss scaling: overflowing gradients are expected, the scaler skips those steps
        norm, loss, self.bad_loss = grad_norm(pl_module), self.bad_loss, None
        if math.isfinite(norm) and loss is None:
            self.skips_in_row = 0
            return
        what = f"non-finite loss ({loss})" if loss is not None else f"non-finite gradient norm ({norm})"
        if self.policy == "skip" and self.skips_in_row < self.max_skips:
            self.skips_in_row += 1
            self.skipped_total += 1
            optimizer.zero_grad(set_to_none=True)   # torch optimizers leave parameters without grads alone
            print(f"[vqformer] WARNING: {what} at step {trainer.global_step}: update skipped "
                  f"({self.skips_in_row} in a row, callbacks.guard.max_skips={self.max_skips})")
            return
        in_row = f" after {self.skips_in_row} skipped updates in a row" if self.skips_in_row else ""
        self._stop(trainer, what + in_row)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        state = non_finite_state(pl_module)
        bad = f"non-finite model state ({', '.join(state[:4])}{' ...' if len(state) > 4 else ''})" if state else ""
        if trainer.world_size > 1:   # every rank stops together (a lone raise would hang the others)
            if trainer.strategy.reduce_boolean_decision(bool(bad), all=False) and not bad:
                bad = "non-finite model state on another rank"
        if bad:
            self._stop(trainer, bad)

    def state_dict(self) -> dict:
        return {"skips_in_row": self.skips_in_row, "skipped_total": self.skipped_total}

    def load_state_dict(self, state: dict) -> None:
        self.skips_in_row = state.get("skips_in_row", 0)
        self.skipped_total = state.get("skipped_total", 0)
