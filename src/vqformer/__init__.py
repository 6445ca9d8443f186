"""vqformer: vector-quantized attention (Transformer-VQ, LongVQ, OVQ) in PyTorch."""
__version__ = "0.1.0"
