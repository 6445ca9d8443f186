"""Assembled models: the Transformer-VQ decoder (``transformer_vq``) and the LongVQ encoder/decoder
(``longvq``), each with its typed config, and the LM factory keyed by ``model.arch`` (``lm``). They are built
from the layers in ``vqformer.nn``."""
from .lm import LM_ARCHS, LongVQLM, build_lm, carries_state, lm_config
from .longvq import LongVQClassifier, LongVQConfig, LongVQDecoder
from .transformer_vq import Aux, DecoderState, TransformerVQ, TransformerVQConfig

__all__ = ["LM_ARCHS", "LongVQLM", "build_lm", "carries_state", "lm_config",
           "Aux", "DecoderState", "TransformerVQ", "TransformerVQConfig", "LongVQClassifier", "LongVQConfig",
           "LongVQDecoder"]
