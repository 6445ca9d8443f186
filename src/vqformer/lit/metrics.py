"""Token-weighted negative log-likelihood, from which loss, bits per byte and perplexity are derived.

Spec: ``docs/transformer_vq.md`` §4.4 (mean NLL in nats over non-padding tokens; bpb = nats/ln 2
for byte-level data; PG-19's word-level perplexity = exp(total NLL / number of words)) and ``docs/conventions.md`` §4 (float64 sums reduced by summation across ranks).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric


IGNORE_LABEL = -100   # label of the padding examples of a rank's evaluation shard (F.cross_entropy's default)


class TokenNLL(Metric):
    """Sums of NLL (nats) and token counts; ``compute()`` is the mean NLL per token."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, bytes_per_token: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.bytes_per_token = bytes_per_token
        self.add_state("sum_nll", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, nll_sum: Tensor, n_tokens: Tensor | int) -> None:
        self.sum_nll += nll_sum.detach().double()
        self.count += torch.as_tensor(n_tokens, dtype=torch.float64, device=self.count.device)

    def compute(self) -> Tensor:
        return self.sum_nll / self.count.clamp_min(1)


class SegmentRecall(Metric):
    """Per test segment: summed per-example accuracy and example count; summed NLL and scored positions.

    Examples with no scored position (padding of a rank's evaluation shard) are not counted.
    """

    full_state_update = False

    def __init__(self, n_segments: int, **kwargs):
        super().__init__(**kwargs)
        self.n_segments = n_segments
        for name in ("acc_sum", "examples"):
            self.add_state(name, torch.zeros(n_segments, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("sum_nll", "count"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, segment: int, correct: Tensor, positions: Tensor, nll_sum: Tensor) -> None:
        """``correct`` and ``positions`` per example of one batch of ``segment``."""
        if not 0 <= segment < self.n_segments:
            raise ValueError(f"segment {segment} out of range [0, {self.n_segments})")
        scored = positions > 0
        self.acc_sum[segment] += (correct[scored] / positions[scored]).double().sum()
        self.examples[segment] += scored.sum()
        self.sum_nll += nll_sum.detach().double()
        self.count += positions.double().sum()

    def compute(self) -> dict[str, Tensor]:
        """Accuracy per segment (NaN where it has no examples) and the mean NLL per scored position."""
        return {"acc": self.acc_sum / self.examples, "loss": self.sum_nll / self.count.clamp_min(1)}


def derived(mean_nll: float, bytes_per_token: float = 1.0) -> dict[str, float]:
    """loss (nats/token), bits per byte and token perplexity from a mean NLL."""
    return {"loss": mean_nll, "bpb": mean_nll / (math.log(2) * bytes_per_token), "ppl": math.exp(min(mean_nll, 700))}


def word_perplexity(total_nll: float, n_words: int) -> float:
    """PG-19's word-level perplexity: exp(total NLL in nats over the scored text / its whitespace-separated words)."""
    if n_words < 1:
        raise ValueError(f"word-level perplexity needs at least one word, got n_words={n_words}")
    return math.exp(min(total_nll / n_words, 700))


def text_metrics(total_nll: float, n_tokens: int, n_bytes: int, n_words: int) -> dict[str, float]:
    """Token loss (nats/token), bits per UTF-8 byte and word-level perplexity of one scored text."""
    return {"loss": total_nll / max(n_tokens, 1), "bpb": total_nll / (math.log(2) * max(n_bytes, 1)),
            "word_ppl": word_perplexity(total_nll, n_words)}
