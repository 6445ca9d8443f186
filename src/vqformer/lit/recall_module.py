"""Lightning module of the recall benchmarks: the LM loss on query positions, accuracy per test segment.

Spec: ``docs/ovq.md`` §2.1 (cross-entropy over the labelled query positions only; accuracy
per example = fraction of correct argmax predictions, averaged over examples; reported per slice) and §2.2
(state size per arm). Training is ``LMModule``'s (windows of ``update_len`` with the state carried; recall
configs use one window per sequence). Evaluation carries the state over windows of ``eval_window`` tokens
and logs ``<stage>/acc`` (mean over segments), ``<stage>/loss`` and ``<stage>/acc/<segment>``.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from ..config import ConfigError, _positive_int, check_distributed, model_config
from ..schema.rules import check_block_len
from .lm_module import LMModule
from .metrics import SegmentRecall


class RecallModule(LMModule):
    def __init__(self, model: dict, optim: dict, update_len: int, micro_batch_size: int | None = None,
                 eval_window: int | None = None, seed: int = 0, segment_names: list | None = None):
        super().__init__(model=model, optim=optim, update_len=update_len, micro_batch_size=micro_batch_size,
                         eval_window=eval_window, seed=seed)
        self.segment_names = list(segment_names or [])
        # Summed over DDP ranks when computed (each rank scores its shard of the test batches).
        self.recall = SegmentRecall(max(1, len(self.segment_names)))

    @staticmethod
    def validate_config(cfg: DictConfig) -> None:
        check_distributed(cfg)
        mcfg = model_config(cfg)
        for key in ("update_len", "eval_window", "trainer.max_steps", "ckpt_every", "data.batch_size",
                    "data.vocab_size"):
            _positive_int(cfg, key)
        if mcfg.vocab_size < cfg.data.vocab_size:
            raise ConfigError(f"model.vocab_size={mcfg.vocab_size} must be >= data.vocab_size={cfg.data.vocab_size}")
        specs = OmegaConf.to_container(cfg.data, resolve=True)
        lengths = set()
        for key in ("train_segments", "test_segments"):
            segs = specs.get(key) or []
            if not segs:
                raise ConfigError(f"data.{key} must list at least one segment")
            lengths |= {s.get("input_seq_len") for s in segs}
        try:
            from hydra.utils import get_class
            get_class(cfg.data._target_)
        except Exception as e:  # an unimportable target
            raise ConfigError(f"data._target_={cfg.data._target_!r} cannot be imported: {e}") from None
        # a fresh model call takes whole blocks
        check_block_len(mcfg.block_len, update_len=cfg.update_len, eval_window=cfg.eval_window,
                        **{"data.*_segments.input_seq_len": n for n in sorted(lengths)})
        try:
            from ..data.recall_datamodule import _segments
            from ..data.mqar import check_segment
            for key in ("train_segments", "test_segments"):
                for i, sp in enumerate(_segments(specs[key], f"data.{key}")):
                    check_segment(sp, cfg.data.vocab_size, specs.get("num_passes", 1), f"data.{key}[{i}]",
                                  specs.get("query_gap", 0))
        except (TypeError, ValueError) as e:
            raise ConfigError(str(e)) from None

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "RecallModule":
        names = [f"L{s.input_seq_len}_D{s.num_kv_pairs}" for s in cfg.data.test_segments]
        return cls(model=OmegaConf.to_container(cfg.model, resolve=True),
                   optim=OmegaConf.to_container(cfg.optim, resolve=True),
                   update_len=cfg.update_len, micro_batch_size=cfg.get("micro_batch_size"),
                   eval_window=cfg.eval_window, seed=cfg.seed, segment_names=names)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict_batch(self, inputs, targets, mask, state=None):
        """(summed NLL, correct predictions per example, scored positions per example) over whole sequences."""
        nll = torch.zeros((), dtype=torch.float64, device=inputs.device)
        correct = torch.zeros(inputs.shape[0], dtype=torch.float64, device=inputs.device)
        for w0 in range(0, inputs.shape[1], self.eval_window):
            cols = slice(w0, w0 + self.eval_window)
            logits, aux = self.model(inputs[:, cols], state)
            state = aux.state
            m = mask[:, cols]
            nll += self._nll(logits, targets[:, cols], m.float()).double()
            correct += ((logits.argmax(-1) == targets[:, cols]) & m).sum(1).double()
        return nll, correct, mask.sum(1).double()

    def _eval_step(self, batch):
        nll, correct, count = self.predict_batch(batch["inputs"], batch["targets"], batch["mask"])
        self.recall.update(int(batch["segment"]), correct, count, nll)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch)

    def on_validation_epoch_end(self):
        self._log_recall("val")

    def on_test_epoch_end(self):
        self._log_recall("test")

    def _log_recall(self, stage: str):
        out = self.recall.compute()   # synced over ranks
        self.recall.reset()
        # torchmetrics squeezes a one-element result to 0-d: one test segment gives a scalar accuracy.
        accs = {self.segment_names[i] if i < len(self.segment_names) else f"seg{i}": float(a)
                for i, a in enumerate(out["acc"].reshape(-1)) if not torch.isnan(a)}
        if not accs:
            return
        for name, a in accs.items():
            self.log(f"{stage}/acc/{name}", a)
        self.log(f"{stage}/acc", sum(accs.values()) / len(accs), prog_bar=True)
        self.log(f"{stage}/loss", float(out["loss"]), prog_bar=True)

    def _log_train(self, loss, commit, stats, sched):
        self.log_dict({"train/loss": loss, "train/commit": commit, "train/lr": sched.get_last_lr()[0],
                       "train/tokens_seen": float(self.tokens_seen)}, on_step=True, on_epoch=False)
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=False, logger=False)


__all__ = ["RecallModule"]
