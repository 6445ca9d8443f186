"""vqformer: vector-quantized attention (Transformer-VQ, LongVQ, OVQ) in PyTorch."""
__version__ = "0.1.0"

from pathlib import Path as _Path

# The config tree lives at the repository root (an editable install); an absolute path lets Hydra find it
# both from `python -m vqformer.train` and from the console scripts (`vqformer-train`).
CONF_DIR = str(_Path(__file__).resolve().parents[2] / "conf")
