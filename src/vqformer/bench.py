"""Throughput benchmark: ``python -m vqformer.bench [bench=cpu_quick|cpu|gpu] [key=value ...]``.

Spec: ``docs/transformer_vq.md`` §5.4 (throughput protocol) and §3.2 (the linear-time VQ
attention). Levels kernel / layer / model, VQ against the quadratic baseline, sequence lengths 1024·2^i;
results (CSV, JSON, PNG, markdown table) go to ``out_dir`` (default ``logs/bench/<device_tag>/``; the
committed record under ``experiments/throughput/`` is refreshed only by ``make refresh-bench``). Measuring is
``vqformer.benchmark``, the table and plot ``vqformer.results.throughput``; see
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
    from .results import throughput
    command = " ".join(["python -m vqformer.bench", *sys.argv[1:]])
    out_dir = Path(cfg.out_dir)
    result = run(cfg, out_dir, command=command)
    paths = throughput.write(result, out_dir)
    for t in result["targets"]:
        print(f"[bench] target: {t['target']}: {t['status']}")
    print(f"[bench] wrote {', '.join(str(p) for p in paths.values())}")


if __name__ == "__main__":
    main()
