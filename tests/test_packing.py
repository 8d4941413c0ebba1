"""The pack-size policy on the driver: one decision from the spec, the GPU asked for, a measured
size and a model that cannot be packed."""

from __future__ import annotations

from typing import Any

from tunekit.measure import PackChoice
from tunekit.packing import AUTO_PACK, decide
from tunekit.plan import make_plan
from tunekit.spec import ExperimentSpec

GRID = {"grid": {"model.args.norm": ["BN", "GN"]}, "repeats": 2}


def plan(search: dict[str, Any] = GRID, **sweep: Any):
    return make_plan(ExperimentSpec.model_validate({"name": "p", "search": search, "sweep": sweep}))


def test_auto_packs_on_gpus_only_and_a_set_size_everywhere() -> None:
    assert decide(plan(), gpus=0.0).size == 1
    assert decide(plan(), gpus=0.25).size == AUTO_PACK
    assert decide(plan(pack=3), gpus=0.0).size == 3


def test_a_measurement_sizes_auto_packs_on_gpus_and_sets_their_share() -> None:
    choice = PackChoice(8, 0.5, "measured: ...")
    how = decide(plan(), gpus=0.25, measure=lambda: choice)
    assert (how.size, how.gpu_share, how.why) == (8, 0.5, "packs of up to 8, measured: ...")
    assert decide(plan(), gpus=0.0, measure=lambda: choice).size == 1  # trials on CPUs


def test_a_model_that_cannot_be_packed_trains_alone_and_says_why_where_packs_were_asked() -> None:
    assert decide(plan(pack=4), 0.0, "dropout").why == "packs of 1: dropout"
    assert decide(plan(), 0.25, "dropout").size == 1
    assert decide(plan(), 0.0, "dropout").why is None  # auto on CPUs packs nothing anyway


def test_seeds_scored_together_are_one_pack() -> None:
    asha = decide(plan(asha={}), gpus=0.0)
    assert (asha.size, asha.seeds) == (2, True)
    tpe = {"method": "tpe", "budget": 3, "sample": {"train.l2": {"loguniform": [1e-6, 1e-2]}}}
    assert decide(plan(tpe), gpus=0.25).size == 1
    assert decide(plan({**tpe, "repeats": 3}), gpus=0.25).seeds
