"""The results notebook executed for real (nbclient + this interpreter's ipykernel) on the committed record:
its table is the one the results package builds, its figures are PNGs, another sweep is one parameter, and
the copy committed with its outputs is the one the record gives today."""
from __future__ import annotations

import base64
import csv
import io
from pathlib import Path

import nbformat
import pytest
from nbclient.exceptions import CellExecutionError
from PIL import Image

from vqformer.results import parity, recall
from vqformer.results.collect import load_run, run_dirs
from vqformer.results.mini import FIGURES
from vqformer.results.notebook import INJECTED, execute, inject, main
from vqformer.results.tables import SPECS, summarize, to_markdown

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "compare_runs.ipynb"
SPEC = {s.name: s for s in SPECS}


def outputs(nb, mime: str) -> list:
    return [o["data"][mime] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if mime in o.get("data", {})]


def pngs(nb) -> list[Image.Image]:
    images = [Image.open(io.BytesIO(base64.b64decode(d))) for d in outputs(nb, "image/png")]
    for img in images:
        img.load()          # a truncated or non-PNG payload raises here
        assert img.format == "PNG" and img.width > 300 and img.height > 200
    return images


def cache_table() -> str:
    records = [load_run(d) for d in run_dirs([ROOT / "experiments"])]
    return to_markdown(SPEC["mini_cache"], summarize(SPEC["mini_cache"], records))


def test_default_sweep_shows_the_package_table_and_figures():
    nb = execute(NOTEBOOK, ROOT, RUNS=[str(ROOT / "experiments")])
    assert outputs(nb, "text/markdown") == [cache_table()]
    assert "| False | 23 | 800 |" in cache_table()      # the archive's cache-off arm, 23 seeds, 800 updates
    assert len(pngs(nb)) == len(FIGURES["mini_cache"]) == 1


@pytest.mark.parametrize("sweep", ["parity", "recall"])
def test_another_sweep_is_one_parameter(tmp_path, sweep):
    out = tmp_path / f"{sweep}.ipynb"
    main(["--sweep", sweep, "--runs", str(ROOT / "experiments" / sweep), "--notebook", str(NOTEBOOK),
          "--out", str(out)])
    nb = nbformat.read(out, as_version=4)
    injected = [c for c in nb.cells if INJECTED in c.metadata.get("tags", [])]
    assert len(injected) == 1 and f"SWEEP = {sweep!r}" in injected[0].source
    assert nb.cells.index(injected[0]) == 1 + next(i for i, c in enumerate(nb.cells)
                                                   if "parameters" in c.metadata.get("tags", []))
    if sweep == "parity":
        runs = [parity.load(d) for d in parity.parity_runs([ROOT / "experiments" / "parity"])]
        assert len(runs) == 3
        assert outputs(nb, "text/markdown") == [parity.to_markdown(parity.summarize(runs))]
    else:
        rows = {}
        for f in sorted((ROOT / "experiments" / "recall").rglob("runs.csv")):
            for r in csv.DictReader(f.open()):
                rows.setdefault(tuple(r[k] for k in recall.FIELDS[:-3]), r)
        summary = recall.summarize(list(rows.values()))
        html = outputs(nb, "text/html")
        assert len(html) == 1 and html[0].count("<tr") == len(summary) + 1 > 50
    assert len(pngs(nb)) == 1 and not outputs(nb, "text/markdown" if sweep == "recall" else "text/html")


def test_bad_sweep_is_named_before_any_kernel_and_inside_the_notebook(tmp_path):
    with pytest.raises(SystemExit, match="--sweep 'mini_nope': choose one of mini_codebook"):
        main(["--sweep", "mini_nope", "--notebook", str(NOTEBOOK), "--out", str(tmp_path / "x.ipynb")])
    assert not (tmp_path / "x.ipynb").exists()
    with pytest.raises(CellExecutionError, match="SWEEP = 'mini_nope': choose one of mini_codebook"):
        execute(NOTEBOOK, ROOT, SWEEP="mini_nope")


def test_injection_replaces_an_earlier_one():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    n = len([c for c in nb.cells if INJECTED not in c.metadata.get("tags", [])])
    inject(nb, SWEEP="mini_block")
    inject(nb, SWEEP="mini_cache")
    injected = [c.source for c in nb.cells if INJECTED in c.metadata.get("tags", [])]
    assert len(nb.cells) == n + 1 and len(injected) == 1 and "SWEEP = 'mini_cache'" in injected[0]
    inject(nb)
    assert len(nb.cells) == n
    nb.cells[1].metadata["tags"] = []
    with pytest.raises(ValueError, match="no cell tagged 'parameters'"):
        inject(nb, SWEEP="mini_block")


def test_committed_notebook_holds_the_outputs_of_the_committed_record():
    """Regenerate with: python -m vqformer.results.notebook --runs experiments --out notebooks/compare_runs.ipynb"""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert params.startswith('SWEEP = "mini_cache"')
    assert [c.source.splitlines()[1:] for c in nb.cells if INJECTED in c.metadata.get("tags", [])] == \
        [["RUNS = ['experiments']"]]
    assert outputs(nb, "text/markdown") == [cache_table()], "stale outputs: regenerate (see docstring)"
    assert len(pngs(nb)) == 1 and NOTEBOOK.stat().st_size < 150_000
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]   # no warnings
