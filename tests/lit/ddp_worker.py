"""One rank of a distributed test run (tests/lit/test_ddp.py starts one process per rank, as torchrun does).

``python tests/lit/ddp_worker.py OUT MODE RUN_DIR [override ...]`` with RANK / LOCAL_RANK / WORLD_SIZE /
MASTER_ADDR / MASTER_PORT in the environment (Lightning then joins that process group instead of launching
its own processes). MODE ``train`` trains with the harness (``vqformer.lit.runner.train``), ``crash@N``
trains and stops every rank after update N, ``validate`` scores RUN_DIR's last.ckpt, ``grad`` records
the gradients of one batch whose ranks score different numbers of tokens. Writes OUT/rank{R}.pt: what the test compares (per-update losses, codebooks, parameters, how
often each EMA statistic was all-reduced, the tokens each rank scored, the final metrics).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/: conftest.py
torch.set_num_threads(1)

from conftest import make_cfg  # noqa: E402
from vqformer.lit import lm_module, metrics  # noqa: E402
from vqformer.nn.quantizer import VectorQuantizer  # noqa: E402

record = {"losses": [], "seeds": [], "ema_reduces": [], "stray_ema_reduces": 0, "scored_tokens": 0.0}
_ema_buffers: set[int] = set()
_in_update = []

# Every all-reduce of a quantizer's EMA statistics is counted, inside and outside VectorQuantizer.update.
_all_reduce = dist.all_reduce


def _counting_all_reduce(tensor, *args, **kwargs):
    if id(tensor) in _ema_buffers:
        if _in_update:
            _in_update[-1] += 1
        else:
            record["stray_ema_reduces"] += 1
    return _all_reduce(tensor, *args, **kwargs)


dist.all_reduce = _counting_all_reduce
_update = VectorQuantizer.update


def _recording_update(self):
    _ema_buffers.update({id(self.acc_count), id(self.acc_sum)})
    _in_update.append(0)
    try:
        return _update(self)
    finally:
        record["ema_reduces"].append(_in_update.pop())


VectorQuantizer.update = _recording_update
_log_train = lm_module.LMModule._log_train


def _recording_log_train(self, loss, *args):
    record["losses"].append(float(loss))
    record["seeds"].append(torch.initial_seed())   # the batch's dropout seed (set in training_step)
    return _log_train(self, loss, *args)


lm_module.LMModule._log_train = _recording_log_train
_token_update = metrics.TokenNLL.update


def _recording_token_update(self, nll_sum, n_tokens):
    record["scored_tokens"] += float(n_tokens)
    return _token_update(self, nll_sum, n_tokens)


metrics.TokenNLL.update = _recording_token_update


class Keep(L.Callback):
    """Keeps the module's final codebooks and parameters; ``crash_at`` stops every rank after that update."""

    def __init__(self, crash_at: int | None = None):
        self.crash_at = crash_at

    def on_train_batch_end(self, trainer, module, *args):
        if self.crash_at is not None and trainer.global_step >= self.crash_at:
            raise RuntimeError("simulated preemption")

    def on_before_optimizer_step(self, trainer, module, optimizer):
        record.setdefault("grads", []).append({k: p.grad.clone() for k, p in module.named_parameters()
                                               if p.grad is not None})

    def on_train_end(self, trainer, module):
        record["params"] = {k: v.detach().clone() for k, v in module.state_dict().items()}
        record["world_size"] = trainer.world_size
        record["backend"] = dist.get_backend() if dist.is_initialized() else None


def grad_step(overrides: list[str]) -> None:
    """One batch (2 updates) in float64 on rows whose scored tokens differ by rank, gradients recorded."""
    from torch.utils.data import DataLoader

    from vqformer.lit.lm_module import LMModule

    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    L.seed_everything(0)
    module = LMModule.from_config(make_cfg(*overrides))
    g = torch.Generator().manual_seed(0)
    B, T = 4, 64
    inputs, targets = torch.randint(3, 259, (2, B, T), generator=g)
    mask = torch.arange(T)[None] < torch.tensor([64, 40, 64, 8])[:, None]   # rank 1's rows score fewer tokens
    rows = [{"inputs": inputs[i], "targets": targets[i], "mask": mask[i]} for i in range(rank, B, world)]
    trainer = L.Trainer(accelerator="cpu", devices=world, strategy="ddp" if world > 1 else "auto",
                        precision="64-true", max_steps=2, use_distributed_sampler=False, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Keep()])
    trainer.fit(module, train_dataloaders=DataLoader(rows, batch_size=len(rows)))


def main() -> None:
    out, mode, run_dir, *overrides = sys.argv[1:]
    rank = int(os.environ.get("RANK", 0))
    if mode == "validate":
        from vqformer.lit.checkpoint import load_module, run_config
        from vqformer.lit.runner import build_datamodule
        module = load_module(run_dir)
        trainer = L.Trainer(accelerator="cpu", devices=int(os.environ.get("WORLD_SIZE", 1)), logger=False,
                            strategy="ddp" if "WORLD_SIZE" in os.environ else "auto",
                            use_distributed_sampler=False, enable_progress_bar=False, enable_model_summary=False)
        record["metrics"] = {k: float(v) for k, v in
                             trainer.validate(module, datamodule=build_datamodule(run_config(run_dir)),
                                              verbose=False)[0].items()}
    elif mode == "grad":
        grad_step(overrides)
    else:
        from vqformer.lit.runner import train
        crash_at = int(mode.split("@")[1]) if mode.startswith("crash@") else None
        try:
            record["metrics"] = train(make_cfg(*overrides), Path(run_dir), extra_callbacks=[Keep(crash_at)])
        except RuntimeError as e:
            if "simulated preemption" not in str(e):
                raise
            record["crashed"] = True
    torch.save(record, Path(out) / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
