"""Plain-PyTorch building blocks of vqformer (no Lightning, no Hydra)."""
from . import functional
from .attention import MLP, AttentionUnit
from .functional import (FullAttentionState, VQAttentionState, full_attention, full_attention_reference,
                         vq_attention, vq_attention_reference)
from .quantizer import VectorQuantizer, VQOutput

__all__ = ["functional", "MLP", "AttentionUnit", "FullAttentionState", "VQAttentionState", "full_attention",
           "full_attention_reference", "vq_attention", "vq_attention_reference", "VectorQuantizer", "VQOutput"]
from .ema import S4D, DampedEMA
from .vq_bidirectional import bidir_attention_reference, vq_attention_bidir

__all__ += ["S4D", "DampedEMA", "bidir_attention_reference", "vq_attention_bidir"]
