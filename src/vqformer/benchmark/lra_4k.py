"""Byte-level 4K speed and memory: LongVQ against MEGA, MEGA-chunk and the quadratic no-SSM model.

The Text row of MEGA's Table 8 (4 layers, d 128, z 64, v 256, FFN 256, scalenorm post-norm), T = 4096 bytes,
the setting of MEGA's Table 2 / LongVQ's "5.3x speed, 10x less memory" claim. Levels: ``layer`` = one
LongVQ/MEGA block forward + backward; ``model`` = a training step of the classifier (forward, cross entropy
+ c_beta·commit, backward, AdamW step, EMA codebook update). Times are medians (``vqformer.benchmark.timing``),
memory the step's high-water-mark delta in this process (``vqformer.benchmark.memory.cpu_step_memory``).
Run one arm per process (fresh allocator); each run appends one JSON line to ``--out`` (default
``logs/bench/lra_4k/points.jsonl``; the committed record is ``experiments/lra/bench_4k.jsonl``):

    for arm in longvq mega_chunk mega lra_transformer; do
      python -m vqformer.benchmark.lra_4k --arm $arm --level model
    done
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models.longvq import LongVQClassifier, LongVQConfig
from ..nn.longvq import LongVQBlock
from ..provenance import git_commit
from .memory import cpu_step_memory
from .timing import time_once

ARMS = {"longvq": {"attn_type": "vq"}, "mega_chunk": {"attn_type": "chunk"}, "mega": {"attn_type": "full"},
        "lra_transformer": {"attn_type": "full", "ssm": "none"}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vqformer.benchmark.lra_4k", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arm", choices=list(ARMS), required=True)
    ap.add_argument("--level", choices=["layer", "model"], default="model")
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("logs/bench/lra_4k/points.jsonl"),
                    help="JSON-lines file the point is appended to (default: logs/bench/lra_4k/points.jsonl)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = LongVQConfig(vocab_size=259, n_classes=2, n_layer=4, d_model=128, d_ffn=256, z_dim=64, v_dim=256,
                       norm="scalenorm", n_code=256, block_len=128, max_len=a.T, dropout=0.0, **ARMS[a.arm])
    x = torch.randint(3, 259, (a.batch, a.T))
    mask = torch.ones(a.batch, a.T, dtype=torch.bool)
    y = torch.randint(0, 2, (a.batch,))
    if a.level == "layer":
        block = LongVQBlock(cfg).train()
        h = torch.randn(a.batch, a.T, cfg.d_model, requires_grad=True)

        def step():
            out, commit, _ = block(h, mask)
            (out.square().mean() + commit).backward()
            block.zero_grad(set_to_none=True)
            h.grad = None
            block.mixer.quantizer is not None and block.mixer.quantizer.update()
    else:
        model = LongVQClassifier(cfg).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step():
            logits, commit, _ = model(x, mask)
            (F.cross_entropy(logits, y) + cfg.c_beta * commit).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            model.update_codebooks()
    mem = cpu_step_memory(step)
    times = sorted(time_once(step, "cpu") for _ in range(a.repeats))
    line = json.dumps({"arm": a.arm, "level": a.level, "T": a.T, "batch": a.batch, "threads": a.threads,
                      "median_s": times[len(times) // 2], "min_s": times[0], "tokens_per_s": a.batch * a.T / times[len(times) // 2],
                      "mem_delta_mb": mem["mem_delta_mb"], "mem_method": mem["mem_method"],
                      "commit": git_commit()["commit"], "machine": platform.processor() or platform.machine()})
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a") as f:        # one line per run: the other arms' lines stay
        f.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
