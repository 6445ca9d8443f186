"""Small statistics the result tables share: the 95% Student-t interval of a mean of paired differences."""
from __future__ import annotations

import statistics

# Two-sided 95% quantiles of Student's t by degrees of freedom (df > 30: the normal 1.96 is close enough).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t95(df: int) -> float:
    if df < 1:
        raise ValueError(f"a t interval needs at least 2 paired values (df={df})")
    return T95[max(k for k in T95 if k <= df)] if df <= 30 else 1.96


def paired_ci(diffs: list[float]) -> tuple[float, float]:
    """95% confidence interval of the mean of paired (seed-matched) differences, Student's t."""
    m = statistics.fmean(diffs)
    h = t95(len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return m - h, m + h
