"""The Transformer-VQ decoder language model and its typed configuration.

Spec: ``docs/transformer_vq.md``
  model  N(0,1) embedding, optional absolute sinusoid scaled by a scalar initialised to 0, ``n_layer`` layers
         (shga: two GAUs; mqa/mha: attention + MLP), optional final RMSNorm, tied or untied output with bias,
         logits × ``e_scale``; dropouts, LayerDrop as a per-example mask on each residual branch rescaled by
         1/(1-p); the commit loss summed over attention units; EMA codebook update via ``update_codebooks()``.
``docs/ovq.md`` (hybrids): ``layer_pattern`` (layer i uses ``layer_pattern[i % len]``) builds the SWA hybrids
``sw-ovq``, ``sw-vq`` and ``sw-nope``.

Config layout. The model's own knobs are flat and keep the official names (``n_code``, ``block_len``,
``agg_cache``, ...: the codebook and block config groups set them and every mixer shares the block length,
which sets the window granularity of training). ``attn_type`` (the official knob name, kept also by LongVQ
and the result tables) and ``layer_pattern`` pick mixers by name from the registry ``vqformer.nn.mixers``;
``mixer.<name>`` holds that mixer's own typed config (``model.mixer.ovq.n_max``, ``model.mixer.swa.window``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from ..nn.attention import HEAD_TYPES, MLP, AttentionUnit
from ..nn.dropout import keep_mask
from ..nn.functional import KERNELS
from ..nn.linear import dense
from ..nn.mixers import MIXERS, MixerConfig, check_types, mixer_class
from ..nn.norm import RMSNorm
from ..nn.position import sin_emb

# Flat keys of earlier versions and where they live now (named in the error for an old config).
RENAMED = {"swa_window": "mixer.swa.window", "global_nope": "mixer.full.nope and mixer.vq.nope",
           **{f"ovq_{k}": f"mixer.ovq.{k}" for k in ("n_max", "chunk_len", "growth", "growth_scale", "seeding", "step",
                                                     "step_const", "read", "local", "beta", "beta_learned")}}


@dataclass
class TransformerVQConfig:
    """Field names follow the official knobs (``scripts/lm_*.sh``); defaults are the enwik8 model."""
    vocab_size: int = 259
    d_model: int = 768
    d_k: int = 128
    d_v: int = 1536
    d_ff: int | None = None          # mqa/mha MLP width; 0 (official) or None: 5·d_model (mqa), 4·d_model (mha)
    n_layer: int = 24
    head_type: str = "shga"
    n_code: int = 512
    block_len: int = 512
    agg_cache: bool = True
    grad_thru_cache: bool = True
    c_beta: float = 1e-4
    c_gamma: float = 0.99
    p_dropsin: float = 0.0
    p_dropres: float = 0.0
    p_droplyr: float = 0.0
    p_dropemb: float = 0.0
    e_tie: bool = False
    e_preln: bool = False
    e_scale: float = 1.0
    pe_abs: bool = False
    pe_lam: float = 1e5
    # Implementation knobs (same numbers, different speed / memory)
    kernel: str = "chunked"          # vq_attention over whole blocks: chunked (fast) | eager (the definition) | flex (fused, GPU)
    compile: bool = False            # torch.compile each attention unit
    remat: bool = False              # recompute each residual branch in backward (activation checkpointing)
    # Mixers: which one each attention unit runs, and each one's own knobs
    attn_type: str = "vq"            # a registered mixer: vq | full | swa | ovq | ...
    layer_pattern: list[str] | None = None   # e.g. [swa, ovq]: layer i uses entry i % len; null: attn_type
    mixer: dict[str, Any] = field(default_factory=dict)   # name -> that mixer's config (dict or dataclass)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def bad(name, allowed):
            raise ValueError(f"model.{name}={getattr(self, name)!r} is invalid: {allowed}")
        if isinstance(self.layer_pattern, Sequence) and not isinstance(self.layer_pattern, str):
            self.layer_pattern = list(self.layer_pattern)   # tuples and OmegaConf nodes too
        if isinstance(self.mixer, Mapping):
            self.mixer = dict(self.mixer)
        check_types(self, "model.")
        for name in ("vocab_size", "d_model", "d_k", "d_v", "n_layer", "n_code", "block_len"):
            if getattr(self, name) < 1:
                bad(name, "must be a positive integer")
        if self.head_type not in HEAD_TYPES:
            bad("head_type", f"choose one of {list(HEAD_TYPES)}")
        mixer_class(self.attn_type)
        if self.layer_pattern is not None:
            if not self.layer_pattern or any(a not in MIXERS for a in self.layer_pattern):
                bad("layer_pattern", f"must be null or a non-empty list of {sorted(MIXERS)}")
        self.mixer = self._typed_mixers()
        if self.kernel not in KERNELS:
            bad("kernel", f"choose one of {list(KERNELS)}")
        if self.head_type != "shga" and self.d_model % self.d_k:
            bad("d_k", f"must divide d_model={self.d_model} for head_type={self.head_type}")
        if self.d_ff is not None and self.d_ff < 0:
            bad("d_ff", "must be >= 0 or null (0 and null: the head type's width; shga has no MLP)")
        if self.d_model % 2:
            bad("d_model", "must be even (sinusoid tables)")
        for name in ("p_dropsin", "p_dropres", "p_droplyr", "p_dropemb"):
            if not 0.0 <= getattr(self, name) < 1.0:
                bad(name, "must be in [0, 1)")
        if not 0.0 <= self.c_gamma < 1.0:
            bad("c_gamma", "must be in [0, 1)")
        if self.c_beta < 0:
            bad("c_beta", "must be >= 0")

    def _typed_mixers(self) -> dict[str, MixerConfig]:
        """``mixer`` as {name: config dataclass}, with defaults for every mixer in use, each one validated."""
        typed = {}
        for name, value in self.mixer.items():
            key = f"model.mixer.{name}"
            if name not in MIXERS:
                raise ValueError(f"{key}: no mixer named {name!r} is registered; registered: {sorted(MIXERS)}")
            cls = MIXERS[name].config_class
            if value is None:
                value = cls()
            elif isinstance(value, Mapping):
                known = {f.name for f in fields(cls)}
                if set(value) - known:
                    raise ValueError(f"{key}: unknown knob(s) {sorted(set(value) - known)}; known: {sorted(known)}")
                value = cls(**value)
            elif not isinstance(value, cls):
                raise ValueError(f"{key}={value!r} is invalid: must be a mapping of {cls.__name__} knobs")
            typed[name] = value
        for name in self.layer_types():
            typed.setdefault(name, mixer_class(name).config_class())
        for name, value in typed.items():
            value.validate(f"model.mixer.{name}")
        return typed

    def mixer_config(self, name: str) -> MixerConfig:
        """The config of mixer ``name`` (its defaults when the run config does not set it)."""
        return self.mixer.get(name) or mixer_class(name).config_class()

    def check_sequence_len(self, name: str, length: int) -> None:
        """Raise if ``block_len`` does not divide a length the model will be run on."""
        if length < 1 or length % self.block_len:
            raise ValueError(f"model.block_len={self.block_len} must divide {name}={length}")

    def layer_types(self) -> list[str]:
        """The mixer of each layer."""
        pattern = self.layer_pattern or [self.attn_type]
        return [pattern[i % len(pattern)] for i in range(self.n_layer)]

    @property
    def ffn_width(self) -> int:
        # The official scripts pass --d_ff=0: unused by shga (its second branch is a GAU) and, in the
        # ``optimized`` branch, mqa/mha derive the width from the head type. Hence 0 means that default.
        return self.d_ff or (5 if self.head_type == "mqa" else 4) * self.d_model


@dataclass
class DecoderState:
    """Per-unit attention states and the absolute position, carried across windows and sampling steps."""
    pos: int = 0
    units: list = field(default_factory=list)

    def detach(self):
        return DecoderState(self.pos, [None if s is None else s.detach() for s in self.units])


@dataclass
class Aux:
    commit_loss: Tensor   # summed over attention units (weighted by c_beta in the training loss)
    stats: dict           # codebook health averaged over units
    state: DecoderState


def _checkpointed(branch: nn.Module, *args):
    """Run a residual branch without keeping its activations; backward recomputes them (same dropout:
    the RNG state is restored). The recomputation must not count the keys in the EMA codebook statistics
    a second time, so the quantizer collects only on the first call."""
    calls = 0
    qz = getattr(branch, "quantizer", None)

    def once(*a):
        nonlocal calls
        calls += 1
        if qz is None or calls == 1:
            return branch(*a)
        qz.collect = False
        try:
            return branch(*a)
        finally:
            qz.collect = True
    return torch.utils.checkpoint.checkpoint(once, *args, use_reentrant=False)


class TransformerVQ(nn.Module):
    def __init__(self, cfg: TransformerVQConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.d_model
        self.embed = nn.Embedding(cfg.vocab_size, D)
        nn.init.normal_(self.embed.weight, 0.0, 1.0)
        self.pe_scale = nn.Parameter(torch.zeros(())) if cfg.pe_abs else None
        # One flat list of residual branches: (GAU, GAU) per layer for shga, (attention, MLP) otherwise.
        self.branches = nn.ModuleList()
        for kind in cfg.layer_types():
            second = AttentionUnit(cfg, kind) if cfg.head_type == "shga" else MLP(D, cfg.ffn_width)
            self.branches.extend([AttentionUnit(cfg, kind), second])
        self.units = [b for b in self.branches if isinstance(b, AttentionUnit)]
        for u in self.units if cfg.compile else []:
            u.compile()
        self.final_norm = RMSNorm(D) if cfg.e_preln else None
        self.out = None if cfg.e_tie else dense(D, cfg.vocab_size, bias=True)
        self.out_bias = nn.Parameter(torch.zeros(cfg.vocab_size)) if cfg.e_tie else None

    def empty_state(self) -> DecoderState:
        """A fresh state that accepts pieces of any length (sampling); ``state=None`` requires whole blocks."""
        return DecoderState(0, [None] * len(self.units))

    def state_bytes(self, length: int) -> int:
        """Bytes of attention state kept per sequence after ``length`` tokens, summed over units (fp32)."""
        return sum(u.state_bytes(length) for u in self.units)

    def quantizers(self):
        return [u.quantizer for u in self.units if u.quantizer is not None]

    @torch.no_grad()
    def update_codebooks(self) -> None:
        """Apply the EMA codebook step to the statistics of the current optimizer step (after backward)."""
        for qz in self.quantizers():
            qz.update()

    def drop_masks(self, B: int, pos: int, T: int, drop_seed: int, example_offset: int = 0):
        """LayerDrop [branches, B] and one sinusoid-dropout mask [B, n_u, D] per attention unit (None where
        off), rescaled by 1/(1-p) (§1.5). Every entry is a function of (``drop_seed``, mask, global example
        index = ``example_offset`` + row), so all update windows of one batch share them and a micro-batch
        gets exactly the rows of the whole batch's masks."""
        cfg = self.cfg
        ex = torch.arange(example_offset, example_offset + B, device=self.embed.weight.device)
        layer = None
        if cfg.p_droplyr > 0:
            layer = keep_mask(drop_seed, 0, ex, (len(self.branches),), cfg.p_droplyr).T
        sins = [None] * len(self.units)
        if cfg.p_dropsin > 0:
            for i, u in enumerate(self.units):   # each GAU its own mask, as the official per-module RNG does
                n = u.mixer.n_distances(pos, T)
                if n:
                    sins[i] = keep_mask(drop_seed, 1 + i, ex, (n, cfg.d_model), cfg.p_dropsin)
        return layer, sins

    def forward(self, tokens: Tensor, state: DecoderState | None = None, drop_seed: int | None = None,
                mask: Tensor | None = None, example_offset: int = 0) -> tuple[Tensor, Aux]:
        """tokens [B,T] -> logits [B,T,V] and the auxiliary record (commit loss, statistics, new state).

        ``mask`` [B,T] (True = a real token) keeps pads out of every quantizer's commit loss and EMA statistics.
        ``drop_seed`` and ``example_offset`` fix the LayerDrop and sinusoid masks (``drop_masks``) in training;
        without a seed they are drawn from the global RNG.
        """
        cfg = self.cfg
        B, T = tokens.shape
        if state is None:
            cfg.check_sequence_len("the input length", T)
            state = self.empty_state()
        layer_mask, sin_masks = None, [None] * len(self.units)
        if self.training and (cfg.p_droplyr > 0 or cfg.p_dropsin > 0):
            if drop_seed is None:
                drop_seed = int(torch.randint(0, 2 ** 62, ()).item())
            layer_mask, sin_masks = self.drop_masks(B, state.pos, T, drop_seed, example_offset)

        x = self.embed(tokens)
        if self.pe_scale is not None:
            pos = torch.arange(state.pos, state.pos + T, device=tokens.device)
            x = x + self.pe_scale * sin_emb(pos, cfg.d_model, cfg.pe_lam).to(x.dtype)
        x = F.dropout(x, cfg.p_dropemb, self.training)

        commit, stats, new_units = x.new_zeros(()), [], []
        run = _checkpointed if cfg.remat and torch.is_grad_enabled() else (lambda branch, *a: branch(*a))
        for i, branch in enumerate(self.branches):
            if isinstance(branch, AttentionUnit):
                u = len(new_units)
                y, c, s, st = run(branch, x, state.units[u], sin_masks[u], mask)
                commit = commit + c
                stats.append(s)
                new_units.append(st)
            else:
                y = run(branch, x)
            if layer_mask is not None:
                y = y * layer_mask[i].to(y.dtype)[:, None, None]
            x = x + y

        if self.final_norm is not None:
            x = self.final_norm(x)
        logits = (x @ self.embed.weight.T + self.out_bias) if cfg.e_tie else self.out(x)
        logits = logits * cfg.e_scale
        stats = {k: torch.stack([s[k] for s in stats]).mean() for k in (stats[0] if stats and stats[0] else {})}
        return logits, Aux(commit, stats, DecoderState(state.pos + T, new_units))
