"""Plain-PyTorch building blocks of vqformer (no Lightning, no Hydra)."""
from . import functional
from .attention import MLP, AttentionUnit
from .functional import (FullAttentionState, VQAttentionState, full_attention, full_attention_reference,
                         vq_attention, vq_attention_reference)
from .model import Aux, DecoderState, TransformerVQ, TransformerVQConfig
from .quantizer import VectorQuantizer, VQOutput

__all__ = ["functional", "MLP", "AttentionUnit", "FullAttentionState", "VQAttentionState", "full_attention",
           "full_attention_reference", "vq_attention", "vq_attention_reference", "Aux", "DecoderState",
           "TransformerVQ", "TransformerVQConfig", "VectorQuantizer", "VQOutput"]
