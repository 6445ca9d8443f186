"""Train a model from a composed config: ``python -m vqformer.train [experiment=...] [key=value ...]``.

Exit codes: 0 finished (``DONE`` written); 128 + signal (143 SIGTERM, 138 SIGUSR1) preempted with a
checkpoint written, run the same command to continue; 1 any error (divergence, a locked run directory, an
unwritable checkpoint directory, a bad config), with a message naming the cause (docs/cluster.md).
"""
import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from . import CONF_DIR
from .config import ConfigError, register_resolvers, run_dir, validate
from .heap import set_cpu_heap
from .threads import set_threads

register_resolvers()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    from .lit.preemption import Preempted
    from .lit.runner import is_rank_zero, train
    try:
        validate(cfg)                  # before any directory exists or any data is touched
    except ConfigError as e:
        sys.exit(f"[vqformer] config error: {e}")
    try:   # before any tensor work: torch's default (every logical CPU) stalls on a busy machine
        cpu_procs = cfg.trainer.devices if cfg.trainer.accelerator == "cpu" and isinstance(cfg.trainer.devices, int) else 1
        set_threads(cfg.get("threads"), procs=cpu_procs, verbose=is_rank_zero())
        if cfg.trainer.accelerator == "cpu":   # long update windows: reuse freed buffers, no page faults per step
            why = set_cpu_heap()[1]
            if is_rank_zero():
                print(f"[vqformer] {why}", flush=True)
    except ValueError as e:
        sys.exit(f"[vqformer] config error: {e}")
    out = run_dir(cfg, HydraConfig.get())
    out.mkdir(parents=True, exist_ok=True)
    log_file = logging.FileHandler(out / "train.log")    # Hydra writes no log file (conf/hydra/default.yaml)
    log_file.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(log_file)
    try:
        metrics = train(cfg, out)
    except Preempted as e:
        print(f"[vqformer] {e}", flush=True)
        sys.exit(e.exit_code)
    finally:                                              # the next job of a local sweep logs elsewhere
        logging.getLogger().removeHandler(log_file)
        log_file.close()
    return metrics.get("val/bpb", float("nan"))


if __name__ == "__main__":
    main()
