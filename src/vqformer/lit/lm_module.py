"""Lightning wrapper of the decoder LM: truncated BPTT over update windows, EMA codebook, LM metrics.

Spec: ``docs/transformer_vq.md``
  §3.5  each sequence of ``sequence_len`` tokens is trained in windows of ``update_len`` tokens, each
        window one optimizer update, the attention state carried (detached) to the next window and reset
        per sequence; evaluation carries the state across the whole sequence,
  §4.2  loss = CE + c_beta·Σ commit, gradient clipping on model parameters only, EMA after backward,
  §4.4  metrics (mean NLL per token, bits per byte; for token corpora whose datamodule reports what it
        scores — ``eval_stats(split)`` with n_tokens / n_bytes / n_words — bits per UTF-8 byte and PG-19's
        word-level perplexity exp(total NLL / words)).

Optimization is manual because one batch holds several optimizer updates (one per window); the batch's
micro-batches are accumulated inside each window, so the EMA statistics cover the whole global batch.

Under DDP (docs/cluster.md; tests/lit/test_ddp.py shows a 2-rank run equals a 1-rank run of the same global
batch): Lightning prepares DDP's reducer at every ``manual_backward``, so each backward would all-reduce the
gradients; the micro-batches of a window run under ``no_sync`` but the last, whose backward all-reduces the
accumulated gradients. (DDP's own forward at the start of ``training_step`` also prepares the reducer, so the
step's first backward is reduced too: averaging an already averaged part again changes nothing.) DDP
averages gradients over ranks, so each rank's NLL is divided by
the window's tokens summed over all ranks and multiplied by the world size: the update is the global
token mean whatever the padding per rank. The quantizer all-reduces its EMA statistics once per update
(``VectorQuantizer.update``). Dropout is seeded per rank, or both ranks would drop the same units.
"""
from __future__ import annotations

import contextlib
import time
import warnings

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from ..models import build_lm
from ..optim import build_optimizer, schedule_end, warmup_cosine
from .metrics import TokenNLL, derived, text_metrics


# Evaluation metrics are summed over the ranks before they are logged (identical on every rank).
warnings.filterwarnings("ignore", message=r".*It is recommended to use `self.log\('(val|test)/.*sync_dist=True")


class LMModule(L.LightningModule):
    def __init__(self, model: dict, optim: dict, update_len: int, micro_batch_size: int | None = None,
                 eval_window: int | None = None, seed: int = 0, bytes_per_token: float = 1.0):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.model = build_lm(model)   # model.arch: transformer_vq (default) | longvq
        self.optim_cfg = DictConfig(optim) if not isinstance(optim, DictConfig) else optim
        self.update_len, self.micro_batch_size = update_len, micro_batch_size
        self.eval_window = eval_window or update_len
        self.seed = seed
        self.val_nll = TokenNLL(bytes_per_token)
        self.test_nll = TokenNLL(bytes_per_token)
        self.train_bytes_per_token = bytes_per_token
        self.tokens_seen = 0

    # ------------------------------------------------------------------ building from a composed config
    @staticmethod
    def validate_config(cfg: DictConfig) -> None:
        from ..config import validate_train
        validate_train(cfg)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "LMModule":
        return cls(model=OmegaConf.to_container(cfg.model, resolve=True),
                   optim=OmegaConf.to_container(cfg.optim, resolve=True),
                   update_len=cfg.update_len, micro_batch_size=cfg.get("micro_batch_size"),
                   eval_window=cfg.eval_window, seed=cfg.seed)

    # ------------------------------------------------------------------ optimizer and schedule
    def configure_optimizers(self):
        opt = build_optimizer(self.model, self.optim_cfg)
        total = self.trainer.max_steps if self.trainer and self.trainer.max_steps > 0 else self.optim_cfg.warmup_steps
        o = self.optim_cfg
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, warmup_cosine(o.warmup_steps, schedule_end(o, total), o.min_lr_ratio, o.get("warmup_from_zero", True)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ training
    def _nll(self, logits, targets, mask):
        nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
        return (nll * mask.flatten()).sum()

    def _sum_ranks(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the DDP ranks (itself in one process)."""
        if self.trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            t = t.clone()
            dist.all_reduce(t)
        return t

    def _no_sync(self, last: bool):
        """DDP's ``no_sync`` for every micro-batch of a window but the last (local gradient accumulation)."""
        ddp = self.trainer.strategy.model if self._trainer is not None else None
        if last or not isinstance(ddp, torch.nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return ddp.no_sync()

    def training_step(self, batch, batch_idx):
        opt, sched = self.optimizers(), self.lr_schedulers()
        inputs, targets, mask = batch["inputs"], batch["targets"], batch["mask"].float()
        B, T = inputs.shape
        W, mb = self.update_len, self.micro_batch_size or B
        world, rank = self.trainer.world_size, self.trainer.global_rank
        # Seeding per batch makes dropout reproducible across a resume; the LayerDrop and sinusoid
        # masks are a function of ``drop_seed`` and the global example index (§1.5), so every window of this
        # batch shares them and no two examples (micro-batches, ranks) share one. Residual and embedding dropout
        # draw from the global stream, seeded per rank (rank 0 keeps the single-process seed).
        batch_seed = self.seed * 1_000_003 + self.global_step
        t_start = time.perf_counter()
        torch.manual_seed(batch_seed + rank * 1_000_000_007)
        starts = list(range(0, B, mb))
        states = [None] * len(starts)
        c_beta = self.model.cfg.c_beta
        for w0 in range(0, T, W):
            n_tok = self._sum_ranks(mask[:, w0:w0 + W].sum()).clamp_min(1)   # tokens of the global batch
            nll_total, commit_total, stats = 0.0, 0.0, {}
            for m, b0 in enumerate(starts):
                rows, cols = slice(b0, b0 + mb), slice(w0, w0 + W)
                with self._no_sync(last=m == len(starts) - 1):
                    logits, aux = self.model(inputs[rows, cols], states[m], drop_seed=batch_seed,
                                             mask=mask[rows, cols] > 0, example_offset=rank * B + b0)
                    states[m] = aux.state.detach()
                    nll = self._nll(logits, targets[rows, cols], mask[rows, cols])
                    # This micro-batch's share of the global batch's real tokens (the commit loss is a mean over
                    # them); float64, since 8/24 in float32 is off by 3e-8.
                    frac = mask[rows, cols].sum().double() / n_tok
                    # DDP averages gradients over ranks: × world makes the update the global token mean.
                    self.manual_backward((nll / n_tok + c_beta * aux.commit_loss * frac) * world)
                nll_total += nll.detach()
                commit_total += aux.commit_loss.detach() * frac
                stats = aux.stats
            if self.optim_cfg.grad_clip:
                self.clip_gradients(opt, gradient_clip_val=self.optim_cfg.grad_clip, gradient_clip_algorithm="norm")
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            self.model.update_codebooks()
            self.tokens_seen += int(n_tok.item())
            # The logged loss and commitment are those of the global batch (every rank logs the same).
            sums = self._sum_ranks(torch.stack([torch.as_tensor(v, dtype=torch.float32, device=mask.device)
                                                for v in (nll_total, commit_total)]))
            self._log_train(sums[0] / n_tok, sums[1], stats, sched)
        self.log("train/tokens_per_s", float(mask.sum()) * world / (time.perf_counter() - t_start), on_step=True)
        return None

    def _log_train(self, loss, commit, stats, sched):
        logs = {"train/loss": loss, "train/bpb": derived(float(loss), self.train_bytes_per_token)["bpb"],
                "train/commit": commit, "train/lr": sched.get_last_lr()[0],
                "train/tokens_seen": float(self.tokens_seen)}
        logs.update({f"vq/{k}": v for k, v in stats.items()})
        self.log_dict(logs, prog_bar=False, on_step=True, on_epoch=False)
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=False, logger=False)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def score(self, inputs, targets, mask, state=None):
        """Summed NLL and token count of whole sequences, processed in windows with the state carried."""
        total, count = torch.zeros((), dtype=torch.float64, device=inputs.device), mask.sum()
        for w0 in range(0, inputs.shape[1], self.eval_window):
            cols = slice(w0, w0 + self.eval_window)
            if not mask[:, cols].any():
                break   # only padding from here on (shorter books in a batch of whole books)
            logits, aux = self.model(inputs[:, cols], state)
            state = aux.state
            total += self._nll(logits, targets[:, cols], mask[:, cols].float()).double()
        return total, count, state

    def validation_step(self, batch, batch_idx):
        total, count, _ = self.score(batch["inputs"], batch["targets"], batch["mask"])
        self.val_nll.update(total, count)

    def on_validation_epoch_end(self):
        self._log_eval("val", self.val_nll)

    def test_step(self, batch, batch_idx):
        total, count, _ = self.score(batch["inputs"], batch["targets"], batch["mask"])
        self.test_nll.update(total, count)

    def on_test_epoch_end(self):
        self._log_eval("test", self.test_nll)

    def _datamodule(self):
        return getattr(self._trainer, "datamodule", None) if self._trainer is not None else None

    def on_fit_start(self):
        split_stats = getattr(self._datamodule(), "split_stats", None)
        if split_stats is not None:   # token corpora: train/bpb in bits per UTF-8 byte of the text
            train = split_stats("train")
            self.train_bytes_per_token = train["n_bytes"] / max(train["n_tokens"], 1)

    def _log_eval(self, stage: str, metric: TokenNLL):
        with metric.sync_context():   # sums over the ranks' shards (a no-op in one process)
            total, count = metric.sum_nll.clone(), metric.count.clone()
        mean = total / count.clamp_min(1)
        d = derived(float(mean), metric.bytes_per_token)
        eval_stats = getattr(self._datamodule(), "eval_stats", None)
        text = eval_stats("validation" if stage == "val" else "test") if eval_stats is not None else None
        # Token corpora: bytes and words of exactly the scored text. Only when the ranks together scored all
        # of it (not under limit_val_batches, whose counts would not match).
        if text and int(count) == text["n_tokens"]:
            d.update(text_metrics(float(mean) * text["n_tokens"], text["n_tokens"], text["n_bytes"],
                                  text["n_words"]))
            self.log(f"{stage}/word_ppl", torch.tensor(d["word_ppl"]), prog_bar=True)
        self.log(f"{stage}/loss", mean.float(), prog_bar=True, sync_dist=False)
        self.log(f"{stage}/bpb", torch.tensor(d["bpb"]), prog_bar=True)
        self.log(f"{stage}/ppl", torch.tensor(d["ppl"]))
        self.log(f"{stage}/tokens", count.float())
        metric.reset()

    # ------------------------------------------------------------------ checkpoint extras
    def on_save_checkpoint(self, checkpoint):
        checkpoint["tokens_seen"] = self.tokens_seen

    def on_load_checkpoint(self, checkpoint):
        self.tokens_seen = checkpoint.get("tokens_seen", 0)

