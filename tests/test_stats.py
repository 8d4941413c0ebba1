"""Statistics over seeds, on synthetic results whose truth is known."""

from __future__ import annotations

import math
import random

import pytest

from tunekit import stats
from tunekit.report import ResultRow, findings, result_rows
from tunekit.track import RunRecord


def test_interval_is_the_t_interval_of_the_mean() -> None:
    values = [99.1, 99.3, 99.2, 99.45]
    s = stats.summarize(values)
    mean = sum(values) / 4
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    t_975_3 = 3.182446305284263  # the 97.5% quantile of Student's t with 3 degrees of freedom
    assert s.n == 4 and s.mean == pytest.approx(mean)
    assert s.low == pytest.approx(mean - t_975_3 * sd / 2, rel=1e-9)
    assert s.high == pytest.approx(mean + t_975_3 * sd / 2, rel=1e-9)


def test_one_seed_has_no_interval() -> None:
    s = stats.summarize([99.3])
    assert (s.n, s.mean, s.low, s.high) == (1, 99.3, None, None)
    assert stats.versus_best({"a": [99.3], "b": [99.1]})["b"].p is None


def noisy(mean: float, n: int, rng: random.Random, sd: float = 0.05) -> list[float]:
    return [rng.gauss(mean, sd) for _ in range(n)]


def test_a_clearly_worse_configuration_is_flagged_and_equal_ones_are_not() -> None:
    rng = random.Random(0)
    groups = {"best": noisy(99.5, 5, rng), "twin": noisy(99.5, 5, rng),
              "worse": noisy(99.0, 5, rng)}
    found = stats.versus_best(groups)
    winner = max(groups, key=lambda k: sum(groups[k]))
    assert winner in ("best", "twin")
    assert found["worse"].worse and found["worse"].p_holm < 0.001
    other = "twin" if winner == "best" else "best"
    assert not found[other].worse and found[other].p_holm > 0.05
    assert found[winner].p is None
    # Holm: the smallest raw p is multiplied by the number of comparisons
    assert found["worse"].p_holm == pytest.approx(min(1.0, 2 * found["worse"].p))


def factorial(rng: random.Random, interaction: float = 0.0) -> list[tuple[dict, float]]:
    """norm (BN, GN) × batch (16, 128), 6 seeds each: GN +0.30, batch 128 −0.20, and GN gains
    `interaction` more at batch 16."""
    rows = []
    for norm in ("BN", "GN"):
        for batch in ("16", "128"):
            mean = 99.0 + 0.30 * (norm == "GN") - 0.20 * (batch == "128") + interaction * (
                norm == "GN" and batch == "16")
            rows += [({"norm": norm, "batch": batch}, v) for v in noisy(mean, 6, rng)]
    return rows


def test_main_effects_are_recovered_from_a_factorial() -> None:
    rows = factorial(random.Random(1))
    effects = {e.factor: e for e in stats.main_effects(rows, ["norm", "batch"])}
    norm, batch = effects["norm"], effects["batch"]
    assert (norm.level, norm.reference, batch.level, batch.reference) == ("GN", "BN", "128", "16")
    assert norm.low < 0.30 < norm.high and norm.difference == pytest.approx(0.30, abs=0.05)
    assert batch.low < -0.20 < batch.high and batch.difference == pytest.approx(-0.20, abs=0.05)
    assert norm.low > 0 and batch.high < 0  # both effects are real at this n


def test_interactions_show_where_an_effect_depends_on_the_other_factor() -> None:
    none = stats.interactions(factorial(random.Random(2)), ["norm", "batch"])[0]
    strong = stats.interactions(factorial(random.Random(2), interaction=0.4), ["norm", "batch"])[0]
    assert none.p > 0.05 and strong.p < 0.001
    by_batch = {e.at[1]: e for e in strong.effects}
    assert by_batch["16"].difference == pytest.approx(0.70, abs=0.06)
    assert by_batch["128"].difference == pytest.approx(0.30, abs=0.06)


def record(i: int, norm: str, seed: int, acc: float) -> RunRecord:
    return RunRecord(f"run{i}", i, {"model.norm": norm, "train.seed": str(seed), "train.l1": "0",
                                    "train.l2": "0", "train.batch_size": "64"}, acc, 5, "done",
                     None)


def test_report_rows_and_sentences() -> None:
    rng = random.Random(3)
    runs = [record(i * 3 + s, norm, s, acc) for i, (norm, mean) in enumerate(
        (("GN", 99.4), ("BN", 99.4), ("LN", 98.9))) for s, acc in enumerate(noisy(mean, 3, rng))]
    rows = result_rows(runs)
    assert [len(r.accs) for r in rows] == [3, 3, 3] and rows[-1].setting["Norm"] == "LN"
    assert rows[-1].vs_best.worse and not rows[1].vs_best.worse
    text = " ".join(findings(rows))
    assert "n = 3 seeds per configuration" in text
    assert "Worse than the best: Norm=LN" in text
    assert "Main effect of Norm" in text
    one = findings(result_rows([record(0, "GN", 1, 99.3), record(1, "BN", 1, 99.2)]))
    assert one[0].startswith("One seed per configuration") and len(one) == 1
    assert isinstance(rows[0], ResultRow)
