"""Throughput benchmark: ``python -m vqformer.bench [bench=cpu_quick|cpu|gpu] [key=value ...]``.

Spec: ``docs/transformer_vq.md`` §5.4 (throughput protocol) and §3.2 (the linear-time VQ
attention). Levels kernel / layer / model, VQ against the quadratic baseline, sequence lengths 1024·2^i;
results (CSV, JSON, PNG, markdown table) go to ``bench.out_dir`` (default
``experiments/throughput/<device_tag>/``). The work is in ``vqformer.benchmark``; see
``experiments/throughput/README.md`` for the protocol and the recorded results.
"""
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from . import CONF_DIR


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="bench")
def main(cfg: DictConfig) -> None:
    from .benchmark import run
    command = " ".join(["python -m vqformer.bench", *sys.argv[1:]])
    run(cfg, Path(cfg.out_dir), command=command)


if __name__ == "__main__":
    main()
