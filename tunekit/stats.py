"""Statistics over seeds: which differences between configurations are real, and which claims hold.

Pure functions of numbers (one max val_acc per trial), built on scipy.stats and statsmodels:
- `summarize`: mean and a 95% t interval of one configuration's values (none for one value or
  values that are all equal; cut at `bounds`, and flagged, where it runs past them);
- `contrast`: any weighted sum of cell means, with a Welch–Satterthwaite t interval and p; a
  difference of two means is the contrast (+1, a), (−1, b), i.e. Welch's t-test;
- `versus_best`: every configuration against the one with the best mean, Holm-corrected, with the
  gap that would have been told apart at this n;
- `main_effects` / `interactions`: a factor's effect as a contrast of cell means (every cell of the
  other factors weighs the same, whatever its n), and for two factors the interaction's F-test;
- `claim`: a directional claim (A beats B, or beats it by more at one level than at another),
  with its estimate, interval, one-sided p, probability of improvement and a verdict.
Values must be finite: the caller leaves out NaN and failed trials, and says so.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

LEVEL = 0.95  # confidence of every interval
ALPHA = 0.05  # family-wise error rate of the comparisons with the best; a claim's threshold
CAVEAT = 0.1  # an interaction with p below this qualifies the main effects it involves


def _finite(values: Sequence[float]) -> list[float]:
    out = [float(v) for v in values]
    if not out or not all(math.isfinite(v) for v in out):
        raise ValueError(f"statistics need finite values, got {values!r}")
    return out


def t_quantile(df: float) -> float:
    """The two-sided LEVEL quantile of Student's t with `df` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + LEVEL / 2, df))


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    low: float | None  # 95% interval of the mean; None when n < 2 or all values are equal
    high: float | None
    equal: bool = False  # n ≥ 2 values, all equal: no spread to make an interval from
    clipped: bool = False  # the t interval ran past `bounds` and was cut there


def summarize(values: Sequence[float], bounds: tuple[float, float] | None = None) -> Summary:
    """Mean and 95% t interval; `bounds` (e.g. 0–100 for an accuracy) cut the interval."""
    values = _finite(values)
    n, mean = len(values), math.fsum(values) / len(values)
    if n < 2:
        return Summary(n, mean, None, None)
    if max(values) == min(values):
        return Summary(n, mean, None, None, equal=True)
    half = t_quantile(n - 1) * statistics.stdev(values) / math.sqrt(n)
    low, high = mean - half, mean + half
    if bounds is not None and (low < bounds[0] or high > bounds[1]):
        return Summary(n, mean, max(low, bounds[0]), min(high, bounds[1]), clipped=True)
    return Summary(n, mean, low, high)


@dataclass(frozen=True)
class Contrast:
    """Σ weight · mean(cell): its estimate, standard error, Welch–Satterthwaite df, 95% interval
    and two-sided p against 0. se, df, low, high and p are None where a cell has one value (no
    variance), and se is 0 with the rest None where every cell's values are equal."""

    estimate: float
    se: float | None
    df: float | None
    low: float | None
    high: float | None
    p: float | None

    def p_greater(self) -> float | None:
        """One-sided p of 'the true value is above 0'."""
        if self.se is None or self.df is None:
            return None
        from scipy import stats

        return float(stats.t.sf(self.estimate / self.se, self.df))


def contrast(terms: Sequence[tuple[float, Sequence[float]]]) -> Contrast:
    """The contrast Σ w·mean(values) over cells (w, values), with Welch's variance."""
    from scipy import stats

    cells = [(w, _finite(v)) for w, v in terms]
    estimate = math.fsum(w * math.fsum(v) / len(v) for w, v in cells)
    if any(len(v) < 2 for _, v in cells):
        return Contrast(estimate, None, None, None, None, None)
    parts = [(w * w * statistics.variance(v) / len(v), len(v) - 1) for w, v in cells]
    var = math.fsum(p for p, _ in parts)
    if var == 0:
        return Contrast(estimate, 0.0, None, None, None, None)
    df = var * var / math.fsum(p * p / dof for p, dof in parts if p > 0)
    se = math.sqrt(var)
    half = t_quantile(df) * se
    p = 2 * float(stats.t.sf(abs(estimate) / se, df))
    return Contrast(estimate, se, df, estimate - half, estimate + half, p)


def welch(a: Sequence[float], b: Sequence[float]) -> Contrast:
    """mean(a) − mean(b): Welch's t-test and interval."""
    return contrast([(1.0, a), (-1.0, b)])


def holm(ps: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: the i-th smallest p times (m − i), made monotone, up to 1."""
    from statsmodels.stats.multitest import multipletests

    return [float(p) for p in multipletests(list(ps), method="holm")[1]] if ps else []


@dataclass(frozen=True)
class Comparison:
    p: float | None  # Welch's t-test against the best configuration; None: the best, or no test
    p_holm: float | None  # Holm-adjusted over all comparisons with the best
    worse: bool  # told apart from the best (p_holm < ALPHA)
    gap: float | None = None  # about the smallest gap to the best that this n would tell apart
    why_none: str | None = None  # why there is no test ("one seed", "all seeds equal")


def versus_best(groups: Mapping[Hashable, Sequence[float]]) -> dict[Hashable, Comparison]:
    """Each configuration against the one with the best mean (picked from the same data, so the
    best's mean is biased up a little: the winner's curse; the caller says so)."""
    means = {k: math.fsum(_finite(v)) / len(v) for k, v in groups.items()}
    best = max(means, key=lambda k: means[k])
    tests: dict[Hashable, tuple[float, float, float]] = {}  # p, df, se of each test
    why: dict[Hashable, str] = {}
    for k in groups:
        if k == best:
            continue
        c = welch(groups[best], groups[k])
        if c.p is not None and c.df is not None and c.se is not None:
            tests[k] = (c.p, c.df, c.se)
        else:
            why[k] = "one seed: no test" if c.se is None else "all seeds equal: no test"
    adjusted = dict(zip(tests, holm([p for p, _, _ in tests.values()])))
    m = len(tests)
    out = {best: Comparison(None, None, False)}
    for k in groups:
        if k in tests:
            p, df, se = tests[k]
            # Holm's first step is Bonferroni: a gap of t(1 − α/2m, df)·se reaches p_holm < α
            from scipy import stats

            gap = float(stats.t.ppf(1 - ALPHA / (2 * m), df)) * se
            out[k] = Comparison(p, adjusted[k], adjusted[k] < ALPHA, gap)
        elif k != best:
            out[k] = Comparison(None, None, False, why_none=why[k])
    return out


# -- factors, cells and claims --------------------------------------------------------------------

Rows = Sequence[tuple[Mapping[str, Any], float]]  # one (its parameters, its value) per trial


def _cells(rows: Rows, factors: Sequence[str]) -> dict[tuple[str, ...], list[float]]:
    cells: dict[tuple[str, ...], list[float]] = {}
    for params, value in rows:
        cells.setdefault(tuple(str(params[f]) for f in factors), []).append(value)
    return cells


def _levels(rows: Rows, factor: str) -> list[str]:
    return list(dict.fromkeys(str(r[factor]) for r, _ in rows))


def _side(
    cells: Mapping[tuple[str, ...], list[float]],
    factors: Sequence[str],
    where: Mapping[str, Any],
    sign: float,
) -> list[tuple[float, list[float]]]:
    """The cells matching `where`, each weighing the same: sign / their number."""
    match = [
        v
        for key, v in cells.items()
        if all(key[factors.index(f)] == str(lv) for f, lv in where.items())
    ]
    return [(sign / len(match), v) for v in match]


@dataclass(frozen=True)
class Effect:
    factor: str
    level: str  # the level compared with `reference`
    reference: str
    difference: float  # the mean of the cell means at `level` minus those at `reference`
    low: float | None  # its 95% interval (Welch–Satterthwaite); None without spread
    high: float | None
    at: tuple[str, str] | None = None  # (other factor, its level) for an effect within a level
    p: float | None = None
    df: float | None = None
    caveat: str | None = None  # an interaction that makes an average effect misleading


def _effect(
    cells: Mapping[tuple[str, ...], list[float]],
    factors: Sequence[str],
    factor: str,
    level: str,
    reference: str,
    at: tuple[str, str] | None = None,
) -> Effect | None:
    fixed = {at[0]: at[1]} if at else {}
    a = _side(cells, factors, {factor: level, **fixed}, 1.0)
    b = _side(cells, factors, {factor: reference, **fixed}, -1.0)
    if len(a) != len(b) or not a:  # a cell missing on one side: no like-for-like contrast
        return None
    c = contrast(a + b)
    return Effect(factor, level, reference, c.estimate, c.low, c.high, at, c.p, c.df)


def main_effects(
    rows: Rows,
    factors: Sequence[str],
    interaction_ps: Mapping[tuple[str, str], float | None] | None = None,
) -> list[Effect]:
    """Per factor, each level against the first (levels in the order the rows first show them):
    the mean of its cell means minus the reference's, every cell of the other factors weighing
    the same. With `interaction_ps`, an effect gets a caveat where an interaction involving its
    factor has p < CAVEAT."""
    cells = _cells(rows, factors)
    out = []
    for f in factors:
        levels = _levels(rows, f)
        flagged = [
            (pair, p)
            for pair, p in (interaction_ps or {}).items()
            if f in pair and p is not None and p < CAVEAT
        ]
        caveat = (
            "; ".join(f"the {' × '.join(pair)} interaction has p = {p:.2g}" for pair, p in flagged)
            or None
        )
        for lv in levels[1:]:
            e = _effect(cells, factors, f, lv, levels[0])
            if e is not None:
                out.append(Effect(**{**e.__dict__, "caveat": caveat}))
    return out


@dataclass(frozen=True)
class Interaction:
    factors: tuple[str, str]
    p: float | None  # two-way ANOVA F-test of the interaction; None when it cannot be fitted
    effects: list[Effect]  # the first factor's effect at each level of the second
    f: float | None = None  # its F statistic


def interactions(rows: Rows, factors: Sequence[str]) -> list[Interaction]:
    """For every pair of factors: does the first's effect depend on the second's level?"""
    cells = _cells(rows, factors)
    out = []
    for a, b in combinations(factors, 2):
        levels = _levels(rows, a)
        effects = [
            e
            for lb in _levels(rows, b)
            for la in levels[1:]
            if (e := _effect(cells, factors, a, la, levels[0], at=(b, lb))) is not None
        ]
        f, p = anova_interaction(rows, a, b)
        out.append(Interaction((a, b), p, effects, f))
    return out


def anova_interaction(rows: Rows, a: str, b: str) -> tuple[float | None, float | None]:
    """(F, p) of the a × b interaction in a two-way ANOVA (type II); (None, None) where it
    cannot be tested: a missing cell, no replicates, or no residual variance at all."""
    import pandas as pd
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    frame = pd.DataFrame(
        {
            "y": [v for _, v in rows],
            "a": [str(r[a]) for r, _ in rows],
            "b": [str(r[b]) for r, _ in rows],
        }
    )
    cells = frame.groupby(["a", "b"])["y"]
    full = len(cells) == frame["a"].nunique() * frame["b"].nunique()
    if not full or len(frame) <= len(cells) or float(cells.var(ddof=0).max()) == 0:
        return None, None  # no replicates, or every cell constant: nothing to divide by
    table = anova_lm(smf.ols("y ~ C(a) * C(b)", data=frame).fit(), typ=2)
    f, p = table.loc["C(a):C(b)", "F"], table.loc["C(a):C(b)", "PR(>F)"]
    return (None, None) if math.isnan(p) else (float(f), float(p))


def improvement(a: Sequence[float], b: Sequence[float]) -> float:
    """P(A > B) over every pair of one value of `a` and one of `b` (ties count half)."""
    wins = sum((x > y) + 0.5 * (x == y) for x in a for y in b)
    return wins / (len(a) * len(b))


@dataclass(frozen=True)
class ClaimResult:
    estimate: float  # positive: the claimed direction
    low: float | None
    high: float | None
    p: float | None  # one-sided p in the claimed direction
    df: float | None
    improvement: list[tuple[str, float]]  # (where, P(better > than) over seed pairs)
    verdict: str  # "supported" | "not supported: ..." | "undecided at this n ..."


SUPPORTED = "supported"
OTHER_WAY = "not supported: the estimate points the other way"
UNDECIDED = "undecided at this n"


def claim(
    rows: Rows,
    factors: Sequence[str],
    better: Mapping[str, Any],
    than: Mapping[str, Any],
    at: Mapping[str, Any] | None = None,
    more_than_at: Mapping[str, Any] | None = None,
) -> ClaimResult | None:
    """'`better` beats `than` [at `at`] [by more than at `more_than_at`]': the contrast of cell
    means (cells matching each side weigh the same), tested one-sided in that direction. None
    where a side has no trials."""
    cells = _cells(rows, factors)
    at = dict(at or {})

    def gap(where: Mapping[str, Any], sign: float) -> list[tuple[float, list[float]]] | None:
        a = _side(cells, factors, {**better, **where}, sign)
        b = _side(cells, factors, {**than, **where}, -sign)
        return a + b if a and b else None

    def values(side: Mapping[str, Any], where: Mapping[str, Any]) -> list[float]:
        return [v for _, vs in _side(cells, factors, {**side, **where}, 1.0) for v in vs]

    def label(where: Mapping[str, Any]) -> str:
        return ", ".join(f"{k}={v}" for k, v in where.items()) or "overall"

    terms = gap(at, 1.0)
    if terms is None:
        return None
    wheres = [at]
    if more_than_at is not None:
        second = gap(more_than_at, -1.0)
        if second is None:
            return None
        terms += second
        wheres.append(dict(more_than_at))
    c = contrast(terms)
    p = c.p_greater()
    if p is None:
        verdict = UNDECIDED + (
            ": one seed, no test" if c.se is None else ": all seeds equal, no test"
        )
    elif p < ALPHA:
        verdict = SUPPORTED
    elif c.estimate < 0:
        verdict = (
            OTHER_WAY
            + (", clearly" if 1 - p < ALPHA else ", though not clearly at this n")
            + f" (one-sided p = {1 - p:.2g} in that direction)"
        )
    else:
        verdict = UNDECIDED
    won = [(label(w), improvement(values(better, w), values(than, w))) for w in wheres]
    return ClaimResult(c.estimate, c.low, c.high, p, c.df, won, verdict)
