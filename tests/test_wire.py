"""The Ray trial's codec: what the driver writes is what the workers, the relay and the report
read back."""

from __future__ import annotations

import math

from tunekit import wire
from tunekit.metrics import METRICS


def test_a_trial_and_a_pack_read_back_as_written() -> None:
    for indices, packed in (([3], False), ([2, 3], True), ([5], True)):
        config = {"train.optimizer.lr": 0.1, **wire.numbered(indices, packed)}
        assert wire.is_numbered(config) and wire.is_packed(config) == packed
        assert wire.members(config) == indices
        assert wire.proposal(config) == {"train.optimizer.lr": 0.1}
        assert wire.from_folder(f"/runs/x/{wire.name(config)}/") == (packed, indices[0])
    assert wire.name(wire.numbered([3], False)) == "trial_0003"
    assert wire.name(wire.numbered([2, 3], True)) == "pack_0002"
    assert not wire.is_numbered({}) and wire.from_folder("/runs/x/other") is None


def test_a_grid_is_trial_numbers_unless_a_pack_has_more_than_one() -> None:
    key, values = wire.grid([[0], [1]])
    assert [wire.members({key: v}) for v in values] == [[0], [1]]
    key, values = wire.grid([[0, 1], [2]])
    assert [wire.members({key: v}) for v in values] == [[0, 1], [2]]
    assert all(wire.is_packed({key: v}) for v in values)


def test_each_member_s_metrics_come_back_from_a_result_and_from_ray_s_flat_rows() -> None:
    metrics = {k: float(i) for i, k in enumerate(METRICS)}
    result = {"epoch": 1, wire.member(4): metrics, wire.member(5): {"failed": "nan loss"}}
    assert wire.member_metrics(result, 4, packed=True) == metrics
    assert wire.member_metrics(result, 5, packed=True) == {"failed": "nan loss"}
    flat = {f"{wire.member(4)}/{k}": v for k, v in metrics.items()}
    flat |= {f"{wire.member(5)}/{k}": math.nan for k in METRICS}  # a failed member's columns
    flat[f"{wire.member(5)}/failed"] = "nan loss"
    assert wire.member_metrics(flat, 4, packed=True) == metrics
    assert wire.member_metrics(flat, 5, packed=True) == {"failed": "nan loss"}
    assert wire.member_metrics(flat, 6, packed=True) is None
    assert wire.member_metrics(metrics, 0, packed=False) == metrics
