"""The progress helper: whole lines, about one per 5 %, when stderr is not a terminal."""

import io
import time

import pytest

from vqformer.progress import LOG_PERCENT, progress


@pytest.fixture(autouse=True)
def _progress_on(monkeypatch):
    monkeypatch.delenv("VQFORMER_PROGRESS", raising=False)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_non_tty_prints_one_line_per_few_percent():
    out = io.StringIO()
    n = 10_000
    assert sum(progress(range(n), desc="items", file=out)) == sum(range(n))
    lines = out.getvalue().splitlines()
    # A line at 0 %, one per LOG_PERCENT, the final one: never one per item, never a carriage-return redraw.
    assert 100 // LOG_PERCENT <= len(lines) <= 100 // LOG_PERCENT + 2, lines
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("items:   0%") and lines[-1].startswith("items: 100%")
    assert f"{n}/{n}" in lines[-1] and sum("100%" in line for line in lines) == 1   # no repeated closing line
    percents = [int(line.split("%")[0].split()[-1]) for line in lines]
    assert percents == sorted(percents) and all(b - a <= LOG_PERCENT + 1 for a, b in zip(percents, percents[1:]))


def test_non_tty_bytes_show_rate_and_eta_and_stay_quiet_for_slow_updates():
    out = io.StringIO()
    bar = progress(total=64 << 20, desc="download", unit="B", file=out)
    for _ in range(64):
        bar.update(1 << 20)
        time.sleep(0.001)   # slow updates must not turn on tqdm's per-update printing
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) <= 100 // LOG_PERCENT + 2, lines
    assert "64.0M/64.0M" in lines[-1] and "B/s" in lines[-1]
    assert "<" in lines[1]   # elapsed<remaining: the ETA


def test_unknown_total_prints_only_start_and_end_within_a_minute():
    out = io.StringIO()
    for _ in progress(iter(range(5000)), desc="unknown", file=out):
        pass
    assert len(out.getvalue().splitlines()) == 2


def test_tty_redraws_in_place_and_env_switch_disables(monkeypatch):
    out = _Tty()
    for _ in progress(range(100), file=out, mininterval=0):
        pass
    assert "\r" in out.getvalue()
    monkeypatch.setenv("VQFORMER_PROGRESS", "0")
    quiet = io.StringIO()
    assert list(progress(range(10), file=quiet)) == list(range(10))
    assert quiet.getvalue() == ""
