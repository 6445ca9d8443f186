"""`make gpu-check`: everything the CPU cannot show, in one run of < 8 min on one H100/H200.

    python -m vqformer.gpu_check [--out logs/bench/<device>] [--skip-tests] [--plan]

1. GPU equivalence tests: ``pytest -m gpu`` over the kernel test files (eager, chunked and flex on CUDA,
   fp32 and bf16 autocast, against the float64 reference; the flex case checks FlexAttention's fused
   backward, which has no CPU implementation).
2. The benchmark grid ``conf/bench/gpu_check.yaml`` through the same code as every other run
   (``vqformer.benchmark.run``): kernel VQ (chunked, flex) vs SDPA (flash backend) vs the materialised
   quadratic arm at 8k/32k/131k; the 190M paper model (shga/mqa/mha, VQ vs full) at 8k and 32k; one
   190M shga step at 131k with ``remat`` for its peak memory. Same CSV / JSON / plot / table as the CPU run.
3. A 2-GPU DDP training step (190M shga, 8k per GPU) when two GPUs exist: gradients agree across ranks
   after the all-reduce.

Results go to ``logs/bench/<device name>/`` (e.g. ``nvidia-h100-80gb-hbm3``) with a ``gpu_check.json``
summary; ``make refresh-bench`` copies them into ``experiments/throughput/`` to be committed. Without CUDA it stops at once with exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
GPU_TESTS = ["tests/nn/test_vq_flex.py", "tests/nn/test_mixed_precision.py"]
TEST_TIMEOUT_S = 300          # mostly FlexAttention compiles (forward + backward per shape)


def device_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (the results folder)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def compose(device_tag: str, overrides: list[str] = ()):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return hydra_compose("bench", overrides=["bench=gpu_check", f"bench.device_tag={device_tag}", *overrides])


def run_tests(log) -> dict:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *GPU_TESTS]
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TEST_TIMEOUT_S,
                           env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
        tail, rc = (p.stdout + p.stderr)[-4000:], p.returncode
    except subprocess.TimeoutExpired as e:
        tail, rc = f"timed out after {TEST_TIMEOUT_S} s\n{(e.stdout or b'')[-2000:]!r}", -1
    log(f"[gpu-check] tests: rc={rc} ({time.perf_counter() - t0:.0f} s)\n{tail[-1500:]}")
    return {"command": " ".join(cmd), "returncode": rc, "passed": rc == 0, "output_tail": tail,
            "seconds": time.perf_counter() - t0}


PAPER_190M = dict(d_model=768, d_k=128, d_v=1536, n_layer=24, n_code=512, block_len=512)


def _ddp_worker(rank: int, world: int, init_file: str, T: int, out_file: str, device_type: str = "cuda",
                model_kw: dict | None = None) -> None:
    """One DDP rank: three training steps on its own data; rank 0 checks that gradients agree across ranks
    after the all-reduce. ``device_type=cpu`` (gloo) is the CPU test of the same code."""
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    from vqformer.models import TransformerVQ, TransformerVQConfig

    cuda = device_type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    dev = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(rank)
    torch.manual_seed(0)
    cfg = TransformerVQConfig(**(model_kw or PAPER_190M))
    model = DDP(TransformerVQ(cfg).to(dev), device_ids=[rank] if cuda else None, find_unused_parameters=True)
    gen = torch.Generator().manual_seed(rank)                  # different data on each rank
    tokens = torch.randint(0, cfg.vocab_size, (1, T + 1), generator=gen).to(dev)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times = []
    for _ in range(3):
        sync()
        t = time.perf_counter()
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=cuda):
            logits, aux = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten()) + cfg.c_beta * aux.commit_loss
        loss.backward()
        sync()
        times.append(time.perf_counter() - t)
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        model.zero_grad(set_to_none=True)
    gathered = [torch.zeros_like(grad) for _ in range(world)]
    dist.all_gather(gathered, grad)
    local = torch.cat([p.flatten() for p in model.parameters()]).norm()
    if rank == 0:
        diff = max((g - gathered[0]).abs().max().item() for g in gathered)
        Path(out_file).write_text(json.dumps({"world": world, "T_per_gpu": T, "step_s": times,
                                              "tokens_per_s": world * T / sorted(times)[1],
                                              "max_grad_diff_across_ranks": diff, "param_norm": local.item(),
                                              "grads_agree": diff <= 1e-6 * max(1.0, grad.abs().max().item())}))
    dist.destroy_process_group()


def run_ddp(log, T: int = 8192, device_type: str = "cuda", model_kw: dict | None = None) -> dict:
    n = torch.cuda.device_count() if device_type == "cuda" else 2
    if n < 2:
        return {"status": f"not run: {n} GPU(s)"}
    import tempfile

    import torch.multiprocessing as mp

    from vqformer.gpu_check import _ddp_worker as worker   # picklable by name under `python -m`

    with tempfile.TemporaryDirectory() as tmp:
        out_file = str(Path(tmp) / "ddp.json")
        mp.spawn(worker, args=(2, str(Path(tmp) / "init"), T, out_file, device_type, model_kw), nprocs=2,
                 join=True)
        res = json.loads(Path(out_file).read_text())
    res["status"] = "ok" if res["grads_agree"] else "gradients differ across ranks"
    log(f"[gpu-check] ddp: {res}")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="results folder (default experiments/throughput/<device name>)")
    ap.add_argument("--skip-tests", action="store_true", help="only the benchmark and the DDP step")
    ap.add_argument("--plan", action="store_true", help="print the composed benchmark grid and exit (no GPU needed)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for the grid, e.g. bench.kernel.batch=2")
    args = ap.parse_args(argv)
    log = lambda msg: print(msg, flush=True)
    if args.plan:
        from omegaconf import OmegaConf
        print(OmegaConf.to_yaml(compose("gpu", args.overrides).bench))
        return 0
    if not torch.cuda.is_available():
        print("gpu-check needs a CUDA device: torch.cuda.is_available() is False "
              f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}). Nothing was run.", file=sys.stderr)
        return 2

    from .benchmark import run
    from .results import throughput
    name = torch.cuda.get_device_name(0)
    tag = device_slug(name)
    out_dir = Path(args.out) if args.out else ROOT / "logs" / "bench" / tag   # `make refresh-bench` records it
    t0 = time.perf_counter()
    summary = {"device": name, "device_count": torch.cuda.device_count(), "torch": torch.__version__}
    summary["tests"] = {"status": "skipped"} if args.skip_tests else run_tests(log)
    cfg = compose(tag, [f"out_dir={out_dir}", *args.overrides])
    command = "python -m vqformer.gpu_check " + " ".join(argv if argv is not None else sys.argv[1:])
    res = run(cfg, out_dir, command=command.strip(), log=log)
    throughput.write(res, out_dir)
    summary["targets"] = res["targets"]
    remat = [p for p in res["points"] if p["config"] == "paper_remat"]
    summary["remat_131k"] = [{k: p.get(k) for k in ("arm", "T", "status", "mem_peak_mb", "mem_delta_mb",
                                                    "tokens_per_s")} for p in remat]
    summary["ddp"] = run_ddp(log)
    summary["seconds"] = time.perf_counter() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_check.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    log(f"[gpu-check] done in {summary['seconds']:.0f} s -> {out_dir}")
    tests_failed = summary["tests"].get("passed") is False
    ddp = str(summary["ddp"]["status"])
    return 1 if tests_failed or not (ddp == "ok" or ddp.startswith("not run")) else 0


if __name__ == "__main__":
    sys.exit(main())
