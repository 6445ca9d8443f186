"""The language models ``task=lm`` trains, picked by ``model.arch``: ``transformer_vq`` (the default when the
field is absent) or ``longvq`` (the causal LongVQ decoder, docs/longvq.md §1.4 "causal decoder").

Every LM has the decoder interface the LM module drives: ``forward(tokens, state, drop_seed=, mask=,
example_offset=) -> (logits, Aux)``, ``update_codebooks()``, ``cfg.c_beta``, and its config says whether
the model carries a state between calls (``carries_state``); a model that does not is trained and
evaluated with one window per sequence (``update_len = eval_window = sequence_len``).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from torch import Tensor

from .longvq import LongVQConfig, LongVQDecoder
from .transformer_vq import Aux, DecoderState, TransformerVQ, TransformerVQConfig


@dataclass
class NoState:
    """What a stateless LM returns as its state: only the position, so that continuing from it fails loudly
    instead of silently dropping the context."""
    pos: int = 0

    def detach(self):
        return self


class LongVQLM(LongVQDecoder):
    """The causal LongVQ decoder behind the LM interface.

    It carries no state across calls: its SSM is a convolution over the whole input (FFT) and its attention
    call starts from an empty cache, so every sequence is one call. The masks of ``drop_seed`` (LayerDrop,
    sinusoid dropout) do not exist in this model; its dropout is MEGA's per-element dropout.
    """

    def forward(self, tokens: Tensor, state: DecoderState | None = None, drop_seed: int | None = None,
                mask: Tensor | None = None, example_offset: int = 0, reference: bool = False):
        """tokens [B,T] -> (logits [B,T,V], Aux); ``mask`` [B,T] (True = real token) keeps pads out of the
        SSM input, the commit loss and the EMA statistics. ``reference``: the O(T²) attention definition."""
        if state is not None and getattr(state, "pos", 1) != 0:
            raise ValueError("model.arch=longvq carries no state between calls: train and evaluate with "
                             "update_len = eval_window = sequence_len (one call per sequence)")
        logits, commit, stats = super().forward(tokens, mask, reference)
        return logits, Aux(commit, stats, NoState(tokens.shape[1]))

    def empty_state(self) -> NoState:
        return NoState()


LM_ARCHS = {"transformer_vq": (TransformerVQConfig, TransformerVQ), "longvq": (LongVQConfig, LongVQLM)}


def lm_config(model: Mapping | TransformerVQConfig | LongVQConfig):
    """The typed config of ``model`` (a mapping with an optional ``arch``); errors name ``model.<field>``."""
    if not isinstance(model, Mapping):
        return model
    kwargs = dict(model)
    arch = kwargs.pop("arch", "transformer_vq")
    if arch not in LM_ARCHS:
        raise ValueError(f"model.arch={arch!r} is invalid: choose one of {sorted(LM_ARCHS)}")
    cls = LM_ARCHS[arch][0]
    unknown = set(kwargs) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"model: unknown field(s) {sorted(unknown)} for model.arch={arch}; "
                         f"known: {sorted(f.name for f in fields(cls))}")
    cfg = cls(**kwargs)
    if arch == "longvq":
        cfg.validate_causal()
    return cfg


def build_lm(model):
    """The LM of a model config (mapping with ``arch``, or a typed config)."""
    cfg = lm_config(model)
    model_cls = next(m for c, m in LM_ARCHS.values() if isinstance(cfg, c))
    return model_cls(cfg)


def carries_state(cfg) -> bool:
    return LM_ARCHS["transformer_vq"][0] is type(cfg)


__all__ = ["LM_ARCHS", "LongVQLM", "build_lm", "carries_state", "lm_config"]
