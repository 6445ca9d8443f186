"""Schemas of the ``model`` group (conf/model/*.yaml): the models' own typed configs, registered as they are.

Each model config is a dataclass whose fields are the knobs (with their ranges in its ``validate()``), so
the schema is the model config itself: ``transformer_vq.yaml`` starts with
``defaults: [schema_transformer_vq, _self_]`` and ``longvq.yaml`` with ``[schema_longvq, _self_]``; the other
options extend one of them. Which task trains which model: lm / recall -> TransformerVQConfig,
classify -> LongVQConfig.
"""
from __future__ import annotations

from ..models.longvq import LongVQConfig
from ..models.transformer_vq import TransformerVQConfig

MODELS = {"schema_transformer_vq": TransformerVQConfig, "schema_longvq": LongVQConfig}
