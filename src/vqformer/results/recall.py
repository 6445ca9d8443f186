"""Recall results: collect finished recall runs, evaluate them at longer lengths, write the table and the
recall–memory plot (docs/ovq.md §2.1–2.2: accuracy against the bytes of state a layer keeps per sequence).

    python -m vqformer.results recall --runs logs/multiruns/recall [--out logs/results/recall] \
        [--lengths 1024:16,4096:16 --passkey 1024,65536 --ovq-n-max 16,256 --n-examples 64]
    python -m vqformer.results recall --from-csv experiments/recall/runs.csv    # re-plot a recorded table

Each run directory holds ``config.yaml`` and the ``DONE`` metrics of ``vqformer.lit.runner.train``. Rows:
``source=val`` are the logged validation accuracies per test segment; ``source=lengthgen`` re-evaluates the
checkpoint on fresh MQAR test segments ``L:D`` (seed stream "test", indices from 1000); ``source=passkey``
on generated needles (``data/passkey.py``); ``--ovq-n-max`` re-evaluates OVQ runs with another test-time
dictionary capacity (arm ``<arm>@<n>``).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ..data.files import atomic_write_text
from ..progress import progress
from .paper import EXPECTED

FIELDS = ["experiment", "arm", "d_model", "seed", "source", "L", "D", "acc", "state_bytes", "run"]


def arm_name(m) -> str:
    """A short label of the attention arm from the model config."""
    from ..models import TransformerVQConfig
    cfg = TransformerVQConfig(**OmegaConf.to_container(m, resolve=True))
    ovq = cfg.mixer_config("ovq")
    one = {"full": "full", "vq": f"tvq-{cfg.n_code}", "swa": f"swa-{cfg.mixer_config('swa').window}",
           "ovq": f"ovq-{ovq.n_max}"}
    pattern = cfg.layer_pattern
    if not pattern:
        return one[cfg.attn_type]
    if pattern == ["swa", "full"]:
        return "sw-nope" if cfg.mixer_config("full").nope else "sw-full"
    if pattern == ["swa", "vq"]:
        return f"sw-vq-{cfg.n_code}"
    if pattern == ["swa", "ovq"]:
        switches = [("local", False, "local"), ("growth", "saturating", None), ("seeding", "farthest", None),
                    ("step", "count", None), ("read", "gmr", None)]
        extra = "".join(f"-{tag or getattr(ovq, k)}" for k, default, tag in switches if getattr(ovq, k) != default)
        return f"sw-ovq-{ovq.n_max}{extra}"
    return "-".join(pattern)


def _model(cfg):
    from ..models import TransformerVQ, TransformerVQConfig
    return TransformerVQ(TransformerVQConfig(**OmegaConf.to_container(cfg.model, resolve=True)))


def set_ovq_n_max(model, n: int) -> None:
    """Change the dictionary capacity at test time (the OVQ paper's test-time memory knob, §1.2)."""
    model.cfg.mixer_config("ovq").n_max = n      # the OVQ units read their knobs from this shared config


def _passkey_count(n_examples: int, L: int) -> int:
    return min(n_examples, max(4, n_examples * 1024 // L))     # fewer needles at 16k-64k (CPU time)


def _datasets(cfg, segments, passkeys, n_examples):
    """(source, L, D, inputs, labels) for the MQAR segments L:D and the passkey lengths, seeded by the run."""
    from ..data.mqar import MQARSegment, load_segment
    from ..data.passkey import passkey

    for i, (L, D) in enumerate(segments):
        x, y = load_segment(None, MQARSegment(L, D, n_examples), "test", 1000 + i, vocab_size=cfg.data.vocab_size,
                            seed=cfg.seed, power_a=cfg.data.power_a, num_passes=cfg.data.num_passes,
                            random_non_queries=cfg.data.random_non_queries,
                            query_gap=cfg.data.get("query_gap", 0))
        yield "lengthgen", L, D, x, y
    for i, L in enumerate(passkeys):
        n = _passkey_count(n_examples, L)
        x, y = passkey(cfg.data.vocab_size, n, L, seed=10_000 + cfg.seed * 100 + i)
        yield "passkey", L, 1, x, y


def evaluate_lengths(run: Path, cfg, segments: list[tuple[int, int]], n_examples: int, batch: int = 16,
                     ovq_n_max: int | None = None, passkeys: list[int] = (), max_quadratic_len: int = 16384):
    """Accuracy of a run's checkpoint on each generated set; models with full-attention units skip lengths
    above ``max_quadratic_len`` (minutes per example at 64k on one CPU thread)."""
    from ..lit.recall_module import RecallModule

    module = RecallModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu").eval()
    if ovq_n_max:
        set_ovq_n_max(module.model, ovq_n_max)
    out = []
    window = module.eval_window
    quadratic = "full" in module.model.cfg.layer_types()
    # tokens to score (minutes to hours at 16k-64k on a CPU): the bar's rate and ETA are in tokens
    lengths = [(L, n_examples) for L, _ in segments] + [(L, _passkey_count(n_examples, L)) for L in passkeys]
    bar = progress(total=sum(L * n for L, n in lengths if not (quadratic and L > max_quadratic_len)),
                   desc=f"recall {run.name}" + (f" @n_max={ovq_n_max}" if ovq_n_max else ""), unit="tok",
                   unit_scale=True)
    for src, L, D, x, y in _datasets(cfg, segments, passkeys, n_examples):
        if quadratic and L > max_quadratic_len:
            continue
        # Shorter windows (state carried, same result) bound the full-attention score tensor at 16k-64k.
        module.eval_window = min(window, max(64, (1 << 24) // L))
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        bs = max(1, min(batch, (1 << 16) // L))
        accs = []
        for b0 in range(0, len(x), bs):
            mask = y[b0:b0 + bs] != -100
            tgt = torch.where(mask, y[b0:b0 + bs], 0)
            _, correct, count = module.predict_batch(x[b0:b0 + bs], tgt, mask, module.model.empty_state())
            accs += (correct / count).tolist()
            bar.update(mask.shape[0] * L)
        out.append((src, L, D, sum(accs) / len(accs)))
    bar.close()
    return out


def collect(runs: Path, lengths: list[tuple[int, int]], n_examples: int, ovq_n_max: list[int],
            passkeys: list[int] = ()) -> list[dict]:
    rows = []
    for done in sorted(runs.rglob("DONE")):
        run = done.parent
        cfg = OmegaConf.load(run / "config.yaml")
        if cfg.get("task") != "recall":
            continue
        metrics = json.loads(done.read_text())
        model = _model(cfg)
        base = dict(experiment=cfg.name, arm=arm_name(cfg.model), d_model=cfg.model.d_model, seed=cfg.seed,
                    run=str(run.relative_to(runs)))
        for seg in cfg.data.test_segments:
            L, D = seg.input_seq_len, seg.num_kv_pairs
            acc = metrics.get(f"val/acc/L{L}_D{D}")
            if acc is not None:
                rows.append(dict(base, source="val", L=L, D=D, acc=acc, state_bytes=model.state_bytes(L)))
        if (lengths or passkeys) and (run / "checkpoints" / "last.ckpt").exists():
            for src, L, D, acc in evaluate_lengths(run, cfg, lengths, n_examples, passkeys=passkeys):
                rows.append(dict(base, source=src, L=L, D=D, acc=acc, state_bytes=model.state_bytes(L)))
            if "ovq" in model.cfg.layer_types():
                trained = model.cfg.mixer_config("ovq").n_max
                for n in ovq_n_max:
                    if n == trained:
                        continue
                    set_ovq_n_max(model, n)
                    label = dict(base, arm=f"{base['arm']}@{n}")
                    for src, L, D, acc in evaluate_lengths(run, cfg, lengths, n_examples, ovq_n_max=n,
                                                           passkeys=passkeys):
                        rows.append(dict(label, source=src, L=L, D=D, acc=acc,
                                         state_bytes=model.state_bytes(L)))
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and spread over seeds per (experiment, arm, width, source, L, D)."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["experiment"], r["arm"], int(r["d_model"]), r["source"], int(r["L"]), int(r["D"]),
                int(r["state_bytes"]))].append(float(r["acc"]))
    out = []
    for (exp, arm, d, src, L, D, sb), accs in sorted(groups.items()):
        out.append(dict(experiment=exp, arm=arm, d_model=d, source=src, L=L, D=D, state_bytes=sb, seeds=len(accs),
                        acc_mean=statistics.fmean(accs), acc_min=min(accs), acc_max=max(accs)))
    return out


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(s["experiment"], s["source"], s["L"], s["D"]) for s in summary})
    cols = min(3, len(panels))
    rows_n = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.6 * cols, 3.6 * rows_n), squeeze=False)
    arms = sorted({s["arm"] for s in summary})
    colors = {a: plt.cm.tab20(i % 20) for i, a in enumerate(arms)}
    markers = {a: "osD^v<>ph*X"[i % 11] for i, a in enumerate(arms)}
    for ax, (exp, src, L, D) in zip(axes.flat, panels):
        for s in (s for s in summary if (s["experiment"], s["source"], s["L"], s["D"]) == (exp, src, L, D)):
            ax.errorbar(s["state_bytes"], s["acc_mean"], yerr=[[s["acc_mean"] - s["acc_min"]],
                        [s["acc_max"] - s["acc_mean"]]], fmt=markers[s["arm"]], color=colors[s["arm"]], capsize=3,
                        label=f'{s["arm"]} (d={s["d_model"]})')
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        task = f"passkey L={L}" if src == "passkey" else f"MQAR L={L}, D={D}"
        ax.set_title(f"{task}: {src}, trained {exp.split('_', 1)[-1]}", fontsize=9)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("attention state per sequence (bytes, fp32)")
        ax.set_ylabel("query accuracy")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    seen = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen.keys()), loc="lower center", ncol=min(4, len(seen)), fontsize=8,
               bbox_to_anchor=(0.5, -0.02 - 0.03 * math.ceil(len(seen) / 4)))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")


def write_csv(rows: list[dict], path: Path, fields: list[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k]) for k in fields})
    atomic_write_text(path, buf.getvalue())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vqformer.results recall", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, default=Path("logs/multiruns/recall"))
    p.add_argument("--out", type=Path, default=Path("logs/results/recall"),
                   help="runs.csv, results.csv and recall_memory.png go here (default: logs/results/recall)")
    p.add_argument("--lengths", default="", help="extra MQAR test segments L:D,L:D evaluated from checkpoints")
    p.add_argument("--n-examples", type=int, default=64)
    p.add_argument("--from-csv", type=Path, metavar="RUNS_CSV",
                   help="redo the summary and plot from a runs.csv written before (no runs are read)")
    p.add_argument("--passkey", default="", help="passkey lengths evaluated from checkpoints, e.g. 1024,65536")
    p.add_argument("--ovq-n-max", default="", help="also evaluate OVQ runs with these test-time n_max, e.g. 16,256")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    lengths = [tuple(int(v) for v in s.split(":")) for s in a.lengths.split(",") if s]
    if a.from_csv:
        if not a.from_csv.is_file():
            raise SystemExit(f"--from-csv: {a.from_csv} is not a file (a runs.csv written by this command)")
        with open(a.from_csv) as f:
            rows = list(csv.DictReader(f))
    else:
        rows = collect(a.runs, lengths, a.n_examples, [int(n) for n in a.ovq_n_max.split(",") if n],
                       [int(n) for n in a.passkey.split(",") if n])
    if not rows:
        raise SystemExit(f"no finished recall runs in {a.from_csv or a.runs}")
    a.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, a.out / "runs.csv", FIELDS)
    summary = summarize(rows)
    write_csv(summary, a.out / "results.csv", list(summary[0]))
    plot(summary, a.out / "recall_memory.png")
    print(f"[results] recall rows: {EXPECTED['recall'].text()}")
    for s in summary:
        print(f'{s["experiment"]:<24} {s["arm"]:<14} d={s["d_model"]:<4} {s["source"]:<9} L={s["L"]:<5} D={s["D"]:<4} '
              f'acc {s["acc_mean"]:.3f} [{s["acc_min"]:.3f}, {s["acc_max"]:.3f}] n={s["seeds"]} '
              f'state {s["state_bytes"]} B')
