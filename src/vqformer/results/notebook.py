"""Execute the results notebook with its outputs saved: ``python -m vqformer.results.notebook``.

    python -m vqformer.results.notebook                          # -> logs/results/notebook/compare_runs.ipynb
    python -m vqformer.results.notebook --sweep mini_block       # another sweep: the one parameter changed
    python -m vqformer.results.notebook --sweep parity --runs experiments/parity/runs
    python -m vqformer.results.notebook --runs experiments --out notebooks/compare_runs.ipynb   # the committed copy

The notebook's first code cell (tagged ``parameters``) holds its defaults. Options given here go into a cell
inserted right after it (the papermill convention, so the defaults stay visible); a cell inserted by an
earlier execution is replaced. The kernel is this interpreter's own (``python3`` of ipykernel) and imports
the same ``vqformer`` as this command. Figures in the saved outputs are re-encoded with a small palette, so
the file stays small in git.
"""
from __future__ import annotations

import argparse
import base64
import io
import os
from pathlib import Path

from ..data.files import atomic_write_text
from .tables import SPECS

NOTEBOOK = Path("notebooks/compare_runs.ipynb")
SWEEPS = [s.name for s in SPECS] + ["parity", "recall"]
INJECTED = "injected-parameters"


def inject(nb, **params) -> None:
    """Put ``NAME = value`` lines for the given parameters in a cell after the ``parameters`` cell."""
    import nbformat

    cells = [c for c in nb.cells if INJECTED not in c.metadata.get("tags", [])]
    at = next((i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])), None)
    if at is None:
        raise ValueError("the notebook has no cell tagged 'parameters'")
    if params:
        lines = ["# Parameters set by python -m vqformer.results.notebook"]
        lines += [f"{k} = {v!r}" for k, v in params.items()]
        cells.insert(at + 1, nbformat.v4.new_code_cell("\n".join(lines), id=INJECTED,   # a fixed id: no diff noise
                                                        metadata={"tags": [INJECTED]}))
    nb.cells = cells


def _small_png(data: str, colors: int = 64) -> str:
    """A base64 PNG re-encoded with an adaptive palette (plots are a few flat colours: no visible loss)."""
    from PIL import Image

    img = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
    buf = io.BytesIO()
    img.quantize(colors=colors).save(buf, format="PNG", optimize=True)
    small = base64.b64encode(buf.getvalue()).decode()
    return small if len(small) < len(data) else data


def execute(path: Path, cwd: Path, timeout: int = 600, **params):
    """The notebook at ``path`` executed in ``cwd`` with ``params`` injected; returns the notebook node."""
    import nbformat
    from nbclient import NotebookClient

    import vqformer

    nb = nbformat.read(path, as_version=4)
    inject(nb, **params)
    src = str(Path(vqformer.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p))
    client = NotebookClient(nb, kernel_name="python3", timeout=timeout, record_timing=False,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute(env=env)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "image/png" in out.get("data", {}):
                out["data"]["image/png"] = _small_png(out["data"]["image/png"])
    return nb


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vqformer.results.notebook", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", help=f"SWEEP: one of {', '.join(SWEEPS)} (default: the notebook's)")
    ap.add_argument("--runs", nargs="+", help="RUNS: roots searched for finished runs (default: the notebook's)")
    ap.add_argument("--wandb-project", help="WANDB_PROJECT: read this project's runs (language-model tables)")
    ap.add_argument("--wandb-entity", help="WANDB_ENTITY")
    ap.add_argument("--notebook", type=Path, default=NOTEBOOK, help=f"the notebook to run (default: {NOTEBOOK})")
    ap.add_argument("--out", type=Path, default=Path("logs/results/notebook/compare_runs.ipynb"),
                    help="the executed notebook goes here (default: logs/results/notebook/compare_runs.ipynb)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell (default: 600)")
    args = ap.parse_args(argv)
    if args.sweep is not None and args.sweep not in SWEEPS:
        raise SystemExit(f"--sweep {args.sweep!r}: choose one of {', '.join(SWEEPS)}")
    if not args.notebook.is_file():
        raise SystemExit(f"--notebook: {args.notebook} is not a file (run from the repository root)")
    if args.out.is_dir():
        raise SystemExit(f"--out: {args.out} is a directory; give the path of the .ipynb file to write")
    params = {k: v for k, v in (("SWEEP", args.sweep), ("RUNS", args.runs), ("WANDB_PROJECT", args.wandb_project),
                                ("WANDB_ENTITY", args.wandb_entity)) if v is not None}
    import nbformat

    # The kernel starts in the repository (the notebook's parent folder's parent), as Jupyter opened from there.
    nb = execute(args.notebook, args.notebook.resolve().parent.parent, args.timeout, **params)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, nbformat.writes(nb) + "\n")
    print(f"[results] wrote {args.out}")


if __name__ == "__main__":
    main()
