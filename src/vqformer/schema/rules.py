"""Cross-field rules: checks that need more than one group. Each raises ``ConfigError`` naming the key,
the value and what is allowed; the task validations (``vqformer/lit/*_module.py``) call them.
"""
from __future__ import annotations

from .base import ConfigError, fail, is_int


def check_block_len(block_len: int, **lengths: int) -> None:
    """The one divisibility rule: a model call takes whole blocks, so ``model.block_len`` divides every
    length the model is run on (update windows, evaluation windows, fresh sequences)."""
    for name, n in lengths.items():
        if not is_int(n) or n < 1 or n % block_len:
            raise ConfigError(f"model.block_len={block_len} must divide {name}={n}")


def check_codebook(n_code: int, batch_size: int, update_len: int) -> None:
    """Each EMA k-means step moves only the codes that received keys in that update, and an update sees
    ``batch_size × update_len`` keys per codebook (per device); with more codes than keys, some codes can
    never be reached in any update and the codebook is partly dead by construction."""
    keys = batch_size * update_len
    if n_code > keys:
        fail("model.n_code", n_code, f"must be <= the keys per codebook per update, data.batch_size × update_len "
             f"= {batch_size} × {update_len} = {keys}: every k-means update must be able to reach every code")


def check_vocab(model_vocab: int, data_vocab: int, data_key: str) -> None:
    """The embedding and output layer cover every token id the data produces."""
    if model_vocab < data_vocab:
        fail("model.vocab_size", model_vocab, f"must be >= the data's vocabulary {data_vocab} ({data_key})")


def uses_vq(mcfg) -> bool:
    """Whether any layer quantizes keys (so ``n_code`` is live)."""
    types = mcfg.layer_types() if hasattr(mcfg, "layer_types") else [mcfg.attn_type]
    return "vq" in types
