"""`make gpu-check` without a GPU: it stops at once with a clear message; its grid composes as specified;
the same grid runs end to end on CPU at tiny sizes through the benchmark code (new arms: vq_flex and the
compiled variant, SDPA's backend knob, per-config attention types, ``remat``, a config switched off)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vqformer.benchmark import run
from vqformer.benchmark.arms import build_step
from vqformer.gpu_check import compose, device_slug
from vqformer.results import throughput

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_without_cuda_it_fails_fast_and_says_why(tmp_path):
    p = subprocess.run([sys.executable, "-m", "vqformer.gpu_check", "--out", str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 2
    assert "needs a CUDA device" in p.stderr and "Nothing was run" in p.stderr
    assert not (tmp_path / "x").exists()


def test_grid_is_the_issue_grid():
    b = compose("nvidia-h100").bench
    assert b.device == "cuda" and b.dtype == "bfloat16" and b.device_tag == "nvidia-h100"
    from vqformer.benchmark.grid import length_grid
    assert length_grid(b.kernel.lengths) == [8192, 32768, 131072]
    assert set(b.kernel.arms) == {"vq", "vq_flex", "sdpa", "quadratic"} and b.kernel.sdpa_backend == "flash"
    paper = b.model.configs.paper
    assert length_grid(paper.lengths) == [8192, 32768] and set(paper.head_types) == {"shga", "mqa", "mha"}
    assert set(b.model.attn_types) == {"vq", "full"} and paper.model.n_layer == 24 and paper.model.d_model == 768
    remat = b.model.configs.paper_remat
    assert list(remat.lengths) == [131072] and remat.model.remat is True
    assert b.model.configs.small is None
    assert device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_kernel_variants_compute_the_same_attention():
    spec = {"level": "kernel", "T": 64, "batch": 1, "device": "cpu", "dtype": "float64", "attn": "vq",
            "params": {"heads": 2, "d_k": 8, "d_v": 4, "n_code": 16, "block_len": 16}}
    outs = {a: build_step(dict(spec, arm=a)).forward().detach() for a in ("vq", "vq_eager", "vq_flex")}
    for a in ("vq_eager", "vq_flex"):
        torch.testing.assert_close(outs[a], outs["vq"], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="vq_triton"):
        build_step(dict(spec, arm="vq_triton"))


def test_the_gpu_grid_runs_end_to_end_on_cpu_at_tiny_sizes(tmp_path):
    tiny = "{d_model: 32, d_k: 16, d_v: 32, n_layer: 1, n_code: 16, block_len: 16, vocab_size: 259"
    cfg = compose("tiny", [
        "bench.device=cpu", "bench.dtype=float32", "bench.memory=none", "bench.matmul_n=64", "bench.warmup=0",
        "bench.repeats=1", "bench.kernel.lengths.min=64", "bench.kernel.lengths.max=64", "bench.kernel.heads=1", "bench.kernel.d_k=16",
        "bench.kernel.d_v=16", "bench.kernel.n_code=16", "bench.kernel.block_len=16",
        "bench.model.configs.paper.lengths.min=64", "bench.model.configs.paper.lengths.max=64", f"bench.model.configs.paper.model={tiny}}}",
        "bench.model.configs.paper_flex.lengths.min=64",
        "bench.model.configs.paper_flex.lengths.max=64", f"bench.model.configs.paper_flex.model={tiny}, kernel: flex}}",
        "bench.model.configs.paper_remat.lengths=[128]", f"bench.model.configs.paper_remat.model={tiny}, remat: true}}",
        f"out_dir={tmp_path}"])
    result = run(cfg, tmp_path, command="pytest", log=lambda *a: None)
    throughput.write(result, tmp_path)     # what gpu_check does after the run
    for name in ("points.csv", "results.json", "table.md", "throughput.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    arms = {(r["level"], r["arm"]): r for r in result["points"]}
    assert {("kernel", a) for a in ("vq", "vq_flex", "sdpa", "quadratic")} <= set(arms)
    assert {("model", f"paper/{a}/{h}") for a in ("vq", "full") for h in ("shga", "mqa", "mha")} <= set(arms)
    assert ("model", "paper_remat/vq/shga") in arms and ("model", "paper_remat/full/shga") not in arms
    assert ("model", "paper_flex/vq/shga") in arms and not any(a.startswith("small/") for _, a in arms)
    assert all(r["status"] == "ok" for r in result["points"]), [r["status"] for r in result["points"]]
    rat = {(e["config"], e["baseline"]) for e in result["ratios"] if e["level"] == "kernel"}
    assert {("kernel", "sdpa"), ("kernel:vq_flex", "sdpa"), ("kernel:vq_flex", "quadratic")} <= rat
    assert any("vq_flex/sdpa" in t["target"] for t in result["targets"])
    assert json.loads((tmp_path / "results.json").read_text())["meta"]["command"] == "pytest"


def test_cpu_kernels_grid_composes():
    from vqformer.benchmark.grid import length_grid
    from vqformer.benchmark.runner import arm_specs
    cfg = compose("x", ["bench=cpu_kernels"])     # the later bench= wins over gpu_check
    b = cfg.bench
    assert b.device == "cpu" and list(b.kernel.arms) == ["vq_eager", "vq_chunked", "vq_flex", "vq_compiled"]
    assert length_grid(b.kernel.lengths) == [4096, 16384, 65536]
    assert {a["attn"] for a in arm_specs("kernel", b.kernel)} == {"vq"}
    assert b.model.configs.small_compiled.model.compile is True
    assert length_grid(b.model.configs.small.lengths) == [8192, 16384, 32768, 65536, 131072]


@pytest.mark.slow          # ~25 s: two processes importing torch on a loaded 2-core machine
def test_ddp_step_code_runs_on_cpu_with_gloo():
    """The DDP step of gpu-check, on CPU (gloo, 2 processes, tiny model): after the all-reduce both ranks
    hold the same gradient although they trained on different data."""
    from vqformer.gpu_check import run_ddp
    tiny = dict(vocab_size=11, d_model=16, d_k=8, d_v=16, n_layer=1, n_code=8, block_len=4)
    res = run_ddp(lambda *a: None, T=16, device_type="cpu", model_kw=tiny)
    assert res["status"] == "ok" and res["world"] == 2 and len(res["step_s"]) == 3
    assert res["max_grad_diff_across_ranks"] == 0.0


@pytest.mark.slow          # ~40 s: inductor compiles the eager kernel's forward and backward
def test_compiled_kernel_arm_equals_eager():
    spec = {"level": "kernel", "T": 64, "batch": 1, "device": "cpu", "dtype": "float32", "attn": "vq",
            "arm": "vq_compiled", "params": {"heads": 1, "d_k": 16, "d_v": 16, "n_code": 16, "block_len": 16}}
    built = build_step(spec)
    built.step()
    ref = build_step(dict(spec, arm="vq_eager")).forward()
    torch.testing.assert_close(built.forward(), ref, rtol=1e-5, atol=1e-5)


def test_a_failing_arm_is_recorded_and_the_run_goes_on(tmp_path):
    """gpu-check runs once on a lent machine: with ``skip_errors`` an arm that raises (here a real error:
    block_len 48 does not divide T, which only the VQ arm checks) becomes a ``failed:`` row and every
    other arm is still measured; benches without ``skip_errors`` still stop on it."""
    common = ["bench.device=cpu", "bench.dtype=float32", "bench.memory=none", "bench.matmul_n=64", "bench.warmup=0",
              "bench.repeats=1", "bench.kernel.lengths.min=64", "bench.kernel.lengths.max=128",
              "bench.kernel.lengths.factor=2", "bench.kernel.heads=1", "bench.kernel.d_k=16", "bench.kernel.d_v=16",
              "bench.kernel.n_code=16", "bench.kernel.block_len=48", "bench.model.enabled=false",
              "bench.layer.enabled=false", "bench.profile.enabled=false", f"out_dir={tmp_path}"]
    cfg = compose("tiny", common)
    assert cfg.bench.skip_errors is True
    result = run(cfg, tmp_path, command="pytest", log=lambda *a: None)
    st = {(r["arm"], r["T"]): r["status"] for r in result["points"]}
    assert st["vq", 64].startswith("failed: ConfigError: model.block_len=48 must divide T=64")
    assert st["vq_flex", 64].startswith("failed: ConfigError")
    assert st["vq", 128].startswith("skipped: failed at T=64")
    assert st["sdpa", 128] == "ok" and st["quadratic", 64] == "ok"
    with pytest.raises(ValueError, match="must divide"):
        run(compose("tiny", [o for o in common if "factor" not in o] + ["bench=cpu_quick"]), tmp_path,
            log=lambda *a: None)
