"""Finished runs against the number their table row should reach (``paper.EXPECTED``: value ± band):
``python -m vqformer.results expected``.

    python -m vqformer.results expected                          # runs under logs/ -> logs/results/expected/
    python -m vqformer.results expected --runs DIR [--runs DIR]  # other run folders (e.g. a cluster's logs)

Each finished run (a ``DONE`` marker) is matched to its rows by its config, as the tables do. A run is judged
on the whole-split score ``python -m vqformer.evaluate`` wrote beside it (``eval_test.json`` or
``eval_validation.json``), never on the limited validation of training; a run with fewer updates than the full
run is listed but not judged. The mean of a row's judged runs is judged too. Writes ``expected.md`` (one line
per row, a verdict column) and ``expected.csv`` (one line per run and per mean) and prints each verdict.
"""
from __future__ import annotations

import argparse
import csv
import io
import statistics
from pathlib import Path

from ..data.files import atomic_write_text
from .collect import load_run, run_dirs
from .paper import EXPECTED, PAPER, REFERENCE, Expected
from .tables import TableSpec, arms

INSIDE, OUTSIDE = "inside", "outside"


def judge(e: Expected, x: float) -> str:
    """``inside`` or ``outside (<how far> better|worse)``."""
    if e.contains(x):
        return INSIDE
    better = (x > e.value) == ("acc" in e.metric)   # accuracy: higher is better; bpb and perplexity: lower
    return f"{OUTSIDE} ({e.fmt(abs(x - e.value))} {'better' if better else 'worse'} than expected)"


def run_verdict(e: Expected, rec: dict) -> tuple[float | None, str]:
    """(score, verdict) of one run on its row: inside / outside, or why it is not judged."""
    if e.value is None:
        return None, e.text()
    if e.updates and (rec.get("step") or 0) < e.updates:
        return None, f"not judged: {rec.get('step') or 0:,} of the full run's {e.updates:,} updates"
    x = rec.get("scores", {}).get(e.metric)
    if x is None:
        return None, (f"not judged: no {e.metric} yet (python -m vqformer.evaluate run_dir={rec['source']} "
                      f"split={e.split()})")
    return x, judge(e, x)


def mean_verdict(e: Expected, scores: list[float]) -> tuple[float | None, str]:
    if e.value is None:
        return None, e.text()
    if not scores:
        return None, "no judged run (none is full-length with a whole-split score)"
    x = statistics.fmean(scores)
    return x, judge(e, x)


def sentence(e: Expected, x: float, verdict: str) -> str:
    """What the user reads at the end of ``make repro-*``: holds / does not hold, X, expected Y ± Z."""
    inside = verdict == INSIDE
    gap = "" if inside else " " + verdict.removeprefix(OUTSIDE).strip()
    if e.status == PAPER:
        head = "reproduction holds" if inside else f"reproduction does not hold{gap}"
    else:
        what = "a reference number (another model's)" if e.status == REFERENCE else "an unverified number"
        head = f"{INSIDE if inside else OUTSIDE} the band around {what}{gap}, not an acceptance test"
    unit = e.metric.replace("/", " ").replace("_", " ")
    return f"{head}: {e.fmt(x)} {unit}, expected {e.fmt(e.value)} ± {e.fmt(e.band)} ({e.source}; band: {e.why})"


def rows_of(records: list[dict]) -> dict[str, list[dict]]:
    """Row key -> its runs (one per seed: a seed seen twice keeps the run with more updates), in EXPECTED's order."""
    out = {}
    for key, e in EXPECTED.items():
        seeds: dict = {}
        for rec in records:
            if e.selects(rec):
                old = seeds.get(rec.get("seed"))
                if old is None or (rec.get("step") or 0) > (old.get("step") or 0):
                    seeds[rec.get("seed")] = rec
        if seeds:
            out[key] = list(seeds.values())
    return out


def mark_table(spec: TableSpec, rows: list[dict], records: list[dict]) -> list[str]:
    """Hook for a results/tables.py table (``spec.name`` + arm = the key of ``paper.EXPECTED``): adds a ``band``
    column to each summarized row, judging the mean of the arm's runs' whole-split scores, and returns the
    lines to print. A row of a table without a band says so."""
    groups = arms(spec, records)
    lines = []
    for r in rows:
        e = EXPECTED.get(f"{spec.name}/{r['arm']}")
        if e is None:
            r["band"] = "no band defined for this row"
            continue
        scores = [x for x, _ in (run_verdict(e, rec) for rec in groups.get(r["arm"], [])) if x is not None]
        x, verdict = mean_verdict(e, scores)
        r["band"] = verdict if x is None else f"{verdict}: {e.fmt(x)} vs {e.text()}"
        lines.append(f"[results] {spec.name} {spec.vary}={r['arm']}: {r['band']}")
    return lines


def table(records: list[dict]) -> tuple[str, list[dict], list[str]]:
    """Markdown (one line per row with runs, then the rows without any), CSV rows and the lines to print."""
    found = rows_of(records)
    md = ["| row | expected | from | runs | judged | score (mean) | verdict |", "|---|---|---|---|---|---|---|"]
    out, lines = [], []
    for key, recs in found.items():
        e = EXPECTED[key]
        judged = []
        for rec in sorted(recs, key=lambda r: str(r.get("seed"))):
            x, verdict = run_verdict(e, rec)
            if x is not None:
                judged.append(x)
            out.append({"row": key, "run": rec["source"], "seed": rec.get("seed"), "step": rec.get("step"),
                        "metric": e.metric, "score": "" if x is None else e.fmt(x), "verdict": verdict})
            lines.append(f"[results] {key} seed {rec.get('seed')} ({rec['source']}): "
                         + (verdict if x is None else sentence(e, x, verdict)))
        x, verdict = mean_verdict(e, judged)
        out.append({"row": key, "run": "mean", "seed": "", "step": "", "metric": e.metric,
                    "score": "" if x is None else e.fmt(x), "verdict": verdict})
        if x is not None:
            lines.append(f"[results] {key}, mean of {len(judged)} judged run(s): {sentence(e, x, verdict)}")
        expected = "–" if e.value is None else e.text()
        md.append(f"| {key} | {expected} | {e.source} ({e.status}) | {len(recs)} | {len(judged)} | "
                  f"{'–' if x is None else e.fmt(x)} | {verdict} |")
    missing = [k for k, e in EXPECTED.items() if k not in found and e.value is not None]
    text = "\n".join(md) + "\n" if found else "_no finished run belongs to a row of `paper.EXPECTED`_\n"
    if found:
        text += "\nWhere each expected number and band come from:\n\n" + "".join(
            f"- {k}: {EXPECTED[k].source}; band: {EXPECTED[k].why}\n" for k in found if EXPECTED[k].value is not None)
    if missing:
        text += "\nRows with an expected number and no finished run: " + ", ".join(
            f"{k} ({EXPECTED[k].text()})" for k in missing) + ".\n"
    return text, out, lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vqformer.results expected", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, action="append", help="folder of run directories (default: logs)")
    ap.add_argument("--out", type=Path, default=Path("logs/results/expected"),
                    help="expected.md and expected.csv go here (default: logs/results/expected)")
    a = ap.parse_args(argv)
    records = [load_run(d) for d in run_dirs(a.runs or [Path("logs")])]
    text, rows, lines = table(records)
    for line in lines:
        print(line)
    a.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(a.out / "expected.md", "# Finished runs against their expected numbers\n\nGenerated by "
                      "`python -m vqformer.results expected` from the run directories; the expected values and "
                      "bands are `vqformer.results.paper.EXPECTED`. Do not edit by hand.\n\n" + text)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["row", "run", "seed", "step", "metric", "score", "verdict"])
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(a.out / "expected.csv", buf.getvalue())
    print(f"[results] {len(records)} finished runs; wrote {a.out / 'expected.md'} and {a.out / 'expected.csv'}")
