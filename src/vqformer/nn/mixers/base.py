"""The contract of a token mixer and the registry the attention unit picks mixers from.

A mixer is the part of an attention unit between the shared projections and the output projection: it gets
the per-head queries, keys and values and returns the mixed values (and, optionally, a commit loss and
statistics). It owns its parameters beyond the shared projections, its carried state and its own config
dataclass, ``model.mixer.<name>.<knob>`` in the run config. Adding a mixer is one module that registers
itself with ``@register_mixer("<name>")`` and one config file that selects it (``attn_type: <name>``).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, NamedTuple

from torch import Tensor, nn


class HeadDims(NamedTuple):
    """Head layout of one attention unit (docs/transformer_vq.md, head types)."""
    n_q: int     # query heads
    n_kv: int    # key/value heads (= codebooks for vq)
    n_rel: int   # heads of the relative-position projection (n_q for mha, else 1)
    d_k: int
    d_v: int     # value width per head

    @property
    def per_token(self) -> int:
        """Floats of one cached key and value over all key/value heads."""
        return self.n_kv * (self.d_k + self.d_v)


class MixerOutput(NamedTuple):
    out: Tensor                      # [B, n_q, T, d_v]
    state: Any                       # carried to the next call; must provide .detach()
    commit_loss: Tensor | None = None
    stats: dict | None = None        # detached scalars, averaged over units by the model


def invalid(key: str, value, allowed: str) -> ValueError:
    return ValueError(f"{key}={value!r} is invalid: {allowed}")


def _allowed(hint) -> tuple[tuple[type, ...], bool]:
    """(types, nullable) of a field annotation such as ``int``, ``float | None`` or ``list[str] | None``."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    nullable = type(None) in args
    kinds = tuple(typing.get_origin(a) or a for a in args if a is not type(None))
    if float in kinds:
        kinds += (int,)              # YAML writes 1 for 1.0
    return kinds, nullable


def check_types(obj, prefix: str) -> None:
    """Raise if a field of the dataclass ``obj`` does not have its annotated type (bools are not ints)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, (kinds, nullable) = getattr(obj, f.name), _allowed(hints[f.name])
        if value is None and nullable or Any in kinds:
            continue
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            names = " or ".join(k.__name__ for k in kinds if not (k is int and float in kinds)) \
                + (" or null" if nullable else "")
            raise invalid(f"{prefix}{f.name}", value, f"must be {names}")


@dataclasses.dataclass
class MixerConfig:
    """Base of a mixer's own knobs. Subclasses add typed fields with defaults and range checks."""

    def validate(self, key: str) -> None:
        """Raise naming ``<key>.<knob>`` (key: ``model.mixer.<name>``); the types are checked here."""
        check_types(self, f"{key}.")


class Mixer(nn.Module):
    """q [B,n_q,T,d_k], k [B,n_kv,T,d_k] (projected, not normalised), v [B,n_kv,T,d_v] -> ``MixerOutput``.

    ``model_cfg`` is the model's config (shared knobs such as ``d_model``, ``block_len``, ``n_code``), ``dims``
    the unit's head layout and ``cfg`` this mixer's own config (an instance of ``config_class``).
    """
    name: str = ""
    config_class: type[MixerConfig] = MixerConfig

    def __init__(self, model_cfg, dims: HeadDims, cfg: MixerConfig):
        super().__init__()
        self.model_cfg, self.dims, self.cfg = model_cfg, dims, cfg
        self.quantizer = None        # a VectorQuantizer when the mixer has an EMA codebook

    def forward(self, q: Tensor, k: Tensor, v: Tensor, state=None, sin_mask: Tensor | None = None,
                mask: Tensor | None = None) -> MixerOutput:
        """``sin_mask`` [B, n_distances, d_model]: this unit's sinusoid-dropout mask (training) or None;
        ``mask`` [B,T] (True = real token): a mixer with a quantizer keeps pads out of its commit loss and EMA."""
        raise NotImplementedError

    def state_bytes(self, length: int) -> int:
        """Bytes of state kept per sequence after ``length`` tokens (fp32 tensors)."""
        raise NotImplementedError

    def n_distances(self, pos: int, length: int) -> int:
        """Rows of the relative-position sinusoid table read by a call on ``length`` tokens after ``pos``
        (its sinusoid-dropout mask has this many rows); 0 for a mixer without positions."""
        return 0


MIXERS: dict[str, type[Mixer]] = {}


def register_mixer(name: str):
    """Class decorator: make a ``Mixer`` subclass selectable as ``attn_type: <name>`` / ``layer_pattern``."""
    def add(cls: type[Mixer]) -> type[Mixer]:
        if not (isinstance(cls, type) and issubclass(cls, Mixer)):
            raise TypeError(f"register_mixer({name!r}) decorates a Mixer subclass, not {cls!r}")
        if not (dataclasses.is_dataclass(cls.config_class) and issubclass(cls.config_class, MixerConfig)):
            raise TypeError(f"mixer {name!r}: config_class must be a MixerConfig dataclass")
        if MIXERS.get(name, cls) is not cls:
            raise ValueError(f"a mixer named {name!r} is already registered ({MIXERS[name].__qualname__})")
        cls.name = name
        MIXERS[name] = cls
        return cls
    return add


def mixer_class(name: str, key: str = "model.attn_type") -> type[Mixer]:
    if name not in MIXERS:
        raise invalid(key, name, f"choose one of {sorted(MIXERS)}")
    return MIXERS[name]


def mixers_schema() -> type:
    """A dataclass with one field per registered mixer, its config with defaults: the typed schema of
    ``model.mixer`` for a structured config (Hydra's ConfigStore), built once every mixer is registered."""
    return dataclasses.make_dataclass("MixerConfigs", [(name, cls.config_class, dataclasses.field(
        default_factory=cls.config_class)) for name, cls in sorted(MIXERS.items())])


__all__ = ["HeadDims", "MIXERS", "Mixer", "MixerConfig", "MixerOutput", "check_types", "invalid", "mixer_class",
           "mixers_schema", "register_mixer"]
