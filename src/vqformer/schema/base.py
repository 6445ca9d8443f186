"""The error every config check raises, and the small range checks the group schemas share.

A message always names the key, the value and what is allowed, e.g.
``optim.lr=-1.0 is invalid: must be > 0``.
"""
from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """An impossible config; raised before a run directory is created or data is touched."""


def fail(key: str, value: Any, allowed: str):
    raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def positive_int(key: str, v: Any, optional: bool = False) -> None:
    if v is None and optional:
        return
    if not is_int(v) or v < 1:
        fail(key, v, "must be a positive integer" + (" or null" if optional else ""))


def nonneg_int(key: str, v: Any) -> None:
    if not is_int(v) or v < 0:
        fail(key, v, "must be an integer >= 0")


def in_range(key: str, v: Any, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> None:
    ok = is_number(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        fail(key, v, f"must be a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}")


def one_of(key: str, v: Any, choices) -> None:
    if v not in choices:
        fail(key, v, f"choose one of {list(choices)}")
