"""Validation of a composed run config before any work starts.

Each check raises ``ConfigError`` (a ``ValueError``) with one message that names the offending key, so an
impossible config stops before data is prepared or a model is built.
"""
from __future__ import annotations

import hashlib

from omegaconf import DictConfig, OmegaConf

from .models.lm import carries_state
from .models.transformer_vq import RENAMED, TransformerVQConfig


def short_dirname(name: str, max_len: int = 120) -> str:
    """A run-directory name from Hydra's override string, cut and hashed when too long for a file name."""
    name = name.replace("/", "_")
    if len(name) <= max_len:
        return name
    return f"{name[:max_len - 17]}-{hashlib.sha1(name.encode()).hexdigest()[:16]}"


def register_resolvers() -> None:
    """Named, pure resolvers only (no `eval`); must run before Hydra composes a config."""
    if not OmegaConf.has_resolver("vqformer.dirname"):
        OmegaConf.register_new_resolver("vqformer.dirname", short_dirname)


register_resolvers()   # importing the config module (as the compose-API tests do) is enough


class ConfigError(ValueError):
    pass


def _positive_int(cfg: DictConfig, key: str) -> int:
    value = OmegaConf.select(cfg, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


def model_config(cfg: DictConfig):
    """The typed model config (``model.arch`` picks it; default transformer_vq); its own validation names
    ``model.<field>`` and ``model.mixer.<name>.<knob>``."""
    from .models import lm_config
    kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    if kwargs.get("arch", "transformer_vq") == "transformer_vq":
        moved = sorted(k for k in set(kwargs) - set(TransformerVQConfig.__dataclass_fields__) if k in RENAMED)
        if moved:
            raise ConfigError("; ".join(f"model.{k} is now model.{RENAMED[k]}" for k in moved))
    try:
        return lm_config(kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def _known_corpora(cfg: DictConfig) -> dict:
    """The registry of corpora of the configured datamodule (bytes, books or images)."""
    target = str(cfg.data.get("_target_", ""))
    if target.endswith("BookLMDataModule"):
        from .data.pg19 import BOOK_CORPORA
        return BOOK_CORPORA
    if target.endswith("ImageLMDataModule"):
        from .data.imagenet64 import IMAGE_CORPORA
        return IMAGE_CORPORA
    from .data.bytes_corpus import CORPORA  # the data layer's registry of known corpora
    return CORPORA


def _check_corpus_fit(cfg: DictConfig, mcfg: TransformerVQConfig) -> None:
    """The model's vocabulary covers the corpus's, and image sequences hold exactly one image."""
    target = str(cfg.data.get("_target_", ""))
    if target.endswith("BookLMDataModule"):
        vocab = _positive_int(cfg, "data.vocab_size")
        if mcfg.vocab_size < vocab:
            raise ConfigError(f"model.vocab_size={mcfg.vocab_size} is smaller than the tokenizer's "
                              f"data.vocab_size={vocab}")
    if target.endswith("ImageLMDataModule"):
        from .data.imagenet64 import image_tokens
        n = image_tokens(_positive_int(cfg, "data.resolution"))
        if cfg.sequence_len != n:
            raise ConfigError(f"sequence_len={cfg.sequence_len} must equal one image of data.resolution="
                              f"{cfg.data.resolution}: {n} tokens (H·W·3)")
        if cfg.data.get("eval_sequence_len") not in (None, n):
            raise ConfigError(f"data.eval_sequence_len={cfg.data.eval_sequence_len} must be null or one image ({n})")
        if mcfg.vocab_size < 259:
            raise ConfigError(f"model.vocab_size={mcfg.vocab_size} must be >= 259 (bytes + 3) for images")


def validate_train(cfg: DictConfig):
    mcfg = model_config(cfg)
    T = _positive_int(cfg, "sequence_len")
    W = _positive_int(cfg, "update_len")
    for key in ("data.batch_size", "trainer.max_steps", "ckpt_every", "eval_window"):
        _positive_int(cfg, key)
    known = _known_corpora(cfg)
    if cfg.data.name not in known:
        raise ConfigError(f"data.name={cfg.data.name!r} is unknown; choose one of {sorted(known)}")
    _check_corpus_fit(cfg, mcfg)
    if T % W:
        raise ConfigError(f"update_len={W} must divide sequence_len={T}")
    eval_len = cfg.data.get("eval_sequence_len") or T
    if not carries_state(mcfg) and (W != T or cfg.eval_window != eval_len):
        m = cfg.model
        raise ConfigError(f"the model (model.arch={m.get('arch')}, model.attn_type={m.get('attn_type')}, "
                          f"model.truncation={m.get('truncation')}) carries no state between calls: update_len={W} "
                          f"must equal sequence_len={T} and eval_window={cfg.eval_window} the evaluation sequence "
                          f"length {eval_len} (data.eval_sequence_len or sequence_len)")
    if carries_state(mcfg):
        try:
            mcfg.check_sequence_len("update_len", W)
            mcfg.check_sequence_len("eval_window", cfg.eval_window)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if eval_len % cfg.eval_window:
        raise ConfigError(f"eval_window={cfg.eval_window} must divide the evaluation sequence length {eval_len} "
                          "(data.eval_sequence_len or sequence_len)")
    if cfg.ckpt_every % (T // W):
        raise ConfigError(f"ckpt_every={cfg.ckpt_every} must be a multiple of sequence_len/update_len={T // W} "
                          "(one training batch makes that many optimizer updates)")
    mb = cfg.get("micro_batch_size")
    if mb is not None and (not isinstance(mb, int) or mb < 1 or cfg.data.batch_size % mb):
        raise ConfigError(f"micro_batch_size={mb!r} must be a positive integer dividing data.batch_size="
                          f"{cfg.data.batch_size}")
    return mcfg
