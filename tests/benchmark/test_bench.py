"""The throughput benchmark's logic (no timing assertions): length grid, FLOP formulas, skip rule,
ratio / target bookkeeping, the CPU memory probe, and a tiny end-to-end run that writes every output."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import BENCH_TINY, progress_lines
from vqformer.benchmark import run
from vqformer.benchmark.arms import build_step, predicted_memory
from vqformer.benchmark.grid import (attention_flops, extrapolate, flop_ratio, length_grid, plan_point,
                                     refit_repeats)
from vqformer.benchmark.memory import cpu_step_memory, probe_subprocess
from vqformer.benchmark.report import COLUMNS
from vqformer.benchmark.runner import resolve_device, run_benchmark
from vqformer.results import throughput
from vqformer.results.throughput import ratios, targets

CONF = Path(__file__).resolve().parents[2] / "conf"

def bench_cfg(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("bench", overrides=list(overrides))


# ---------------------------------------------------------------------------------------------- grid


def test_length_grid_is_1024_times_powers_of_two():
    assert length_grid({"min": 1024, "max": 131072}) == [1024 * 2 ** i for i in range(8)]
    assert length_grid({"min": 2048, "max": 8192, "factor": 4}) == [2048, 8192]
    assert length_grid({"min": 1024, "max": 3000}) == [1024, 2048]
    assert length_grid([128, 64, 64]) == [64, 128]
    with pytest.raises(ValueError):
        length_grid({"min": 4096, "max": 1024})


def test_flop_ratio_and_the_issue_thresholds():
    assert flop_ratio(8192, 512, 512) == pytest.approx(8192 / 2 / 1536)
    # 80% of the FLOP ratio: the issue's >= 2.1x at 8k, >= 8.5x at 32k, >= 34x at 131k
    for T, need in ((8192, 2.1), (32768, 8.5), (131072, 34)):
        assert 0.8 * flop_ratio(T, 512, 512) == pytest.approx(need, rel=0.02)
    # the ratio is exactly SDPA's causal FLOPs over VQ's, independent of the widths
    for T in (1024, 65536):
        sd = attention_flops("sdpa", T, 128, 64)
        vq = attention_flops("vq", T, 128, 64, n_code=512, block_len=512)
        assert sd / vq == pytest.approx(flop_ratio(T, 512, 512))
    # per block L·(S+2L)·(Dk+Dv)·2 forward, ×3 with the backward
    T, L, S, Dk, Dv = 4096, 512, 256, 128, 32
    assert attention_flops("vq", T, Dk, Dv, S, L) == (T // L) * L * (S + 2 * L) * (Dk + Dv) * 2 * 3
    assert attention_flops("quadratic", T, Dk, Dv, backward=False) == 2 * T * T * (Dk + Dv)


def test_skip_rule():
    gib = 2 ** 30
    kw = dict(warmup=1, repeats=5, time_budget_s=60, mem_budget_bytes=8 * gib)
    # unknown predictions (first length) always run with the full plan
    p = plan_point(None, None, **kw)
    assert p.run and (p.n_warmup, p.n_repeat) == (1, 5) and p.status == "ok"
    # memory over the budget
    p = plan_point(1.0, 9 * gib, **kw)
    assert not p.run and p.status.startswith("skipped: memory")
    # time: 2 probe + 1 warm-up + 1 repeat at 20 s = 80 s > 60 s
    p = plan_point(20.0, None, probe_runs=2, **kw)
    assert not p.run and p.status.startswith("skipped: time budget")
    # fits with fewer repeats: 60 // 12 = 5 steps - 2 probe - 1 warm-up = 2 repeats
    p = plan_point(12.0, None, probe_runs=2, **kw)
    assert p.run and p.n_repeat == 2
    assert refit_repeats(p, step_time_s=100.0, time_budget_s=60, spent_s=50).n_repeat == 1   # min_repeats
    assert extrapolate((1024, 2.0), 4096, 2.0) == pytest.approx(32.0)
    assert extrapolate(None, 4096, 1.0) is None


def test_analytic_memory_guard_scales_as_expected():
    spec = {"level": "kernel", "T": 1024, "batch": 1,
            "params": {"heads": 1, "d_k": 8, "d_v": 8, "n_code": 16, "block_len": 16}}
    q1, q2 = (predicted_memory(dict(spec, attn="quadratic", T=t)) for t in (1024, 2048))
    v1, v2 = (predicted_memory(dict(spec, attn="vq", T=t)) for t in (1024, 2048))
    assert q2 == 4 * q1 and v2 == 2 * v1
    assert predicted_memory(dict(spec, attn="sdpa")) is None


# ----------------------------------------------------------------------------------- ratios / targets


def _pt(level, attn, T, tps, config=None, head=""):
    return {"level": level, "config": config or level, "arm": attn, "attn": attn, "head_type": head, "T": T,
            "status": "ok", "tokens_per_s": tps}


def test_ratios_and_targets_are_marked_honestly():
    pts = [_pt("kernel", "vq", 8192, 100.0), _pt("kernel", "sdpa", 8192, 40.0),       # 2.5x >= 2.13: met
           _pt("kernel", "vq", 32768, 100.0), _pt("kernel", "sdpa", 32768, 20.0),     # 5x < 8.53: not met
           _pt("kernel", "vq", 4096, 100.0),
           dict(_pt("kernel", "quadratic", 32768, None), status="skipped: memory (...)"),
           _pt("model", "vq", 8192, 35.0, "small", "shga"), _pt("model", "full", 8192, 10.0, "small", "shga")]
    params = {"kernel": {"n_code": 512, "block_len": 512}, "small": {"n_code": 512, "block_len": 512}}
    rat = ratios(pts, params)
    k = {(e["T"], e["baseline"]): e for e in rat if e["level"] == "kernel"}
    assert k[(8192, "sdpa")]["ratio"] == pytest.approx(2.5)
    assert k[(32768, "quadratic")]["ratio"] is None and k[(32768, "quadratic")]["why"].startswith("skipped")
    tg = {t["target"]: t["status"] for t in targets(pts, rat)}
    assert tg["kernel VQ/sdpa at T=8192 >= 80% of FLOP ratio 2.67"] == "met"
    assert tg["kernel VQ/sdpa at T=32768 >= 80% of FLOP ratio 10.67"] == "not met"
    scaling = next(s for t, s in tg.items() if "131072" in t)
    assert scaling.startswith("not measured")
    assert tg["model small/shga VQ/full at T=8192 > 3x (paper)"] == "met"


# --------------------------------------------------------------------------------------------- probe


def test_memory_probe_runs_in_a_fresh_process_and_reports_failures():
    spec = {"level": "kernel", "attn": "vq", "T": 64, "batch": 1, "device": "cpu", "dtype": "float32",
            "params": {"heads": 1, "d_k": 8, "d_v": 8, "n_code": 16, "block_len": 16}, "threads": 1}
    res = probe_subprocess(spec, timeout_s=60)
    assert res["mem_method"].startswith("cpu-subprocess") and res["mem_delta_mb"] >= 0
    bad = probe_subprocess(dict(spec, attn="nope"), timeout_s=60)
    assert "error" in bad and "failed" in bad["error"]


def test_in_process_memory_reports_a_delta():
    spec = {"level": "kernel", "attn": "quadratic", "T": 256, "batch": 1, "device": "cpu", "dtype": "float32",
            "params": {"heads": 1, "d_k": 8, "d_v": 8, "n_code": 16, "block_len": 16}}
    res = cpu_step_memory(build_step(spec).step)
    assert res["mem_method"].startswith("cpu-inprocess") and res["mem_delta_mb"] >= 0


def test_every_kernel_arm_computes_the_same_attention():
    """Same q, k, v (k = codebook[codes]): VQ attention without band bias is exact causal attention
    over the quantized keys, so all three arms agree; each step runs forward + backward."""
    spec = {"level": "kernel", "T": 64, "batch": 2, "device": "cpu", "dtype": "float64",
            "params": {"heads": 2, "d_k": 8, "d_v": 4, "n_code": 16, "block_len": 16}}
    built = {a: build_step(dict(spec, attn=a)) for a in ("vq", "sdpa", "quadratic")}
    outs = {a: b.forward().detach() for a, b in built.items()}
    torch.testing.assert_close(outs["vq"], outs["quadratic"])
    torch.testing.assert_close(outs["sdpa"], outs["quadratic"])
    for b in built.values():
        b.step()


# ---------------------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("name", ["cpu_quick", "cpu", "gpu"])
def test_bench_configs_compose(name):
    cfg = bench_cfg(f"bench={name}")
    assert cfg.out_dir.endswith(cfg.bench.device_tag)
    assert set(cfg.bench.kernel.arms) == {"vq", "sdpa", "quadratic"}
    assert set(cfg.bench.layer.head_types) == {"shga", "mqa", "mha"}
    if name == "gpu" and not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            resolve_device(cfg.bench.device)


def test_tiny_run_writes_every_output(tmp_path):
    # a memory budget that the quadratic arm's analytic guard exceeds at T=128 (327 KiB > ~210 KiB)
    # cpu_heap=release: glibc's default, so that this test leaves the pytest process's allocator as it was
    cfg = bench_cfg(*BENCH_TINY, "bench.mem_budget_gb=0.0002", "bench.cpu_heap=release", f"out_dir={tmp_path}")
    result = run(cfg, tmp_path, command="pytest", log=lambda *a: None)
    assert {p.name for p in tmp_path.iterdir()} == {"points.csv", "results.json", "profile_vq_kernel_T64.txt"}
    throughput.write(result, tmp_path)      # what python -m vqformer.bench does next
    for name in ("points.csv", "results.json", "table.md", "throughput.png", "profile_vq_kernel_T64.txt"):
        assert (tmp_path / name).stat().st_size > 0, name
    with open(tmp_path / "points.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    arms = {(r["level"], r["arm"]) for r in rows}
    assert {("kernel", a) for a in ("vq", "sdpa", "quadratic")} <= arms
    assert {("layer", f"{a}/{h}") for a in ("vq", "full") for h in ("shga", "mqa", "mha")} <= arms
    assert {("model", "small/vq/shga"), ("model", "small/full/shga")} <= arms
    assert {int(r["T"]) for r in rows} == {64, 128}
    quad = {int(r["T"]): r["status"] for r in rows if r["arm"] == "quadratic"}
    assert quad[64] == "ok" and quad[128].startswith("skipped: memory")
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(float(r["tokens_per_s"]) > 0 and r["n_repeat"] == "1" for r in ok)
    data = json.loads((tmp_path / "results.json").read_text())
    assert {"meta", "config", "points", "ratios", "targets", "matmul", "profile"} <= set(data)
    assert data["meta"]["command"] == "pytest" and "torch" in data["meta"] and "cpu_model" in data["meta"]
    assert len(data["points"]) == len(rows) == len(result["points"])
    table = (tmp_path / "table.md").read_text()
    assert "## Targets" in table and "VQ/baseline" in table and "skipped: memory" in table
    assert "- CPU heap: glibc default" in table          # the allocator policy the timings ran under
    assert all(t["status"].split(" ")[0] in ("met", "not") for t in data["targets"])


def test_a_bad_cpu_heap_policy_names_the_key(tmp_path):
    cfg = bench_cfg(*BENCH_TINY, "bench.cpu_heap=never", f"out_dir={tmp_path}")
    with pytest.raises(ValueError, match=r"bench.cpu_heap='never' is invalid: choose one of \['keep', 'release'\]"):
        run(cfg, tmp_path, command="pytest", log=lambda *a: None)
    assert not any(tmp_path.iterdir())                  # before any work


def test_benchmark_counts_points_done_of_total(capfd):
    cfg = bench_cfg(*BENCH_TINY, "bench.layer.enabled=false", "bench.model.enabled=false", "bench.matmul_n=0")
    result = run_benchmark(cfg, log=lambda *a: None)
    lines = progress_lines(capfd.readouterr().err, "bench")
    n = len(result["points"])
    assert n == 6 and lines[-1] == (n, n), lines          # 3 kernel arms x T in {64, 128}
    assert [d for d, _ in lines] == sorted(d for d, _ in lines) and all(t == n for _, t in lines)
