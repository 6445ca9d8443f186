"""Schemas of the ``model`` group (conf/model/*.yaml): the models' own typed configs, registered as they are.

Each model config is a dataclass whose fields are the knobs (with their ranges in its ``validate()``), so
the schema is the model config itself: ``transformer_vq.yaml`` starts with
``defaults: [schema_transformer_vq, _self_]``, ``longvq.yaml`` with ``[schema_longvq, _self_]`` and
``longvq_lm.yaml`` with ``[schema_longvq_lm, _self_]``; the other options extend one of them. Which task
trains which model: lm / recall -> TransformerVQConfig or, with ``arch: longvq``, the causal LongVQ LM
(``vqformer.models.lm``); classify -> LongVQConfig.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..models.longvq import LongVQConfig
from ..models.transformer_vq import TransformerVQConfig


@dataclass
class LongVQLMSchema(LongVQConfig):
    arch: str = "longvq"        # which language model task=lm builds (vqformer.models.lm.LM_ARCHS)


MODELS = {"schema_transformer_vq": TransformerVQConfig, "schema_longvq": LongVQConfig,
          "schema_longvq_lm": LongVQLMSchema}
