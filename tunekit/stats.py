"""Statistics over seeds: which differences between configurations are real.

Pure functions of numbers (one max val_acc per trial), built on scipy.stats and statsmodels:
- `summarize`: mean and a 95% t confidence interval of one configuration's trials;
- `versus_best`: Welch's t-test of every configuration against the best one, Holm-corrected for
  the number of comparisons: which ones cannot be told apart from the best at this n;
- `main_effects` / `interactions`: for a grid, each factor's effect (a level's mean minus the
  first level's, with a 95% Welch interval) and, for two factors, that effect at each level of
  the other, with the interaction's F-test from a two-way ANOVA.
With one seed per configuration there is no spread to measure: intervals are None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Hashable, Mapping, Sequence

LEVEL = 0.95  # confidence of every interval
ALPHA = 0.05  # family-wise error rate of the comparisons with the best


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    low: float | None  # 95% confidence interval of the mean; None when n < 2
    high: float | None


def summarize(values: Sequence[float]) -> Summary:
    from scipy import stats
    n, mean = len(values), math.fsum(values) / len(values)
    if n < 2:
        return Summary(n, mean, None, None)
    sem = stats.sem(values)
    if sem == 0:
        return Summary(n, mean, mean, mean)
    low, high = stats.t.interval(LEVEL, n - 1, loc=mean, scale=sem)
    return Summary(n, mean, float(low), float(high))


@dataclass(frozen=True)
class Comparison:
    p: float | None  # Welch's t-test against the best configuration; None: the best, or n < 2
    p_holm: float | None  # Holm-adjusted over all comparisons with the best
    worse: bool  # told apart from the best (p_holm < ALPHA)


def versus_best(groups: Mapping[Hashable, Sequence[float]]) -> dict[Hashable, Comparison]:
    """Each configuration against the one with the best mean."""
    from scipy import stats
    from statsmodels.stats.multitest import multipletests
    best = max(groups, key=lambda k: math.fsum(groups[k]) / len(groups[k]))
    testable = [k for k in groups if k != best and len(groups[k]) > 1 and len(groups[best]) > 1]
    raw = {}
    for k in testable:
        a, b = groups[best], groups[k]
        if max(a) == min(a) == max(b) == min(b):  # no spread at all: nothing to test
            raw[k] = 1.0
        else:
            raw[k] = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    adjusted = dict(zip(raw, multipletests(list(raw.values()), method="holm")[1])) if raw else {}
    return {k: Comparison(raw.get(k), float(adjusted[k]) if k in adjusted else None,
                          bool(k in adjusted and adjusted[k] < ALPHA)) for k in groups}


@dataclass(frozen=True)
class Effect:
    factor: str
    level: str  # the level compared with `reference`
    reference: str
    difference: float  # mean at `level` minus mean at `reference`
    low: float | None  # 95% Welch interval of the difference; None when a side has n < 2
    high: float | None
    at: tuple[str, str] | None = None  # (other factor, its level) for an effect within a level


def _difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float | None, float | None]:
    """mean(a) - mean(b) with a 95% Welch confidence interval."""
    from statsmodels.stats.weightstats import CompareMeans, DescrStatsW
    diff = math.fsum(a) / len(a) - math.fsum(b) / len(b)
    if len(a) < 2 or len(b) < 2:
        return diff, None, None
    if max(a) == min(a) and max(b) == min(b):
        return diff, diff, diff
    low, high = CompareMeans(DescrStatsW(list(a)), DescrStatsW(list(b))).tconfint_diff(
        alpha=1 - LEVEL, usevar="unequal")
    return diff, float(low), float(high)


def _levels(rows: Sequence[tuple[Mapping[str, Any], float]], factor: str) -> list[str]:
    return list(dict.fromkeys(str(r[factor]) for r, _ in rows))


def main_effects(rows: Sequence[tuple[Mapping[str, Any], float]],
                 factors: Sequence[str]) -> list[Effect]:
    """Per factor, each level against the first (levels in the order the rows first show them),
    averaged over everything else in the grid."""
    out = []
    for f in factors:
        levels = _levels(rows, f)
        values = {lv: [v for r, v in rows if str(r[f]) == lv] for lv in levels}
        for lv in levels[1:]:
            out.append(Effect(f, lv, levels[0], *_difference(values[lv], values[levels[0]])))
    return out


@dataclass(frozen=True)
class Interaction:
    factors: tuple[str, str]
    p: float | None  # two-way ANOVA F-test of the interaction; None when it cannot be fitted
    effects: list[Effect]  # the first factor's effect at each level of the second


def interactions(rows: Sequence[tuple[Mapping[str, Any], float]],
                 factors: Sequence[str]) -> list[Interaction]:
    """For every pair of factors: does the first's effect depend on the second's level?"""
    out = []
    for a, b in combinations(factors, 2):
        effects = []
        levels = _levels(rows, a)  # one reference level of `a` at every level of `b`
        for lb in _levels(rows, b):
            values = {la: [v for r, v in rows if str(r[b]) == lb and str(r[a]) == la]
                      for la in levels}
            for la in levels[1:]:
                if values[la] and values[levels[0]]:
                    effects.append(Effect(a, la, levels[0],
                                          *_difference(values[la], values[levels[0]]),
                                          at=(b, lb)))
        out.append(Interaction((a, b), _anova_p(rows, a, b), effects))
    return out


def _anova_p(rows: Sequence[tuple[Mapping[str, Any], float]], a: str, b: str) -> float | None:
    import pandas as pd
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm
    frame = pd.DataFrame({"y": [v for _, v in rows], "a": [str(r[a]) for r, _ in rows],
                          "b": [str(r[b]) for r, _ in rows]})
    cells = frame.groupby(["a", "b"]).size()
    full = len(cells) == frame["a"].nunique() * frame["b"].nunique()
    if not full or len(frame) <= len(cells) or frame["y"].std() == 0:  # no replicates: no test
        return None
    table = anova_lm(smf.ols("y ~ C(a) * C(b)", data=frame).fit(), typ=2)
    p = table.loc["C(a):C(b)", "PR(>F)"]
    return None if math.isnan(p) else float(p)
