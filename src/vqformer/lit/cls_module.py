"""Lightning wrapper of the LongVQ / MEGA encoder classifier for the LRA tasks.

Spec: ``docs/longvq.md``
  §1.2(g)  plain cross entropy averaged over examples, accuracy,
  §1.3     total loss ``CE + c_beta·L_commit``; the EMA codebook step runs once per optimizer step, after the
           backward passes of all accumulated micro-batches (``on_before_optimizer_step``),
  §2.2     MEGA's optimizer: Adam(W) β (0.9, 0.98), ε 1e-8, weight decay scaled by the lr as in fairseq/PyTorch
           (on matrices only), gradient clipping, linear warmup then linear decay to 0 (``optim.schedule:
           linear``; ``cosine`` uses the repository's ``warmup_cosine``).

Model fields that depend on the data (``vocab_size``, ``n_classes``, ``embed``, ``retrieval``, ``in_channels``)
are set in the experiment files and checked here against the task table, naming the key on a mismatch.
"""
from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torchmetrics.classification import MulticlassAccuracy

from ..models.longvq import LongVQClassifier, LongVQConfig
from ..optim import param_groups, warmup_cosine
from .metrics import IGNORE_LABEL, TokenNLL

SCHEDULES = ("linear", "cosine")


def warmup_linear(warmup_steps: int, total_steps: int):
    """MEGA/fairseq: linear warmup to the peak, then linear decay to 0 at ``total_steps``."""
    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return fn


class ClassifyModule(L.LightningModule):
    def __init__(self, model: dict, optim: dict, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.model = LongVQClassifier(LongVQConfig(**model))
        self.optim_cfg = DictConfig(optim)
        n = self.model.cfg.n_classes
        # torchmetrics states are summed over DDP ranks when computed; each rank scores its shard of the
        # evaluation set, padded with IGNORE_LABEL examples that neither metric counts.
        self.train_acc = MulticlassAccuracy(n, average="micro")
        self.val_acc = MulticlassAccuracy(n, average="micro", ignore_index=IGNORE_LABEL)
        self.test_acc = MulticlassAccuracy(n, average="micro", ignore_index=IGNORE_LABEL)
        self.val_loss = TokenNLL()    # summed cross entropy and example count
        self.test_loss = TokenNLL()

    # ------------------------------------------------------------------ building from a composed config
    @staticmethod
    def validate_config(cfg: DictConfig) -> None:
        from ..config import ConfigError, _positive_int, check_distributed
        from ..data.lra.tasks import TASKS

        check_distributed(cfg)

        kwargs = OmegaConf.to_container(cfg.model, resolve=True)
        unknown = set(kwargs) - set(LongVQConfig.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"model: unknown field(s) {sorted(unknown)}; known: {sorted(LongVQConfig.__dataclass_fields__)}")
        try:
            mcfg = LongVQConfig(**kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigError(str(e)) from None
        for key in ("data.batch_size", "trainer.max_steps", "ckpt_every"):
            _positive_int(cfg, key)
        task = cfg.data.get("task")
        if task not in TASKS:
            raise ConfigError(f"data.task={task!r} is unknown; choose one of {sorted(TASKS)}")
        spec = TASKS[task]
        want = {"n_classes": spec.n_classes, "embed": "real" if spec.kind == "real" else "token",
                "retrieval": spec.kind == "pair", "in_channels": spec.channels}
        for field, value in want.items():
            if getattr(mcfg, field) != value:
                raise ConfigError(f"model.{field}={getattr(mcfg, field)!r} does not fit data.task={task}: expected {value!r}")
        if spec.kind != "real" and mcfg.vocab_size < spec.vocab_size:
            raise ConfigError(f"model.vocab_size={mcfg.vocab_size} is smaller than data.task={task}'s {spec.vocab_size}")
        max_len = cfg.data.get("max_len") or spec.max_len
        if mcfg.attn_type == "full" and mcfg.max_len < max_len:
            raise ConfigError(f"model.max_len={mcfg.max_len} is shorter than the data length {max_len} (data.max_len)")
        schedule = cfg.optim.get("schedule") or "linear"
        if schedule not in SCHEDULES:
            raise ConfigError(f"optim.schedule={schedule!r} is invalid: choose one of {list(SCHEDULES)}")
        if cfg.optim.name not in ("adamw",):
            raise ConfigError(f"optim.name={cfg.optim.name!r} is invalid for task=classify: use adamw")

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "ClassifyModule":
        return cls(model=OmegaConf.to_container(cfg.model, resolve=True),
                   optim=OmegaConf.to_container(cfg.optim, resolve=True), seed=cfg.seed)

    # ------------------------------------------------------------------ optimizer and schedule
    def configure_optimizers(self):
        o = self.optim_cfg
        groups = [{"params": g["params"], "weight_decay": g["constant_decay"]}
                  for g in param_groups(self.model, o.weight_decay)]
        opt = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.get("eps", 1e-8))
        total = self.trainer.max_steps if self.trainer and self.trainer.max_steps > 0 else o.warmup_steps
        fn = (warmup_linear(o.warmup_steps, total) if (o.get("schedule") or "linear") == "linear"
              else warmup_cosine(o.warmup_steps, total, o.get("min_lr_ratio", 0.0), from_zero=False))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        clip = self.optim_cfg.get("grad_clip")
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")

    def on_before_optimizer_step(self, optimizer):
        self.model.update_codebooks()

    # ------------------------------------------------------------------ steps
    def forward(self, inputs, mask):
        return self.model(inputs, mask)

    def training_step(self, batch, batch_idx):
        logits, commit, stats = self.model(batch["inputs"], batch["mask"])
        ce = F.cross_entropy(logits.float(), batch["label"])
        loss = ce + self.model.cfg.c_beta * commit
        self.train_acc(logits.detach(), batch["label"])
        logs = {"train/loss": ce.detach(), "train/commit": commit.detach(), "train/acc": self.train_acc,
                "train/lr": self.trainer.optimizers[0].param_groups[0]["lr"] if self.trainer else 0.0}
        logs.update({f"vq/{k}": v for k, v in stats.items()})
        self.log_dict(logs, on_step=True, on_epoch=False)
        self.log("loss", ce.detach(), prog_bar=True, logger=False)
        return loss

    def _eval_step(self, batch, stage: str, acc, loss):
        logits, _, _ = self.model(batch["inputs"], batch["mask"])
        labels = batch["label"]
        acc.update(logits, labels)
        loss.update(F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_LABEL, reduction="sum"),
                    (labels != IGNORE_LABEL).sum())
        self.log(f"{stage}/acc", acc, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val", self.val_acc, self.val_loss)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test", self.test_acc, self.test_loss)
