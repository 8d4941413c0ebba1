"""Specs and their plans: round-trip, expansion counts, and a clear rejection of bad input."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from pydantic import ValidationError

from tunekit.errors import SpecError
from tunekit.plan import differences, expand, fmt, load_plan
from tunekit.spec import Distribution, ExperimentSpec, load_spec


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems(tmp_path: Path, text: str) -> list:
    with pytest.raises(SpecError) as e:
        load_plan(write(tmp_path, text))
    assert e.value.exit_code == 2
    return e.value.problems


@pytest.mark.parametrize(
    "name", ["smoke", "assignment6", "assignment6_as_run", "norm_grid", "norm_batch", "tpe"]
)
def test_shipped_experiments_round_trip(name: str, tmp_path: Path) -> None:
    spec = load_spec(REPO / "experiments" / f"{name}.yaml")
    dumped = write(tmp_path, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    again = load_plan(dumped).spec
    assert again == spec
    assert [t.config for t in expand(again)] == [t.config for t in expand(spec)]


def test_shipped_experiment_sizes() -> None:
    names = ("smoke", "assignment6", "assignment6_as_run", "norm_grid", "norm_batch")
    counts = {n: len(load_plan(REPO / "experiments" / f"{n}.yaml").trials) for n in names}
    assert counts == {
        "smoke": 3,
        "assignment6": 42,
        "assignment6_as_run": 36,
        "norm_grid": 48,
        "norm_batch": 18,
    }


def test_expansion_is_grid_times_cases_times_samples_times_repeats(tmp_path: Path) -> None:
    spec = load_plan(
        write(
            tmp_path,
            """
        name: x
        train: {seed: 7}
        search:
          grid: {model.args.norm: [BN, GN, LN], train.batch_size: [32, 64]}
          cases: [{train.l1: 0.0}, {train.l1: 0.0001, train.l2: 0.0004}]
          sample: {train.optimizer.lr: {loguniform: [0.001, 0.1]}}
          num_samples: 2
          repeats: 3
    """,
        )
    ).spec
    trials = expand(spec)
    assert len(trials) == 3 * 2 * 2 * 2 * 3
    assert [t.index for t in trials] == list(range(len(trials)))
    assert {t.config.train.seed for t in trials} == {7, 8, 9}
    assert {(t.config.model.args["norm"], t.config.train.batch_size) for t in trials} == {
        (n, b) for n in ("BN", "GN", "LN") for b in (32, 64)
    }
    lrs = {t.config.train.optimizer.lr for t in trials}
    assert len(lrs) == 2 and all(0.001 <= lr <= 0.1 for lr in lrs)
    case2 = [t for t in trials if t.config.train.l1 == 0.0001]
    assert len(case2) == len(trials) / 2 and all(t.config.train.l2 == 0.0004 for t in case2)
    assert [t.params for t in expand(spec)] == [t.params for t in trials]  # pure: same draws


def test_no_search_is_one_trial_of_the_base(tmp_path: Path) -> None:
    trials = load_plan(write(tmp_path, "name: x\nmodel: {args: {norm: LN}}\n")).trials
    assert (
        len(trials) == 1 and trials[0].params == {} and trials[0].config.model.args["norm"] == "LN"
    )


def test_defaults_are_the_seed_recipe() -> None:
    spec = ExperimentSpec(name="seed")
    assert (spec.model.args["norm"], spec.model.args["groups"], spec.model.args["dropout"]) == (
        "GN",
        4,
        0.069,
    )
    t = spec.train
    assert (t.epochs, t.optimizer.lr, t.optimizer.momentum) == (25, 0.04104, 0.9)
    assert (
        t.scheduler.name,
        t.scheduler.step_size,
        t.scheduler.gamma,
        t.scheduler.start_epoch,
    ) == ("step", 2, 0.09, 12)
    assert spec.data.rotation == 7.0


def test_spec_is_frozen() -> None:
    with pytest.raises(ValidationError, match="frozen"):
        ExperimentSpec(name="x").train.epochs = 3  # type: ignore[misc]


BAD = {
    "yaml syntax": ("name: x\nmodel: {norm: GN\ntrain: {}\n", "<yaml>", "found on line 3", 2),
    "unknown key": (
        "name: x\nmodel: {args: {nrom: GN}}\n",
        "model.args.nrom",
        "did you mean 'norm'",
        2,
    ),
    "wrong type": ("name: x\ntrain: {epochs: many}\n", "train.epochs", "integer", 2),
    "out of range": (
        "name: x\nmodel: {args: {dropout: 1.5}}\n",
        "model.args.dropout",
        "less than 1",
        2,
    ),
    "bad choice": (
        "name: x\nmodel: {args: {norm: XN}}\n",
        "model.args.norm",
        "'BN', 'GN' or 'LN'",
        2,
    ),
    "grid key names no field": (
        "name: x\nsearch:\n  grid: {train.batchsize: [8]}\n",
        "search.grid",
        "did you mean 'train.batch_size'",
        3,
    ),
    "case key names no field": (
        "name: x\nsearch:\n  cases: [{model.nrom: GN}]\n",
        "search.cases",
        "'model.nrom' names no field",
        3,
    ),
    "bad grid value": (
        "name: x\nsearch:\n  grid: {model.args.norm: [BN, XN]}\n",
        "search.grid.model.args.norm",
        "'BN', 'GN' or 'LN'",
        3,
    ),
    "groups do not divide": (
        "name: x\nsearch:\n  grid: {model.args.groups: [2, 3]}\n",
        "search.grid.model.args.groups",
        "does not divide",
        3,
    ),
    "base groups do not divide": (
        "name: x\nmodel: {args: {norm: GN, groups: 5}}\n",
        "model.args.groups",
        "valid: [1, 2, 4, 8]",
        2,
    ),
    "empty search": ("name: x\nsearch: {}\n", "search", "search is empty", 2),
    "empty grid axis": (
        "name: x\nsearch:\n  grid: {model.args.norm: []}\n",
        "search.grid",
        "has no values",
        3,
    ),
    "scheduler field of another name": (
        "name: x\ntrain:\n  scheduler: {name: onecycle, gamma: 0.5}\n",
        "train.scheduler",
        "gamma do(es) not apply to scheduler 'onecycle'",
        3,
    ),
    "bad distribution": (
        "name: x\nsearch:\n  sample: {train.l2: {loguniform: [0.1, 0.01]}}\n",
        "search.sample.train.l2",
        "low must be below high",
        3,
    ),
    "sampled value out of range": (
        "name: x\nsearch:\n  sample: {model.args.dropout: {uniform: [0.5, 1.5]}}\n",
        "search.sample.model.args.dropout",
        "less than 1",
        3,
    ),
    "missing name": ("model: {args: {norm: GN}}\n", "name", "Field required", None),
    "duplicate block": (
        "name: x\ntrain: {epochs: 3}\nmodel: {args: {norm: GN}}\ntrain: {seed: 2}\n",
        "train",
        "given twice, on lines 2 and 4",
        4,
    ),
    "duplicate nested key": (
        "name: x\ntrain:\n  epochs: 3\n  epochs: 4\n",
        "train.epochs",
        "given twice, on lines 3 and 4",
        4,
    ),
    "infinite float": (
        "name: x\ntrain:\n  optimizer: {lr: .inf}\n",
        "train.optimizer.lr",
        "finite number",
        3,
    ),
    "nan float": (
        "name: x\nmodel: {args: {dropout: .nan}}\n",
        "model.args.dropout",
        "finite number",
        2,
    ),
    "infinite grid value": (
        "name: x\nsearch:\n  grid: {train.l2: [0.0, .inf]}\n",
        "search.grid.train.l2",
        "finite number",
        3,
    ),
    "plan too large": (
        "name: x\nsweep: {max_trials: 10}\nsearch:\n"
        "  grid: {train.seed: [1, 2, 3, 4], train.batch_size: [8, 16, 32]}\n",
        "search",
        "the plan has 12 trials, more than sweep.max_trials = 10",
        4,
    ),
    "tpe without budget": (
        "name: x\nsearch:\n  method: tpe\n  sample: {train.l2: {loguniform: [1.0e-6, 1.0e-2]}}\n",
        "search",
        "method tpe searches `sample`",
        3,
    ),
    "tpe with a grid": (
        "name: x\nsearch:\n  method: tpe\n  budget: 4\n  grid: {model.args.norm: "
        "[BN]}\n  sample: {train.l2: {loguniform: [1.0e-6, 1.0e-2]}}\n",
        "search",
        "it takes no grid",
        3,
    ),
    "budget without tpe": (
        "name: x\nsearch:\n  budget: 4\n  grid: {model.args.norm: [BN]}\n",
        "search",
        "budget is for method tpe",
        3,
    ),
    "not a mapping": ("- a\n- b\n", "<spec>", "YAML mapping", 1),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_names_the_field_and_line(case: str, tmp_path: Path) -> None:
    text, field, fragment, line = BAD[case]
    found = problems(tmp_path, text)
    match = [p for p in found if p.field == field]
    assert match, f"no problem for {field!r} in {found}"
    assert fragment in match[0].message
    assert match[0].line == line


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    found = problems(
        tmp_path, "name: x\nmodel: {args: {norm: XN, dropout: -1}}\ntrain: {epochs: 0}\n"
    )
    assert {p.field for p in found} == {"model.args.norm", "model.args.dropout", "train.epochs"}


def test_overrides_are_validated_like_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\n")
    assert load_plan(path, {"train.epochs": 3}).spec.train.epochs == 3
    with pytest.raises(SpecError) as e:
        load_plan(path, {"train.epoch": 3})
    assert e.value.problems[0].field == "train.epoch"
    assert "did you mean 'epochs'" in e.value.problems[0].message


def test_distributions_draw_inside_their_bounds() -> None:
    import random

    rng = random.Random(0)
    for d, lo, hi in (
        (Distribution(uniform=(1.0, 2.0)), 1.0, 2.0),
        (Distribution(loguniform=(1e-6, 1e-2)), 1e-6, 1e-2),
        (Distribution(randint=(3, 5)), 3, 4),
    ):
        draws = [d.draw(rng) for _ in range(200)]
        assert all(lo <= x <= hi for x in draws) and len(set(draws)) > 1
    assert {Distribution(choice=["BN", "LN"]).draw(rng) for _ in range(50)} == {"BN", "LN"}


@pytest.mark.parametrize(
    "content,fragment",
    [
        (
            b"name: x\nmodel: {args: {norm: \xff\xfe}}\n",
            "is not UTF-8 text (byte 0xff at offset 29)",
        ),
        (b"", "is empty"),
        (b"  \n# only a comment\n", "is empty"),
        (None, "is a folder"),
        ("missing", "cannot be read: No such file or directory"),
    ],
)
def test_unreadable_files_are_one_clear_line(tmp_path: Path, content, fragment: str) -> None:
    path = tmp_path / "spec.yaml"
    if content is None:
        path.mkdir()
    elif content != "missing":
        path.write_bytes(content)
    with pytest.raises(SpecError) as e:
        load_plan(path)
    assert fragment in str(e.value)
    assert str(e.value).startswith(f"cannot read spec {path}: it ")
    assert "\n" not in str(e.value) and e.value.exit_code == 2


def test_a_huge_plan_is_refused_fast_and_can_be_allowed(tmp_path: Path) -> None:
    import time

    text = (
        "name: x\nsearch:\n  grid:\n    train.seed: ["
        + ", ".join(map(str, range(400)))
        + "]\n    train.batch_size: [8, 16, 32, 64, 128]\n    model.args.norm: [BN, GN, LN]\n"
        "    train.l1: [0.0, 0.1]\n    train.l2: [0.0, 0.1]\n    model.args.dropout: [0.0, 0.1]\n"
    )
    start = time.perf_counter()
    found = problems(tmp_path, text)
    assert time.perf_counter() - start < 5  # refused from its size, not after expanding it
    assert "the plan has 48,000 trials" in found[0].message
    plan = load_plan(
        write(tmp_path, text.replace("400", "4").replace(", ".join(map(str, range(400))), "1, 2")),
        {"sweep.max_trials": 100_000},
    )
    assert plan.size == len(plan.trials) == 2 * 5 * 3 * 2 * 2 * 2


def test_numbers_people_read_have_about_four_significant_digits() -> None:
    assert fmt(3.7725799377838215e-06) == "3.773e-06"
    assert fmt(0.09537845024235195) == "0.09538"
    assert fmt("0.09537845024235195") == "0.09538"  # as MLflow keeps params
    assert [fmt(v) for v in (0.04104, 0.006604, 128, "128", "GN", 0.0001, True)] == [
        "0.04104",
        "0.006604",
        "128",
        "128",
        "GN",
        "0.0001",
        "True",
    ]


def test_plan_identity_differences_name_trial_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path, "name: x\ntrain: {epochs: 3}\nsearch:\n  grid: {model.args.norm: [BN, GN]}\n"
    )
    a, b = load_plan(path), load_plan(path, {"train.epochs": 2})
    assert differences(a.identity(), a.identity()) == []
    changed = differences(a.identity(), b.identity())
    assert "trials.0.config.train.epochs: 3 -> 2" in changed and len(changed) == 2
    path.write_text(
        "name: x\ntrain: {epochs: 3}\nsearch:\n  grid: {model.args.norm: [BN, GN, LN]}\n"
    )
    assert "trials.count: 2 -> 3" in differences(a.identity(), load_plan(path).identity())


def test_plan_json_keeps_full_precision(tmp_path: Path) -> None:
    plan = load_plan(
        write(
            tmp_path,
            """
        name: x
        search:
          sample: {train.l2: {loguniform: [1.0e-6, 1.0e-2]}}
          num_samples: 3
    """,
        )
    )
    records = plan.as_json()["trials"]
    assert [r["trial"] for r in records] == [0, 1, 2]
    assert [r["params"]["train.l2"] for r in records] == [t.config.train.l2 for t in plan.trials]
    assert [r["config"]["train"]["l2"] for r in records] == [t.config.train.l2 for t in plan.trials]
