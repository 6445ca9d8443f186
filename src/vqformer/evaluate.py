"""Evaluate a run's checkpoint on a whole split: ``python -m vqformer.evaluate run_dir=... split=test``."""
import json
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from . import CONF_DIR


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def main(cfg: DictConfig) -> dict:
    from .data.byte_file import byte_file_identity
    from .lit.runner import evaluate
    data = byte_file_identity(cfg.data.path) if cfg.data.path else None   # another byte file: named in the record
    metrics = evaluate(cfg.run_dir, cfg.split, cfg.ckpt, cfg.eval_sequence_len, cfg.eval_window,
                       cfg.limit_eval_bytes, cfg.batch_size, cfg.data.path, cfg.data.split)
    stage = "val" if cfg.split == "validation" else "test"
    if f"{stage}/bpb" in metrics:
        print(f"[vqformer] {cfg.split}: loss {metrics[f'{stage}/loss']:.4f} nats/token, "
              f"{metrics[f'{stage}/bpb']:.4f} bits per byte over {int(metrics[f'{stage}/tokens'])} tokens")
    else:   # a classifier (LRA): accuracy and loss
        print(f"[vqformer] {cfg.split}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    out = Path(cfg.run_dir) / (f"eval_{cfg.split}.json" if data is None else f"eval_{cfg.split}-{data['dir']}.json")
    out.write_text(json.dumps({"metrics": metrics, "eval_config": OmegaConf.to_container(cfg), "data": data}, indent=1))
    return metrics


if __name__ == "__main__":
    main()
