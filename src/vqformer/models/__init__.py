"""Assembled models: the Transformer-VQ decoder (``transformer_vq``) and the LongVQ encoder/decoder
(``longvq``), each with its typed config. They are built from the layers in ``vqformer.nn``."""
from .longvq import LongVQClassifier, LongVQConfig, LongVQDecoder
from .transformer_vq import Aux, DecoderState, TransformerVQ, TransformerVQConfig

__all__ = ["Aux", "DecoderState", "TransformerVQ", "TransformerVQConfig", "LongVQClassifier", "LongVQConfig",
           "LongVQDecoder"]
