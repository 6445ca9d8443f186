"""LongVQ models: the bidirectional encoder classifier (LRA) and the causal decoder LM, with their config.

Spec: ``docs/longvq.md``
  §1.2(g)  token embedding N(0, d^{-1/2}) or the real-number embedding ``x·w + b`` (pixels); no absolute
           positions; mean pooling over real positions; head ``Linear → GELU → Linear(no bias)``; retrieval
           encodes both documents with the shared encoder and classifies ``[rep(doc1); rep(doc2)]``,
  §1.2(e)  stack of blocks with a final norm when pre-norm,
  §1.6     every switch is a config field; validation names ``model.<field>``.

Inputs are right-padded to a multiple of ``block_len`` inside the model (pads masked out), so data lengths
need not divide it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.ema import SSM_TYPES
from ..nn.longvq import NORMS, BlockState, LongVQBlock, SequenceNorm, linear
from ..nn.vq_bidirectional import ATTN_FNS, WINDOWS

ATTN_TYPES = ("vq", "chunk", "full")
EMBEDS = ("token", "real")


@dataclass
class LongVQConfig:
    """Defaults: MEGA's ListOps row of Table 8 (§2.2) with a codebook of 256 and a window of 128."""
    vocab_size: int = 16
    embed: str = "token"            # token | real (pixel values: e = x·W + b)
    in_channels: int = 1            # embed=real: values per position (3 for sCIFAR)
    n_classes: int = 10
    retrieval: bool = False         # two documents per example, shared encoder, [u; v] head
    d_model: int = 80
    d_ffn: int = 160
    z_dim: int = 64
    v_dim: int = 160
    n_dim: int = 16                 # EMA expansion h (S4D: n_dim/2 complex modes)
    n_layer: int = 6
    ssm: str = "ema"                # ema | s4d | none
    bidirectional: bool = True      # SSM direction in the encoder (the decoder is always causal)
    truncation: int | None = None   # SSM kernel length (None: the sequence length)
    attn_type: str = "vq"           # vq (LongVQ) | chunk (MEGA-chunk) | full (MEGA, quadratic)
    attn_fn: str = "softmax"        # softmax | laplace | relu2
    window: str = "chunk"           # chunk | band: where the local bias applies
    local_bias: str = "simple"      # simple | none
    n_code: int = 256
    block_len: int = 128            # window / chunk length c
    max_len: int = 2048             # attn_type=full: longest sequence (size of its bias table)
    c_beta: float = 1e-4
    c_gamma: float = 0.99
    grad_thru_cache: bool = True
    norm: str = "layernorm"         # layernorm | scalenorm | rmsnorm | batchnorm
    prenorm: bool = False
    dropout: float = 0.1
    head_dim: int | None = None     # classifier hidden width (None: d_model)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def bad(name, allowed):
            raise ValueError(f"model.{name}={getattr(self, name)!r} is invalid: {allowed}")
        for name in ("vocab_size", "in_channels", "n_classes", "d_model", "d_ffn", "z_dim", "v_dim", "n_dim", "n_layer",
                     "n_code", "block_len", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                bad(name, "must be a positive integer")
        for name, allowed in (("embed", EMBEDS), ("ssm", SSM_TYPES), ("attn_type", ATTN_TYPES),
                              ("attn_fn", ATTN_FNS), ("window", WINDOWS), ("local_bias", ("simple", "none")),
                              ("norm", NORMS)):
            if getattr(self, name) not in allowed:
                bad(name, f"choose one of {list(allowed)}")
        for name in ("retrieval", "bidirectional", "grad_thru_cache", "prenorm"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "must be true or false")
        if self.truncation is not None and (not isinstance(self.truncation, int) or self.truncation < 1):
            bad("truncation", "must be a positive integer or null")
        if self.head_dim is not None and (not isinstance(self.head_dim, int) or self.head_dim < 1):
            bad("head_dim", "must be a positive integer or null")
        if not 0.0 <= self.dropout < 1.0:
            bad("dropout", "must be in [0, 1)")
        if not 0.0 <= self.c_gamma < 1.0:
            bad("c_gamma", "must be in [0, 1)")
        if self.c_beta < 0:
            bad("c_beta", "must be >= 0")
        if self.ssm == "s4d" and self.n_dim < 2:
            bad("n_dim", "must be >= 2 for ssm=s4d (n_dim/2 complex modes)")

    def validate_causal(self) -> None:
        """The decoder runs the Transformer-VQ recurrence: softmax, no chunk-only attention."""
        if self.attn_fn != "softmax":
            raise ValueError(f"model.attn_fn={self.attn_fn!r} is invalid for the causal decoder: only softmax "
                             "(the compressive cache needs a normalized attention)")
        if self.attn_type == "chunk":
            raise ValueError("model.attn_type='chunk' is invalid for the causal decoder: choose vq or full")
        if self.norm == "batchnorm":
            raise ValueError("model.norm='batchnorm' is invalid for the causal decoder (it mixes positions)")

    @property
    def carries_state(self) -> bool:
        """Whether the causal decoder can continue a sequence across calls (the Transformer-VQ recurrence and
        the untruncated causal SSM; MEGA's full attention and a truncated kernel cannot)."""
        return self.attn_type == "vq" and self.truncation is None

    def check_sequence_len(self, name: str, length: int) -> None:
        """Raise if ``block_len`` does not divide a window length the decoder carries its state across."""
        if length < 1 or length % self.block_len:
            raise ValueError(f"model.block_len={self.block_len} must divide {name}={length}")

    def padded_len(self, length: int) -> int:
        if self.attn_type == "full":
            if length > self.max_len:
                raise ValueError(f"model.max_len={self.max_len} is shorter than the input length {length}")
            return length
        return -(-length // self.block_len) * self.block_len


def _pad_to(x: Tensor, mask: Tensor, length: int) -> tuple[Tensor, Tensor]:
    n = length - x.shape[1]
    if n == 0:
        return x, mask
    pad = (0, 0, 0, n) if x.dim() == 3 else (0, n)                     # [B,T,C] pixels pad along T
    return F.pad(x, pad), F.pad(mask, (0, n), value=False)


class _Stack(nn.Module):
    """Embedding and blocks shared by the encoder and the decoder."""

    def __init__(self, cfg: LongVQConfig, causal: bool):
        super().__init__()
        self.cfg, D = cfg, cfg.d_model
        if cfg.embed == "token":
            self.embed = nn.Embedding(cfg.vocab_size, D)
            nn.init.normal_(self.embed.weight, 0.0, D ** -0.5)
        else:
            self.embed_w = nn.Parameter(torch.randn(cfg.in_channels, D))
            self.embed_b = nn.Parameter(torch.randn(D) * 0.1)
        self.blocks = nn.ModuleList(LongVQBlock(cfg, causal) for _ in range(cfg.n_layer))
        self.final_norm = SequenceNorm(cfg.norm, D) if cfg.prenorm else None

    def quantizers(self):
        return [b.mixer.quantizer for b in self.blocks if b.mixer.quantizer is not None]

    @torch.no_grad()
    def update_codebooks(self) -> None:
        """The EMA codebook step for the statistics accumulated since the last one (after backward)."""
        for qz in self.quantizers():
            qz.update()

    def encode(self, x: Tensor, mask: Tensor, reference: bool = False):
        """x [B,T] tokens (long) or pixels [B,T] / [B,T,C] (float), mask [B,T] -> (hidden [B,T',D], mask [B,T'], commit, stats)."""
        x, mask = _pad_to(x, mask, self.cfg.padded_len(x.shape[1]))
        if self.cfg.embed == "token":
            h = self.embed(x)
        else:
            x = x[..., None] if x.dim() == 2 else x                     # [B,T] scalars or [B,T,C]
            h = x.to(self.embed_w.dtype) @ self.embed_w + self.embed_b
        h = F.dropout(h * mask[..., None].to(h.dtype), self.cfg.dropout, self.training)
        commit, stats = h.new_zeros(()), []
        for block in self.blocks:
            h, c, s = block(h, mask, reference)
            commit, stats = commit + c, stats + ([s] if s else [])
        if self.final_norm is not None:
            h = self.final_norm(h)
        stats = {k: torch.stack([s[k] for s in stats]).mean() for k in (stats[0] if stats else {})}
        return h, mask, commit, stats


class LongVQClassifier(_Stack):
    """Bidirectional LongVQ encoder + mean pooling + MEGA's classification head."""

    def __init__(self, cfg: LongVQConfig):
        super().__init__(cfg, causal=False)
        D, hd = cfg.d_model, cfg.head_dim or cfg.d_model
        self.head_in = linear(2 * D if cfg.retrieval else D, hd)
        self.head_out = linear(hd, cfg.n_classes, bias=False)

    def pooled(self, x: Tensor, mask: Tensor, reference: bool = False):
        h, mask, commit, stats = self.encode(x, mask, reference)
        m = mask[..., None].to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1), commit, stats

    def forward(self, x: Tensor, mask: Tensor, reference: bool = False):
        """x [B,T] (or [B,2,T] for retrieval) -> (logits [B,C], commit loss, stats)."""
        if self.cfg.retrieval:
            B = x.shape[0]
            rep, commit, stats = self.pooled(x.flatten(0, 1), mask.flatten(0, 1), reference)
            rep = rep.view(B, 2 * rep.shape[-1])
        else:
            rep, commit, stats = self.pooled(x, mask, reference)
        return self.head_out(F.gelu(F.dropout(self.head_in(rep), self.cfg.dropout, self.training))), commit, stats


class LongVQDecoder(_Stack):
    """Causal LongVQ LM: unidirectional SSM and the Transformer-VQ recurrence in every block."""

    def __init__(self, cfg: LongVQConfig):
        cfg.validate_causal()
        super().__init__(cfg, causal=True)
        self.out = linear(cfg.d_model, cfg.vocab_size)

    def forward(self, tokens: Tensor, mask: Tensor | None = None, reference: bool = False):
        """tokens [B,T] -> (logits [B,T,V], commit loss, stats)."""
        T = tokens.shape[1]
        mask = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask
        h, _, commit, stats = self.encode(tokens, mask, reference)
        return self.out(h[:, :T]), commit, stats

    def empty_states(self) -> list[BlockState]:
        return [BlockState() for _ in self.blocks]

    def forward_carry(self, tokens: Tensor, mask: Tensor | None, states: list[BlockState]):
        """One window of a sequence continuing from ``states`` (``empty_states()`` at its start): -> (logits,
        commit loss, stats, new states). No padding: the window's every token enters the carried state.
        Consecutive windows equal one ``forward`` on their concatenation."""
        if not self.cfg.carries_state:
            raise ValueError("model.attn_type=full or a model.truncation cannot carry a state between calls")
        mask = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask
        h = F.dropout(self.embed(tokens) * mask[..., None].to(self.embed.weight.dtype), self.cfg.dropout,
                      self.training)
        commit, stats, new = h.new_zeros(()), [], []
        for block, state in zip(self.blocks, states):
            h, c, s, state = block.carry(h, mask, state)
            commit, stats, new = commit + c, stats + ([s] if s else []), new + [state]
        if self.final_norm is not None:
            h = self.final_norm(h)
        stats = {k: torch.stack([s[k] for s in stats]).mean() for k in (stats[0] if stats else {})}
        return self.out(h), commit, stats, new


__all__ = ["ATTN_TYPES", "LongVQClassifier", "LongVQConfig", "LongVQDecoder"]
