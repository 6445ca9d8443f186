"""What a run hands W&B beyond its metrics: the compared knobs as flat config keys and tags, the mode
(online only with credentials for the server in use), and its curves as an image at the end.

The nested config stays complete (``vqformer.results --wandb-project`` reads it); the flat keys exist because
W&B's run table, filters and parallel-coordinates plots group by top-level keys, and S, L, attention type,
head type and kernel are what a sweep varies.
"""
from __future__ import annotations

import configparser
import csv
import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from .csv_log import update_index

DEFAULT_HOST = "https://api.wandb.ai"

# flat key -> dotted path in the composed config (absent paths are left out: not every model has every knob)
FLAT_KEYS = {
    "experiment": "name",
    "task": "task",
    "data_name": "data.name",
    "arch": "model.arch",
    "n_code": "model.n_code",
    "block_len": "model.block_len",
    "attn_type": "model.attn_type",
    "head_type": "model.head_type",
    "kernel": "model.kernel",
    "agg_cache": "model.agg_cache",
    "sequence_len": "sequence_len",
    "update_len": "update_len",
    "seed": "seed",
}
# tag prefix -> flat key (S and L as the papers write them)
TAG_KEYS = {"S": "n_code", "L": "block_len", "attn": "attn_type", "head": "head_type", "kernel": "kernel",
            "agg_cache": "agg_cache", "data": "data_name", "seed": "seed"}
CURVES = ("train/loss", "val/loss", "val/bpb", "val/acc")


def flat_config(cfg: DictConfig) -> dict:
    """The compared knobs of a composed config as one flat dict (``{"n_code": 512, "block_len": 256, ...}``)."""
    out = {}
    for key, path in FLAT_KEYS.items():
        value = OmegaConf.select(cfg, path, default=None)
        if value is not None and not OmegaConf.is_config(value):
            out[key] = value
    if "data_name" not in out and OmegaConf.select(cfg, "data._target_", default=None):
        out["data_name"] = str(cfg.data._target_).rsplit(".", 1)[-1]   # a data module without a name knob
    return out


def knob_tags(flat: dict) -> list[str]:
    """``["S=512", "L=256", "attn=vq", ...]`` from :func:`flat_config`."""
    def text(v):
        return str(v).lower() if isinstance(v, bool) else str(v)
    return [f"{tag}={text(flat[key])}" for tag, key in TAG_KEYS.items() if key in flat]


def _settings_base_url(env) -> str | None:
    """The host ``wandb login --host`` stored in W&B's settings file."""
    root = Path(env.get("WANDB_CONFIG_DIR") or Path(env.get("HOME", Path.home())) / ".config" / "wandb")
    parser = configparser.ConfigParser()
    try:
        parser.read(root / "settings")
        return parser.get("default", "base_url", fallback=None)
    except configparser.Error:
        return None


def wandb_mode(mode: str, env=None) -> str:
    """``auto``: online when an API key is set or ``~/.netrc`` holds a login for the server in use
    (``WANDB_BASE_URL``, else the host of ``wandb login --host``, else api.wandb.ai); offline otherwise."""
    env = os.environ if env is None else env
    if mode != "auto":
        return mode
    if env.get("WANDB_MODE"):
        return env["WANDB_MODE"]
    if env.get("WANDB_API_KEY"):
        return "online"
    base = env.get("WANDB_BASE_URL") or _settings_base_url(env) or DEFAULT_HOST
    host = urlparse(base if "//" in base else f"//{base}").hostname
    path = Path(env.get("NETRC") or Path(env.get("HOME", Path.home())) / ".netrc")
    if not host or not path.is_file():
        return "offline"
    try:
        found = netrc.netrc(str(path)).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):   # a file netrc cannot parse: look for the machine line itself
        found = f"machine {host}" in path.read_text(errors="ignore")
    return "online" if found else "offline"


def plot_curves(metrics_csv: Path, out: Path, per_batch: int = 1, final_step: int | None = None) -> Path | None:
    """The run's loss / bpb curves from its metrics.csv as a PNG (None when there is nothing to draw), against
    the update (``per_batch`` updates per logged batch: csv_log.update_index)."""
    if not metrics_csv.is_file():
        return None
    series: dict[str, list[tuple[int, float]]] = {}
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            for key in CURVES:
                if row.get(key) not in (None, "") and row.get("step") not in (None, ""):
                    step = update_index(int(float(row["step"])), per_batch, final_step)
                    series.setdefault(key, []).append((step, float(row[key])))
    if not series:
        return None
    import matplotlib
    matplotlib.use("Agg")   # no display on a cluster node
    import matplotlib.pyplot as plt
    panels = [k for k in ("train/loss", "val/loss") if k in series], [k for k in ("val/bpb", "val/acc") if k in series]
    panels = [p for p in panels if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, keys in zip(axes[0], panels):
        for key in keys:
            steps, values = zip(*series[key])
            ax.plot(steps, values, label=key, marker="." if key.startswith("val/") else None)
        ax.set_xlabel("update")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def log_curves(logger, run_dir: Path, per_batch: int = 1, final_step: int | None = None) -> Path | None:
    """Log the curves image to the W&B run of ``logger`` (a WandbLogger) as media ``plots/curves``."""
    png = plot_curves(run_dir / "csv" / "version_0" / "metrics.csv", run_dir / "plots" / "curves.png",
                      per_batch, final_step)
    if png is not None:
        logger.log_image(key="plots/curves", images=[str(png)])
    return png
