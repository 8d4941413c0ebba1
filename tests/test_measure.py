"""Measuring the step: the dry run's time estimate, and the GPU pack size chosen from
measurements."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunekit import measure
from tunekit.plan import make_plan
from tunekit.spec import ExperimentSpec, TrialConfig


def test_the_estimate_times_each_shape_and_spreads_the_trials_over_the_cores(
    tiny_data: Path,
) -> None:
    spec = ExperimentSpec.model_validate(
        {
            "name": "e",
            "train": {"epochs": 3, "device": "cpu"},
            "search": {"grid": {"train.batch_size": [16, 64], "train.seed": [1, 2, 3]}},
        }
    )
    est = measure.estimate(make_plan(spec), cpus=2, gpus=0)
    assert [n for _, n in est.shapes] == [3, 3] and est.at_once == 2 and est.units == 6
    assert sorted(step.batch for step, _ in est.shapes) == [16, 64]
    for step, _ in est.shapes:
        assert step.k == 1 and step.seconds > 0 and step.eval_seconds > 0
        assert step.steps_per_epoch == 256 // step.batch  # the tiny set: 256 images
    work = sum(3 * n * step.epoch_seconds() for step, n in est.shapes)
    assert est.seconds == pytest.approx(work / 2)
    one = measure.estimate(
        make_plan(
            spec.model_copy(update={"sweep": spec.sweep.model_copy(update={"max_concurrent": 1})})
        ),
        cpus=2,
        gpus=0,
    )
    assert one.at_once == 1


def test_a_pack_is_timed_as_one_step_of_all_its_members(tiny_data: Path) -> None:
    configs = [
        TrialConfig.model_validate({"train": {"batch_size": 32, "device": "cpu", "seed": s}})
        for s in (1, 2, 3)
    ]
    step = measure.time_steps(configs, steps=2, warm=1)
    assert step.k == 3 and step.images_per_s == pytest.approx(96 / step.seconds)


GiB = 2**30


def test_the_pack_stops_growing_where_throughput_does() -> None:
    rates = {1: 1_000.0, 4: 3_900.0, 16: 14_000.0, 64: 15_000.0, 256: 15_500.0}
    choice = measure.choose_pack(rates, 40 * 2**20, 100 * GiB, 140 * GiB, trials=500)
    assert choice.k == 16 and choice.gpu_share == 1.0  # 64 adds < 10%: 16 saturates the GPU
    few = measure.choose_pack(rates, 40 * 2**20, 100 * GiB, 140 * GiB, trials=4)
    assert few.k == 4 and few.gpu_share == 0.25  # 4 members fill a quarter of a saturating pack
    tight = measure.choose_pack(rates, 1 * GiB, 10 * GiB, 16 * GiB, trials=500)
    assert tight.k == 8 and tight.gpu_share == 0.5  # memory: 80% of 10 GiB holds 8 members
    assert "16 members" in choice.why and "40.0 MiB per member" in choice.why
