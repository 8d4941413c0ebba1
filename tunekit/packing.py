"""Packing on the driver: what may share a pack (the trials whose settings differ only in what a
pack keeps per member), and how big a sweep's packs are (`decide`). The plan groups its trials
into packs of that size (`Plan.packs`); the sweep asks Ray for what a pack needs (`Packing.ask`).
No torch and no Ray here: the trainer imports `pack_key`, and a GPU measurement is handed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunekit.cluster import Ask
    from tunekit.measure import PackChoice
    from tunekit.plan import Plan
    from tunekit.spec import TrialConfig

PER_MEMBER = ("seed", "optimizer", "l1", "l2", "penalize")  # train settings a pack's trials
#                                                              may each have their own


def pack_key(config: TrialConfig) -> str:
    """What the trials of one pack must share: everything but the train settings in PER_MEMBER
    (and the device, which the pack decides)."""
    train = config.train.model_dump(mode="json", exclude={*PER_MEMBER, "device"})
    return repr(
        (
            config.data.model_dump(mode="json"),
            config.model.model_dump(mode="json"),
            sorted(train.items()),
        )
    )


AUTO_PACK = 16  # sweep.pack auto where trials get a GPU and the driver has none to measure the
#                pack size on (measure.gpu_pack); on CPUs, 1


@dataclass(frozen=True)
class Packing:
    """How a sweep packs its trials."""

    size: int  # plan trials per Ray trial, at most
    seeds: bool = False  # each pack is one configuration's seeds, stopped and scored as a whole
    gpu_share: float | None = None  # a pack's GPU share, where measured; else its members' shares
    why: str | None = None  # said after the ask's own why: the measurement, or why packs of 1

    def ask(self, one: Ask, packs: list[list[int]]) -> Ask:
        """What each Ray trial asks for, given what one trial asks and the packs (none yet for
        an adaptive method, whose packs are its proposals' seeds)."""
        if self.gpu_share is not None:
            return replace(one, gpus=self.gpu_share, why=f"{one.why}; {self.why}")
        if self.why:
            return replace(one, why=f"{one.why}; {self.why}")
        return one.packed(max((len(p) for p in packs), default=self.size))


def seeds_together(plan: Plan) -> bool:
    """Whether each pack is the seeds of one configuration, scored by their mean: an adaptive
    method's proposal with repeats, or ASHA over a grid with repeats (a configuration stops as a
    whole)."""
    s = plan.spec
    return s.search.repeats > 1 and (plan.adaptive or s.sweep.asha is not None)


def decide(
    plan: Plan,
    gpus: float,
    unpackable: str | None = None,
    measure: Callable[[], PackChoice] | None = None,
) -> Packing:
    """How the sweep of `plan` packs its trials, each asking for `gpus` of a GPU; `unpackable`:
    why the plan's model cannot be packed (`checks`); `measure`: the pack size and GPU share
    measured on the driver's GPU (`measure.gpu_pack`), where it has one.

    1) a configuration's seeds are one pack where they are scored together (`seeds_together`);
    2) an adaptive method's proposals are trained one at a time otherwise;
    3) a model that cannot be packed trains in packs of 1, said where packs were asked for;
    4) sweep.pack auto, trials on GPUs: measured where the driver has a GPU, else AUTO_PACK;
    5) else sweep.pack; auto on CPUs is 1 (a pack trains no faster there than its members one
       after another: benchmarks/pack.py).
    """
    s = plan.spec
    auto = s.sweep.pack == "auto"
    if seeds_together(plan):
        return Packing(s.search.repeats, seeds=True)
    if plan.adaptive:
        return Packing(1)
    if unpackable and (not auto or gpus > 0):
        return Packing(1, why=f"packs of 1: {unpackable}")
    if auto and gpus > 0 and measure is not None:
        choice = measure()
        return Packing(
            choice.k, gpu_share=choice.gpu_share, why=f"packs of up to {choice.k}, {choice.why}"
        )
    if isinstance(s.sweep.pack, int):
        return Packing(s.sweep.pack)
    return Packing(AUTO_PACK if gpus > 0 else 1)
