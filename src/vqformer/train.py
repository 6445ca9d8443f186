"""Train a model from a composed config: ``python -m vqformer.train [experiment=...] [key=value ...]``."""
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from . import CONF_DIR
from .config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    from .lit.runner import train
    metrics = train(cfg, Path(HydraConfig.get().runtime.output_dir))
    return metrics.get("val/bpb", float("nan"))


if __name__ == "__main__":
    main()
