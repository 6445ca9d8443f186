"""Bag-of-tokens baselines for a cached LRA token task: token counts -> linear / one-hidden-layer MLP.

Usage (after the LongVQ run has prepared the same data):
    python -m vqformer.results lra-baseline --root data --task listops --max-len 100 \
        --generator '{"seed":0,"n_train":20000,"n_val":1000,"n_test":1000,"min_len":20,"max_len":100,"max_depth":10,"max_args":10}'
Prints a JSON line with validation and test accuracy of each baseline and of the majority class, and writes it
to ``<out>/<task>_bag_of_tokens.json`` (default out: ``logs/results/lra``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.files import atomic_write_text
from ..data.lra.datamodule import LRADataModule


def counts(ds, vocab):
    x = torch.from_numpy(ds.inputs.astype(np.int64))
    c = torch.zeros(len(x), vocab).scatter_add_(1, x, torch.ones_like(x, dtype=torch.float32))
    c[:, 0] = 0                                             # pads
    return torch.cat([c, c / c.sum(1, keepdim=True).clamp_min(1)], 1), torch.from_numpy(ds.labels)


def fit(model, x, y, xv, yv, steps=3000, lr=1e-2, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    best, best_state = -1.0, None
    for step in range(steps):
        idx = torch.randint(0, len(x), (256,))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 99:
            with torch.no_grad():
                acc = (model(xv).argmax(-1) == yv).float().mean().item()
            if acc > best:
                best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vqformer.results lra-baseline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="data")
    ap.add_argument("--task", default="listops")
    ap.add_argument("--max-len", type=int, default=None)
    ap.add_argument("--generator", default="{}", help="the data config's generator keys, as JSON")
    ap.add_argument("--out", type=Path, default=Path("logs/results/lra"),
                    help="folder of <task>_bag_of_tokens.json (default: logs/results/lra)")
    a = ap.parse_args(argv)
    try:
        generator = json.loads(a.generator)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--generator is not JSON ({e}): {a.generator!r}") from None
    out_path = a.out / f"{a.task}_bag_of_tokens.json"
    torch.set_num_threads(1)
    dm = LRADataModule(task=a.task, root=a.root, batch_size=1, max_len=a.max_len, generator=generator)
    dm.prepare_data()
    dm.setup()
    vocab = dm.spec.vocab_size
    (x, y), (xv, yv), (xt, yt) = (counts(dm.dataset(s), vocab) for s in ("train", "val", "test"))
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    x, xv, xt = (x - mu) / sd, (xv - mu) / sd, (xt - mu) / sd
    n_cls = dm.spec.n_classes
    out = {"majority": {"val": (yv == y.bincount().argmax()).float().mean().item(),
                        "test": (yt == y.bincount().argmax()).float().mean().item()}}
    models = {"bag_linear": torch.nn.Linear(x.shape[1], n_cls),
              "bag_mlp": torch.nn.Sequential(torch.nn.Linear(x.shape[1], 256), torch.nn.GELU(),
                                             torch.nn.Linear(256, n_cls))}
    for name, m in models.items():
        m = fit(m, x, y, xv, yv)
        with torch.no_grad():
            out[name] = {"val": (m(xv).argmax(-1) == yv).float().mean().item(),
                         "test": (m(xt).argmax(-1) == yt).float().mean().item()}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_path, json.dumps(out) + "\n")
    print(json.dumps(out))
    print(f"[results] wrote {out_path}")
