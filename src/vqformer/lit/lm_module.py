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
"""
from __future__ import annotations

import time

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from ..models import build_lm
from ..optim import build_optimizer, schedule_end, warmup_cosine
from .metrics import TokenNLL, derived, text_metrics


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

    def training_step(self, batch, batch_idx):
        opt, sched = self.optimizers(), self.lr_schedulers()
        inputs, targets, mask = batch["inputs"], batch["targets"], batch["mask"].float()
        B, T = inputs.shape
        W, mb = self.update_len, self.micro_batch_size or B
        # Seeding per batch makes dropout reproducible across a resume; the LayerDrop and sinusoid
        # masks are a function of ``drop_seed`` and the global example index, so every window of this batch
        # shares them and no two examples (micro-batches, ranks) share one (§1.5).
        batch_seed = self.seed * 1_000_003 + self.global_step
        t_start = time.perf_counter()
        torch.manual_seed(batch_seed)
        states = [None] * ((B + mb - 1) // mb)
        c_beta = self.model.cfg.c_beta
        for w0 in range(0, T, W):
            n_tok = mask[:, w0:w0 + W].sum().clamp_min(1)
            nll_total, commit_total, stats = 0.0, 0.0, {}
            for m, b0 in enumerate(range(0, B, mb)):
                rows, cols = slice(b0, b0 + mb), slice(w0, w0 + W)
                logits, aux = self.model(inputs[rows, cols], states[m], drop_seed=batch_seed,
                                         mask=mask[rows, cols] > 0, example_offset=self.global_rank * B + b0)
                states[m] = aux.state.detach()
                nll = self._nll(logits, targets[rows, cols], mask[rows, cols])
                frac = mask[rows, cols].sum().double() / n_tok   # real tokens: the commit loss is a mean over them
                self.manual_backward(nll / n_tok + c_beta * aux.commit_loss * frac)
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
            self._log_train(nll_total / n_tok, commit_total, stats, sched)
        self.log("train/tokens_per_s", float(mask.sum()) / (time.perf_counter() - t_start), on_step=True)
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
        mean = metric.compute()
        d = derived(float(mean), metric.bytes_per_token)
        eval_stats = getattr(self._datamodule(), "eval_stats", None)
        text = eval_stats("validation" if stage == "val" else "test") if eval_stats is not None else None
        # Token corpora: bytes and words of exactly the scored text. Only when this process scored all of it
        # (not under limit_val_batches or a distributed sampler, whose counts would not match).
        if text and int(metric.count) == text["n_tokens"]:
            d.update(text_metrics(float(mean) * text["n_tokens"], text["n_tokens"], text["n_bytes"],
                                  text["n_words"]))
            self.log(f"{stage}/word_ppl", torch.tensor(d["word_ppl"]), prog_bar=True)
        self.log(f"{stage}/loss", mean.float(), prog_bar=True, sync_dist=False)
        self.log(f"{stage}/bpb", torch.tensor(d["bpb"]), prog_bar=True)
        self.log(f"{stage}/ppl", torch.tensor(d["ppl"]))
        self.log(f"{stage}/tokens", metric.count.float())
        metric.reset()

    # ------------------------------------------------------------------ checkpoint extras
    def on_save_checkpoint(self, checkpoint):
        checkpoint["tokens_seen"] = self.tokens_seen

    def on_load_checkpoint(self, checkpoint):
        self.tokens_seen = checkpoint.get("tokens_seen", 0)

