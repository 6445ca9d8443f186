"""Token mixers of the attention unit, picked by name (``attn_type`` / ``layer_pattern``) from a registry.

One module per mixer, each registering itself with its own config dataclass (``model.mixer.<name>``):
``vq`` (Transformer-VQ), ``full`` (quadratic baseline), ``swa`` (sliding window), ``ovq`` (online VQ).

Adding a mixer: one module here that defines a ``MixerConfig`` dataclass (typed knobs with defaults, range
checks in ``validate``) and a ``Mixer`` subclass decorated with ``@register_mixer("<name>")`` (``forward``,
``state_bytes``, and ``n_distances`` if it reads relative positions); and one ``conf/model/<arm>.yaml`` that
selects it (``attn_type: <name>`` or a ``layer_pattern``) and sets its knobs under ``mixer.<name>``. Every
module of this package is imported below, so nothing else changes. ``tests/nn/test_mixers.py`` does this with a
toy mixer defined in the test.
"""
import importlib
import pkgutil

from .base import (MIXERS, HeadDims, Mixer, MixerConfig, MixerOutput, check_types, invalid, mixer_class, mixers_schema,
                   register_mixer)

for _module in pkgutil.iter_modules(__path__):   # importing a mixer module registers it
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["MIXERS", "HeadDims", "Mixer", "MixerConfig", "MixerOutput", "check_types", "invalid", "mixer_class",
           "mixers_schema", "register_mixer"]
