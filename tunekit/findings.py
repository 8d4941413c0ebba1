"""A results table's findings in plain sentences: how many seeds, the best and what cannot be
told from it, the claims answered, main effects and interactions, importance. The numbers come
from `stats`; no MLflow, no terminal, no matplotlib."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tunekit.results import ResultRow, column_names, importance, interval
from tunekit.text import fmt

if TYPE_CHECKING:
    from tunekit.spec import Claim
    from tunekit.stats import Effect


def findings(
    rows: Sequence[ResultRow], claims: Sequence[Claim] = (), sampled: Sequence[str] = ()
) -> list[str]:
    """The statistics of a results table in plain sentences (percentage points throughout);
    `claims` (spec.Claim) are each tested and answered; `sampled` (a TPE or random search's
    parameters) get their importance."""
    measured = [r for r in rows if r.accs]
    if not measured:
        return []
    left = [x for r in rows for x in r.left_out]
    lines = (
        [f"Left out of every mean and test ({len(left)}): " + ", ".join(left) + "."] if left else []
    )
    counts = sorted({len(r.accs) for r in measured})
    if counts[-1] < 2:
        return lines + [
            "One seed per configuration: no intervals, and one seed cannot separate "
            "configurations. Repeat seeds (a grid's `search.repeats: 3` or more) to tell "
            "real differences from seed-to-seed noise."
        ]
    lines += _how_measured(measured, counts)
    lines.append(_best(measured))
    best = measured[0]
    trials = [
        ({k: r.params[k] for k in best.params}, acc)
        for r in sorted(measured, key=lambda r: min(r.trials))
        for acc in r.accs
    ]
    lines += [_claim_line(c, trials, list(best.params)) for c in claims]
    found = importance(rows, sampled) if sampled else None
    if found:
        lines.append(
            f"Parameter importance over {len(measured)} configurations' seed means "
            "(optuna's fANOVA: a random-forest model's estimate of how much of the "
            "spread each parameter explains, not a test): "
            + ", ".join(f"{column_names(list(found))[k]} {v:.2f}" for k, v in found.items())
            + "."
        )
    factors = [k for k in best.params if len({r.params[k] for r in measured}) > 1]
    grid = math.prod(len({r.params[k] for r in measured}) for k in factors) == len(measured)
    if not factors or not grid:
        return lines
    return lines + _effects([({k: p[k] for k in factors}, acc) for p, acc in trials], factors)


def _how_measured(measured: Sequence[ResultRow], counts: list[int]) -> list[str]:
    """What n is, what the intervals are, and the caveats of small n."""
    from tunekit import stats

    n = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
    lines = [
        f"n = {n} seeds per configuration (the values used); intervals are 95% t "
        "intervals of the mean max val_acc, in percentage points."
    ]
    if counts[0] == 2:
        lines.append(
            f"With n = 2 a t interval has 1 degree of freedom: it is ±{stats.t_quantile(1):.1f} "
            "standard errors wide, about 5 times a normal one. Use `search.repeats: 3` "
            "or more."
        )
    if any(r.summary and r.summary.clipped for r in measured):
        lines.append(
            "† An accuracy's t interval ran past 0–100 % and is cut there: with so few "
            "seeds it is only a rough guide."
        )
    if any(r.epochs and r.epochs.clipped for r in measured):
        lines.append("† A best epoch's t interval ran past the epochs trained and is cut there.")
    if any(r.summary and r.summary.equal for r in measured):
        lines.append(
            "All seeds equal: a configuration whose seeds all scored the same has no "
            "interval (no spread to measure)."
        )
    return lines


def _best(measured: Sequence[ResultRow]) -> str:
    """The best configuration, and those not distinguishable from it or worse."""
    from tunekit import stats

    best = measured[0]
    if len(measured) == 1:
        return (
            f"Only one configuration has values: {best.label} at "
            f"{interval(best.summary, 2)}; nothing to compare it with."
        )
    tested = [(r, r.vs_best) for r in measured[1:] if r.vs_best and r.vs_best.p_holm is not None]
    same = [(r, v) for r, v in tested if not v.worse]  # (row, its test against the best)
    worse = [(r, v) for r, v in tested if v.worse]
    return (
        f"Best: {best.label} at {interval(best.summary, 2)}. It was picked from these "
        "same results, so its mean is likely a little high (the winner's curse), and "
        "the tests below do not correct for that. "
        + (
            f"Not distinguishable from it at this n (Welch t-test against the best, "
            f"Holm-corrected for {len(same) + len(worse)} comparisons, α = "
            f"{stats.ALPHA}; this does not mean equal): "
            + (
                "; ".join(
                    f"{r.label} (p = {v.p_holm:.2g}; a gap of about {v.gap:.2f} would be)"
                    for r, v in same
                )
                or "none"
            )
            + "."
            + (
                " Worse than the best: "
                + "; ".join(f"{r.label} (p = {v.p_holm:.2g})" for r, v in worse)
                + "."
                if worse
                else ""
            )
        )
    )


def _effects(trials: list[tuple[dict[str, Any], float]], factors: list[str]) -> list[str]:
    """Main effects of each factor and the two-way interactions, over a full grid (levels in
    plan order)."""
    from tunekit import stats

    lines = []
    name = column_names(factors)
    pairs = stats.interactions(trials, factors) if len(factors) <= 4 else []
    ps = {i.factors: i.p for i in pairs}
    for e in stats.main_effects(trials, factors, ps):
        caveat = (
            f" Read with care: {e.caveat.replace(e.factor, name[e.factor])}, so this "
            "average hides an effect that changes with the other factor."
            if e.caveat
            else ""
        )
        lines.append(
            f"Main effect of {name[e.factor]}: {fmt(e.level)} − {fmt(e.reference)} = "
            f"{_difference(e)}, the mean of its cell means over the other factors"
            f"{f' (df {e.df:.1f})' if e.df else ''}.{caveat}"
        )
    for i in pairs:
        a, b = (name[f] for f in i.factors)
        test = (
            f"interaction F = {i.f:.2f}, p = {i.p:.2g}"
            if i.p is not None
            else "no test: too few seeds or no spread"
        )
        within = [(e.at[1], e) for e in i.effects if e.at]  # (level of b, a's effect there)
        by_level = "; ".join(
            f"at {b}={fmt(lv)}: "
            + ", ".join(
                f"{fmt(e.level)} − {fmt(e.reference)} = {_difference(e)}"
                for at, e in within
                if at == lv
            )
            for lv in dict.fromkeys(at for at, _ in within)
        )
        lines.append(f"{a} × {b} ({test}): {by_level}.")
    return lines


def _claim_line(
    claim: Claim, trials: Sequence[tuple[dict[str, str], float]], factors: list[str]
) -> str:
    from tunekit import stats

    def norm(where: dict[str, Any]) -> dict[str, str]:
        return {k: fmt(v) for k, v in where.items()}

    rows = [({k: fmt(_number(v)) for k, v in p.items()}, acc) for p, acc in trials]
    r = stats.claim(
        rows,
        factors,
        norm(claim.better),
        norm(claim.than),
        norm(claim.at),
        None if claim.more_than_at is None else norm(claim.more_than_at),
    )
    what = (
        f"({_side(claim.better)} − {_side(claim.than)}"
        + (f" at {_side(claim.at)}" if claim.at else "")
        + (
            f") − ({_side(claim.better)} − {_side(claim.than)} at {_side(claim.more_than_at)}"
            if claim.more_than_at
            else ""
        )
        + ") > 0"
    )
    if r is None:
        return f"Claim: “{claim.text}” {what}: no trials on one side; not tested."
    interval = f" [{r.low:+.2f}, {r.high:+.2f}]" if r.low is not None else ""
    p = f", one-sided p = {r.p:.2g} in the stated direction" if r.p is not None else ""
    wheres = [_side(claim.at) or "overall", _side(claim.more_than_at or {})]
    won = ", ".join(f"{w:.2f} at {where}" for where, (_, w) in zip(wheres, r.improvement))
    return (
        f"Claim: “{claim.text}” {what}: estimate {r.estimate:+.2f}{interval}{p}; "
        f"P({_side(claim.better)} > {_side(claim.than)}) over seed pairs {won}. "
        f"Verdict: {r.verdict}."
    )


def _number(value: str) -> Any:
    """An MLflow parameter (a string) as the spec would have written it, for fmt."""
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value and "e" not in value else number


def _side(where: dict[str, Any]) -> str:
    names = column_names(list(where))
    return ", ".join(f"{names[k]}={fmt(v)}" for k, v in where.items())


def _difference(e: Effect) -> str:
    if e.low is None:
        return f"{e.difference:+.2f}"
    return f"{e.difference:+.2f} [{e.low:+.2f}, {e.high:+.2f}]"
