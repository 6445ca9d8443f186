"""Train a model from a composed config: ``python -m vqformer.train [experiment=...] [key=value ...]``.

Exit codes: 0 finished (``DONE`` written); 128 + signal (143 SIGTERM, 138 SIGUSR1) preempted with a
checkpoint written, run the same command to continue; 1 any error (divergence, a locked run directory, an
unwritable checkpoint directory, a bad config), with a message naming the cause (docs/cluster.md).
"""
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="../../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from .lit.preemption import Preempted
    from .lit.runner import train
    try:
        metrics = train(cfg, Path(HydraConfig.get().runtime.output_dir))
    except Preempted as e:
        print(f"[vqformer] {e}", flush=True)
        sys.exit(e.exit_code)
    return metrics.get("val/bpb", float("nan"))


if __name__ == "__main__":
    main()
