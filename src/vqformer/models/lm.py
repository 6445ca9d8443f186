"""The language models ``task=lm`` trains, picked by ``model.arch``: ``transformer_vq`` (the default when the
field is absent) or ``longvq`` (the causal LongVQ decoder, docs/longvq.md §1.4 "causal decoder").

Every LM has the decoder interface the LM module drives: ``forward(tokens, state, drop_seed=, mask=,
example_offset=) -> (logits, Aux)``, ``update_codebooks()``, ``cfg.c_beta``, and its config says whether
the model carries a state between calls (``carries_state``); a model that does not is trained and
evaluated with one window per sequence (``update_len = eval_window = sequence_len``, checked by
``vqformer.config.validate_train``).
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

    With ``attn_type: vq`` and an untruncated SSM it carries its state across calls like Transformer-VQ (per
    block: the SSM's hidden state and the attention cache), so training runs over update windows with the
    state carried and evaluation over any window. MEGA's full attention (``attn_type: full``) and a truncated
    SSM kernel carry none: every sequence is then one call (``update_len = eval_window = sequence_len``).
    There are no LayerDrop or sinusoid masks in this model (``drop_seed`` is unused); its dropout is MEGA's
    per-element dropout.
    """

    def empty_state(self):
        return DecoderState(0, self.empty_states()) if self.cfg.carries_state else NoState()

    def forward(self, tokens: Tensor, state=None, drop_seed: int | None = None, mask: Tensor | None = None,
                example_offset: int = 0, reference: bool = False):
        """tokens [B,T] -> (logits [B,T,V], Aux); ``mask`` [B,T] (True = real token) keeps pads out of the
        SSM input, the commit loss and the EMA statistics. ``reference``: one whole sequence through the O(T²)
        attention definition."""
        T = tokens.shape[1]
        if reference or not self.cfg.carries_state:
            if state is not None and state.pos != 0:
                raise ValueError("this LongVQ LM (attn_type=full, a truncation, or reference=True) carries no state "
                                 "between calls: use update_len = eval_window = sequence_len")
            logits, commit, stats = super().forward(tokens, mask, reference)
            return logits, Aux(commit, stats, NoState(T))
        state = self.empty_state() if state is None else state
        logits, commit, stats, units = self.forward_carry(tokens, mask, state.units)
        return logits, Aux(commit, stats, DecoderState(state.pos + T, units))


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
    """Whether the LM of ``cfg`` continues a sequence across calls (update windows, evaluation windows)."""
    return getattr(cfg, "carries_state", True)


__all__ = ["LM_ARCHS", "LongVQLM", "build_lm", "carries_state", "lm_config"]
