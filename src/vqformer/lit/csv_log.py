"""One complete ``metrics.csv`` per run, across every attempt of it (kills, preemptions, requeues).

Lightning's CSV writer deletes the file when a resumed run starts it again, and crashes when the new
attempt logs a field the old header lacks. This writer keeps the file: the first rows an attempt logs
define where it resumed (the step of its first row), so the rows the lost attempt logged from that step on
are dropped (the resumed run logs them again, from the same state) and everything before is kept. Rows are
appended and fsynced on every save; a header change or a truncation rewrites the file atomically (temporary
file in the same directory, then rename), so a kill never leaves a half-written file behind.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import CSVLogger

from .atomic import atomic_write_bytes

METRICS_FILE = "metrics.csv"


def _value(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    """Fields and complete rows of a metrics file; a last line cut by a kill is dropped."""
    if not path.exists():
        return [], []
    with open(path, newline="") as f:
        text = f.read()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]   # the partial last line of an interrupted append
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = [r for r in reader if None not in r.values() and None not in r]
    return list(reader.fieldnames or []), rows


def update_index(logged_step: int, per_batch: int, final_step: int | None) -> int:
    """The update a logged row belongs to. Lightning logs against batches: during fit the 0-based index of
    the batch, after it (the final validation) the number of batches. A language-model batch makes
    sequence_len / update_len updates, so a row during fit is the batch's last update, 0-based (as in runs of
    one window per batch), and the final validation is the run's final step."""
    if final_step is not None and logged_step * per_batch == final_step:
        return final_step
    return (logged_step + 1) * per_batch - 1


def updates_per_batch(cfg: dict) -> int:
    """A language-model batch is cut into sequence_len / update_len windows, one update each; the other tasks
    make one update per batch (their update_len is not a window of the batch)."""
    T, W = cfg.get("sequence_len"), cfg.get("update_len")
    return T // W if cfg.get("task", "lm") == "lm" and isinstance(T, int) and isinstance(W, int) and T > W else 1


class MetricsWriter:
    """The ``experiment`` of :class:`CompleteCSVLogger` (same interface as Lightning's writer)."""

    def __init__(self, log_dir: str):
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, METRICS_FILE)
        os.makedirs(log_dir, exist_ok=True)
        self.fields, self.old_rows = read_rows(Path(self.metrics_file_path))
        self.pending: list[dict] = []
        self.merged = False   # the lost attempt's rows from this attempt's first step on are dropped once
        self.hparams: dict = {}

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        row = {k: _value(v) for k, v in metrics.items()}
        row["step"] = step if step is not None else len(self.pending)
        self.pending.append(row)

    def log_hparams(self, params: dict) -> None:
        self.hparams.update(params)
        save_hparams_to_yaml(os.path.join(self.log_dir, "hparams.yaml"), self.hparams)

    def _rewrite(self, rows: list[dict]) -> None:
        buf = io.StringIO(newline="")
        writer = csv.DictWriter(buf, fieldnames=self.fields)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_bytes(Path(self.metrics_file_path), buf.getvalue().encode())

    def save(self) -> None:
        if not self.pending:
            return
        new_fields = set().union(*self.pending) - set(self.fields)
        rewrite = bool(new_fields) or not self.merged or not os.path.exists(self.metrics_file_path)
        if new_fields:
            self.fields = sorted(set(self.fields) | new_fields)
        if rewrite:
            if not self.merged:
                first = min(int(r["step"]) for r in self.pending)
                self.old_rows = [r for r in self.old_rows if int(float(r["step"])) < first]
                self.merged = True
            else:
                self.old_rows = read_rows(Path(self.metrics_file_path))[1]
            self._rewrite(self.old_rows + self.pending)
            self.old_rows = []   # on disk now; re-read only when the header changes again
        else:
            with open(self.metrics_file_path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.fields).writerows(self.pending)
                f.flush()
                os.fsync(f.fileno())
        self.pending = []


class CompleteCSVLogger(CSVLogger):
    """Lightning's CSVLogger with :class:`MetricsWriter`: flushed on every logged step, never wiped."""

    def __init__(self, save_dir: str, name: str = "csv", version: int = 0):
        super().__init__(save_dir=save_dir, name=name, version=version, flush_logs_every_n_steps=1)

    @property
    @rank_zero_experiment
    def experiment(self) -> MetricsWriter:
        if self._experiment is None:
            self._experiment = MetricsWriter(self.log_dir)
        return self._experiment
