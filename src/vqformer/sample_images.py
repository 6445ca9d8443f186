"""Sample images from an image run and write them as a PNG grid:
``python -m vqformer.sample_images run_dir=... n_samples=16 p_nucleus=0.999``.

Spec: ``docs/transformer_vq.md`` §3.5 (sampling = the state machine one token at a time, nucleus
sampling; p = 0.999 for ImageNet64 in §4.1) and §4.3 (an image is H·W·3 byte tokens, row-major, +3 offset,
after an EOS). The three special ids are never sampled inside an image.
"""
from __future__ import annotations

import math
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from . import CONF_DIR
from .data.files import atomic_path
from .data.lm_datamodule import BYTE_OFFSET, EOS
from .sample import nucleus


@torch.no_grad()
def sample_images(model, n_images: int, resolution: int, p: float, temperature: float, seed: int) -> np.ndarray:
    """(n_images, H, W, 3) uint8 images drawn pixel by pixel with the carried attention state."""
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    logits, aux = model(torch.full((n_images, 1), EOS, device=device), model.empty_state())
    state, out = aux.state, []
    n_tokens = resolution * resolution * 3
    for i in range(n_tokens):
        step = logits[:, -1].float().cpu()
        step[:, :BYTE_OFFSET] = -math.inf   # pad, EOS and unk are not pixel values
        tok = nucleus(step, p, temperature, gen)
        out.append(tok)
        if i + 1 < n_tokens:
            logits, aux = model(tok.to(device), state)
            state = aux.state
    pixels = torch.cat(out, dim=1) - BYTE_OFFSET
    return pixels.clamp(0, 255).to(torch.uint8).numpy().reshape(n_images, resolution, resolution, 3)


def image_grid(images: np.ndarray, n_cols: int | None = None, border: int = 1) -> np.ndarray:
    """Tile (N, H, W, 3) images into one (rows·(H+b)+b, cols·(W+b)+b, 3) array with white borders."""
    n, h, w, _ = images.shape
    n_cols = n_cols or math.ceil(math.sqrt(n))
    n_rows = math.ceil(n / n_cols)
    grid = np.full((n_rows * (h + border) + border, n_cols * (w + border) + border, 3), 255, np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, n_cols)
        top, left = border + r * (h + border), border + c * (w + border)
        grid[top:top + h, left:left + w] = img
    return grid


def write_png(grid: np.ndarray, path: str | Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        plt.imsave(tmp, grid, format="png")
    return Path(path)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sample")
def main(cfg: DictConfig) -> None:
    from .lit.checkpoint import load_module, run_config
    run = run_config(cfg.run_dir)
    resolution = run.data.get("resolution")
    if resolution is None:
        raise ValueError(f"run_dir={cfg.run_dir}: not an image run (its data config has no resolution)")
    model = load_module(cfg.run_dir, cfg.ckpt).model
    images = sample_images(model, cfg.n_samples, resolution, cfg.p_nucleus, cfg.temperature, cfg.seed)
    path = write_png(image_grid(images), Path(cfg.run_dir) / "samples" / f"images_seed{cfg.seed}.png")
    print(f"[vqformer] {cfg.n_samples} images of {resolution}x{resolution} written to {path}")


if __name__ == "__main__":
    main()
