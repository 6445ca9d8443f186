"""Token mixers of the attention unit, picked by name (``attn_type`` / ``layer_pattern``) from a registry.

One module per mixer, each registering itself with its own config dataclass (``model.mixer.<name>``):
``vq`` (Transformer-VQ), ``full`` (quadratic baseline), ``swa`` (sliding window), ``ovq`` (online VQ).
"""
from . import full, ovq, swa, vq  # noqa: F401  (importing a mixer module registers it)
from .base import (MIXERS, HeadDims, Mixer, MixerConfig, MixerOutput, check_types, invalid, mixer_class, mixers_schema,
                   register_mixer)

__all__ = ["MIXERS", "HeadDims", "Mixer", "MixerConfig", "MixerOutput", "check_types", "invalid", "mixer_class",
           "mixers_schema", "register_mixer"]
