"""One progress style for every long step (downloads, preparation, tokenization, generators).

`progress(...)` is a tqdm bar. On a terminal it redraws in place as usual. When stderr is not a terminal
(a log file, a cluster job, CI) it prints whole lines, about one per `LOG_PERCENT` percent of a known total,
or one per `LOG_SECONDS` seconds when the total is unknown, so a log gets a handful of lines, not thousands.
`VQFORMER_PROGRESS=0` turns every bar off.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable

from tqdm.auto import tqdm

__all__ = ["LOG_PERCENT", "LOG_SECONDS", "progress"]

LOG_PERCENT = 5
LOG_SECONDS = 60.0


class _Lines:
    """A file for tqdm that turns its carriage-return redraws into one newline-terminated line each."""

    def __init__(self, stream):
        self.stream = stream
        self.last = None

    def write(self, s: str) -> None:
        s = s.replace("\r", "").replace("\x1b[A", "").strip("\n")
        count = s.split(" [")[0]   # "desc: 40%|####| 4/10": tqdm's closing redraw repeats the last count
        if s.strip() and count != self.last:
            self.stream.write(s + "\n")
            self.last = count

    def flush(self) -> None:
        self.stream.flush()


def _is_tty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def progress(iterable: Iterable | None = None, total: float | None = None, desc: str | None = None,
             unit: str = "it", file=None, **kw) -> tqdm:
    """A tqdm bar over `iterable` (or a manual one: call `.update(n)`); `unit="B"` shows bytes in KiB/MiB/GiB."""
    stream = file if file is not None else sys.stderr
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if unit == "B":
        kw.setdefault("unit_scale", True)
        kw.setdefault("unit_divisor", 1024)
    if kw.get("disable") is None:   # None (or unset): on unless VQFORMER_PROGRESS=0
        kw["disable"] = os.environ.get("VQFORMER_PROGRESS", "1") == "0"
    kw.setdefault("dynamic_ncols", True)
    if not _is_tty(stream):
        stream = _Lines(stream)
        # Fixed miniters and an infinite maxinterval: tqdm's monitor would otherwise drop to one line per item.
        kw.update(mininterval=0 if total else LOG_SECONDS, maxinterval=float("inf"), ncols=100,
                  miniters=max(1, math.ceil(total * LOG_PERCENT / 100)) if total else 1)
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream, **kw)
