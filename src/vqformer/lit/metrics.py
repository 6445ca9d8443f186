"""Token-weighted negative log-likelihood, from which loss, bits per byte and perplexity are derived.

Spec: ``shared/research/transformer_vq.md`` §4.4 (mean NLL in nats over non-padding tokens; bpb = nats/ln 2
for byte-level data) and ``repo_style_anchors.md`` §3 (float64 sums reduced by summation across ranks).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric


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


def derived(mean_nll: float, bytes_per_token: float = 1.0) -> dict[str, float]:
    """loss (nats/token), bits per byte and token perplexity from a mean NLL."""
    return {"loss": mean_nll, "bpb": mean_nll / (math.log(2) * bytes_per_token), "ppl": math.exp(min(mean_nll, 700))}
