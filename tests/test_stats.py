"""Statistics over seeds, on synthetic results whose truth is known."""

from __future__ import annotations

import math
import random

import pytest

from tunekit import stats
from tunekit.findings import findings
from tunekit.importance import fanova
from tunekit.records import RunRecord
from tunekit.results import ResultRow, result_rows, results_table


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
    groups = {
        "best": noisy(99.5, 5, rng),
        "twin": noisy(99.5, 5, rng),
        "worse": noisy(99.0, 5, rng),
    }
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
            mean = (
                99.0
                + 0.30 * (norm == "GN")
                - 0.20 * (batch == "128")
                + interaction * (norm == "GN" and batch == "16")
            )
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
    return RunRecord(
        f"run{i}",
        i,
        {
            "model.args.norm": norm,
            "train.seed": str(seed),
            "train.l1": "0",
            "train.l2": "0",
            "train.batch_size": "64",
        },
        acc,
        5,
        "done",
        None,
    )


def test_report_rows_and_sentences() -> None:
    rng = random.Random(3)
    runs = [
        record(i * 3 + s, norm, s, acc)
        for i, (norm, mean) in enumerate((("GN", 99.4), ("BN", 99.4), ("LN", 98.9)))
        for s, acc in enumerate(noisy(mean, 3, rng))
    ]
    rows = result_rows(runs)
    assert [len(r.accs) for r in rows] == [3, 3, 3] and rows[-1].setting["norm"] == "LN"
    assert rows[-1].vs_best.worse and not rows[1].vs_best.worse
    text = " ".join(findings(rows))
    assert "n = 3 seeds per configuration" in text
    assert "Worse than the best: norm=LN" in text
    assert "Main effect of norm" in text
    one = findings(result_rows([record(0, "GN", 1, 99.3), record(1, "BN", 1, 99.2)]))
    assert one[0].startswith("One seed per configuration") and len(one) == 1
    assert isinstance(rows[0], ResultRow)


# -- known values: each method pinned against a hand computation ----------------------------------


def test_welch_df_and_p_against_a_hand_computation() -> None:
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0, 10.0]
    va, vb = 5 / 3 / 4, 10.0 / 5  # sample variance / n: 0.41667 and 2
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 4)  # Welch–Satterthwaite
    c = stats.welch(a, b)
    assert c.estimate == pytest.approx(-3.5)
    assert c.se == pytest.approx(math.sqrt(va + vb)) and c.df == pytest.approx(df)
    assert df == pytest.approx(5.520788, abs=1e-6)  # not 7 (pooled) nor 3 (the smaller n − 1)
    assert c.p == pytest.approx(0.0691336, abs=1e-7)  # t = −2.2514 on 5.52 df, two-sided
    assert c.p_greater() == pytest.approx(1 - 0.0691336 / 2, abs=1e-7)


def test_holm_is_step_down_and_monotone() -> None:
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_two_way_anova_interaction_f_against_a_hand_computation() -> None:
    cells = {
        ("BN", "16"): [1.0, 2.0],
        ("BN", "128"): [3.0, 5.0],
        ("GN", "16"): [4.0, 4.0],
        ("GN", "128"): [2.0, 3.0],
    }
    rows = [({"norm": n, "batch": b}, v) for (n, b), vs in cells.items() for v in vs]
    mean = {k: sum(v) / 2 for k, v in cells.items()}
    grand = sum(mean.values()) / 4
    row = {n: (mean[(n, "16")] + mean[(n, "128")]) / 2 for n in ("BN", "GN")}
    col = {b: (mean[("BN", b)] + mean[("GN", b)]) / 2 for b in ("16", "128")}
    ss_ab = 2 * sum((mean[(n, b)] - row[n] - col[b] + grand) ** 2 for n, b in cells)
    ss_e = sum((v - mean[k]) ** 2 for k, vs in cells.items() for v in vs)
    f, p = stats.anova_interaction(rows, "norm", "batch")
    assert f == pytest.approx(ss_ab / (ss_e / 4))  # 1 and 8 − 4 degrees of freedom
    assert f == pytest.approx(32 / 3) and p == pytest.approx(0.0309058, abs=1e-7)  # SS 8 vs 3


def test_main_effects_are_cell_mean_contrasts_where_the_pooled_difference_is_wrong() -> None:
    """Unbalanced: BN has 6 seeds at batch 16 and 2 at 128; GN the other way round. Batch 128
    costs 1 point for both and GN adds nothing, but pooled means see GN 0.5 points below BN."""
    rows = []
    for norm, n16, n128 in (("BN", 6, 2), ("GN", 2, 6)):
        rows += [({"norm": norm, "batch": "16"}, 99.0 + d) for d in [-0.1, 0.1] * (n16 // 2)]
        rows += [({"norm": norm, "batch": "128"}, 98.0 + d) for d in [-0.1, 0.1] * (n128 // 2)]
    pooled = (
        sum(v for p, v in rows if p["norm"] == "GN") / 8
        - sum(v for p, v in rows if p["norm"] == "BN") / 8
    )
    assert pooled == pytest.approx(-0.5)
    (norm, batch) = stats.main_effects(rows, ["norm", "batch"])
    assert norm.difference == pytest.approx(0.0, abs=1e-12) and norm.low < 0 < norm.high
    assert batch.difference == pytest.approx(-1.0)
    # its variance: the four cells' variances / n, each weighted by (1/2)²
    var = sum(0.25 * statistics_var(n) / n for n in (6, 2, 2, 6))
    assert norm.high - norm.difference == pytest.approx(
        stats.t_quantile(norm.df) * math.sqrt(var), rel=1e-9
    )


def statistics_var(n: int) -> float:
    """The sample variance of n/2 copies of ±0.1."""
    return 0.01 * n / (n - 1)


def test_a_main_effect_gets_a_caveat_where_its_interaction_is_strong() -> None:
    rows = factorial(random.Random(2), interaction=0.4)
    ps = {i.factors: i.p for i in stats.interactions(rows, ["norm", "batch"])}
    effects = stats.main_effects(rows, ["norm", "batch"], ps)
    assert all(e.caveat and "norm × batch" in e.caveat for e in effects)
    calm = factorial(random.Random(2))
    ps = {i.factors: i.p for i in stats.interactions(calm, ["norm", "batch"])}
    assert not any(e.caveat for e in stats.main_effects(calm, ["norm", "batch"], ps))


# -- guards ---------------------------------------------------------------------------------------


def test_zero_variance_gives_no_interval_and_says_all_seeds_equal() -> None:
    s = stats.summarize([3.0, 3.0, 3.0])
    assert (s.low, s.high, s.equal) == (None, None, True)
    rows = result_rows([record(i, "GN", i, 3.0) for i in range(3)])
    assert "3.00 (all seeds equal)" in results_table(rows, "markdown")


def test_two_constant_groups_with_different_values_are_not_called_worse() -> None:
    found = stats.versus_best({"a": [99.0, 99.0], "b": [98.0, 98.0]})
    assert found["b"].p is None and not found["b"].worse
    assert found["b"].why_none == "all seeds equal: no test"


def test_an_anova_with_no_residual_variance_gives_no_test() -> None:
    rows = [
        ({"a": a, "b": b}, float(i))
        for i, (a, b) in enumerate([("x", "u"), ("x", "v"), ("y", "u"), ("y", "v")])
        for _ in range(2)
    ]
    assert stats.anova_interaction(rows, "a", "b") == (None, None)


def test_nan_and_failed_trials_are_left_out_and_named() -> None:
    runs = [
        record(0, "BN", 1, math.nan),
        record(1, "BN", 2, 99.0),
        record(2, "BN", 3, 99.2),
        record(3, "GN", 1, 99.5),
        record(4, "GN", 2, 99.4),
        RunRecord("run5", 5, record(5, "GN", 3, 0).params, 12.0, 1, "failed", "boom"),
        RunRecord("run6", 6, record(6, "GN", 4, 0).params, 50.0, 1, "stopped", None),
    ]
    rows = result_rows(runs)
    assert [r.setting["norm"] for r in rows] == ["GN", "BN"]  # NaN did not make BN "best"
    assert rows[0].accs == [99.5, 99.4] and rows[1].accs == [99.0, 99.2]
    assert rows[0].left_out == ["trial 5 (failed)", "trial 6 (stopped)"]
    assert rows[1].left_out == ["trial 0 (max val_acc nan)"]
    assert rows[1].vs_best.p is not None and not math.isnan(rows[1].vs_best.p)
    text = " ".join(findings(rows))
    assert (
        "Left out of every mean and test (3): trial 5 (failed), trial 6 (stopped), "
        "trial 0 (max val_acc nan)" in text
    )
    table = results_table(rows, "markdown")
    assert "| 2 |" in table  # n counts the values used, not the runs
    with pytest.raises(ValueError):
        stats.summarize([1.0, math.nan])


def test_intervals_stay_within_what_can_happen() -> None:
    acc = stats.summarize([90.8 - 10, 90.8 + 10], bounds=(0.0, 100.0))
    assert acc.clipped and acc.high == 100.0 and acc.low == 0.0  # ±127 cut to 0–100
    runs = [
        RunRecord(
            f"r{i}",
            i,
            {**record(i, "GN", i, 0).params, "train.epochs": "3"},
            99.0 + i,
            e,
            "done",
            None,
        )
        for i, e in enumerate([1, 3, 3, 2])
    ]
    (row,) = result_rows(runs)
    assert 1 <= row.epochs.low and row.epochs.high <= 3  # the best epoch lies in what was trained
    two = result_rows([record(0, "GN", 1, 60.0), record(1, "GN", 2, 99.0)])
    assert two[0].summary.clipped and "†" in results_table(two, "markdown")
    text = " ".join(findings(two))
    assert "With n = 2 a t interval has 1 degree of freedom: it is ±12.7 standard errors" in text
    assert "cut there" in text


def test_not_distinguishable_says_what_gap_would_have_been() -> None:
    rng = random.Random(3)
    runs = [
        record(i * 3 + s, norm, s, acc)
        for i, (norm, mean) in enumerate((("GN", 99.4), ("BN", 99.35)))
        for s, acc in enumerate(noisy(mean, 3, rng, sd=0.1))
    ]
    rows = result_rows(runs)
    v = rows[1].vs_best
    c = stats.welch(rows[0].accs, rows[1].accs)
    from scipy import stats as sp

    assert v.gap == pytest.approx(sp.t.ppf(1 - 0.05 / 2, c.df) * c.se)  # one comparison
    assert (
        f"not distinguishable at n = 3 (p={v.p_holm:.2g}; a gap of about {v.gap:.2f} would "
        f"be)" in results_table(rows, "markdown")
    )
    assert "winner's curse" in " ".join(findings(rows))


# -- claims ---------------------------------------------------------------------------------------


def claim_rows(
    gn16: float, gn128: float, seeds: int = 3, sd: float = 0.05, seed: int = 0
) -> list[tuple[dict, float]]:
    """norm × batch with BN at 99.0 everywhere and GN's means given: known truth."""
    rng = random.Random(seed)
    means = {("BN", "16"): 99.0, ("BN", "128"): 99.0, ("GN", "16"): gn16, ("GN", "128"): gn128}
    return [
        ({"model.args.norm": n, "train.batch_size": b}, v)
        for (n, b), m in means.items()
        for v in noisy(m, seeds, rng, sd)
    ]


FACTORS = ["model.args.norm", "train.batch_size"]
GN_BN = dict(better={"model.args.norm": "GN"}, than={"model.args.norm": "BN"})


def test_a_true_claim_is_supported() -> None:
    r = stats.claim(
        claim_rows(99.6, 99.0),
        FACTORS,
        **GN_BN,
        at={"train.batch_size": "16"},
        more_than_at={"train.batch_size": "128"},
    )
    assert r.verdict == stats.SUPPORTED and r.p < 0.001 and r.low > 0
    assert r.estimate == pytest.approx(0.6, abs=0.1)
    assert dict(r.improvement) == {
        "train.batch_size=16": 1.0,
        "train.batch_size=128": pytest.approx(0.5, abs=0.4),
    }


def test_a_claim_the_data_contradict_points_the_other_way() -> None:
    r = stats.claim(claim_rows(98.5, 99.0), FACTORS, **GN_BN, at={"train.batch_size": "16"})
    assert r.verdict.startswith(stats.OTHER_WAY + ", clearly") and r.p > 0.999 and r.high < 0
    assert r.improvement == [("train.batch_size=16", 0.0)]


def test_a_claim_within_the_noise_is_undecided() -> None:
    r = stats.claim(
        claim_rows(99.02, 99.0, sd=0.3, seed=4), FACTORS, **GN_BN, at={"train.batch_size": "16"}
    )
    assert r.estimate > 0 and r.p > 0.05 and r.verdict == stats.UNDECIDED
    assert r.low < 0 < r.high


def test_the_report_answers_the_spec_s_claims() -> None:
    from tunekit.spec import Claim

    runs = [
        RunRecord(
            f"r{i}",
            i,
            {
                "model.args.norm": p["model.args.norm"],
                "train.batch_size": p["train.batch_size"],
                "train.seed": str(i),
                "train.l1": "0",
                "train.l2": "0",
            },
            v,
            3,
            "done",
            None,
        )
        for i, (p, v) in enumerate(claim_rows(99.6, 99.0))
    ]
    claim = Claim(
        text="GN does better at small batches",
        better={"model.args.norm": "GN"},
        than={"model.args.norm": "BN"},
        at={"train.batch_size": 16},
        more_than_at={"train.batch_size": 128},
    )
    text = " ".join(findings(result_rows(runs), [claim]))
    assert (
        "Claim: “GN does better at small batches” (norm=GN − norm=BN at batch_size=16) − "
        "(norm=GN − norm=BN at batch_size=128) > 0: estimate +0." in text
    )
    assert "Verdict: supported." in text
    assert "P(norm=GN > norm=BN) over seed pairs 1.00 at batch_size=16, " in text


def test_parameter_importance_finds_the_parameter_that_matters() -> None:
    rng = random.Random(5)
    configs = []
    for _ in range(24):
        lr, groups = 10 ** rng.uniform(-3, -1), rng.choice([1, 2, 4])
        configs.append(
            (
                {"train.optimizer.lr": str(lr), "model.args.groups": str(groups)},
                99.0 - 3 * abs(math.log10(lr) + 2) + rng.gauss(0, 0.02),
            )
        )
    found = fanova(configs, ["train.optimizer.lr", "model.args.groups"])
    assert found["train.optimizer.lr"] > 0.8 > found["model.args.groups"], found
    assert sum(found.values()) == pytest.approx(1.0)
    assert fanova(configs[:3], ["train.optimizer.lr", "model.args.groups"]) is None
    assert fanova(configs, ["train.optimizer.lr"]) is None  # one parameter: trivial


def test_the_report_gives_a_search_s_parameter_importance() -> None:
    rng = random.Random(6)
    runs = []
    for _c in range(8):
        lr, groups = 10 ** rng.uniform(-3, -1), rng.choice([1, 2, 4])
        for s in range(2):
            runs.append(
                RunRecord(
                    f"r{len(runs)}",
                    len(runs),
                    {
                        "train.optimizer.lr": str(lr),
                        "model.args.groups": str(groups),
                        "train.seed": str(s),
                        "model.args.norm": "GN",
                    },
                    99.0 - 3 * abs(math.log10(lr) + 2) + rng.gauss(0, 0.02),
                    1,
                    "done",
                    None,
                )
            )
    text = " ".join(
        findings(result_rows(runs), sampled=["train.optimizer.lr", "model.args.groups"])
    )
    assert (
        "Parameter importance over 8 configurations' seed means (optuna's fANOVA: a "
        "random-forest model's estimate" in text
    )
    assert "not a test): lr 0." in text  # the one that matters comes first
