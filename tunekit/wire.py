"""The one codec of a Ray trial: what the driver writes into a Ray trial's config, what the
trainable's results hold, and what Ray names the trial and its folder. The driver (`sweep`), the
workers (`trainable`), the plan and the report spell none of it themselves.

- config: {"trial": 3} for one plan trial, {"pack": [2, 3]} for a pack of them; an adaptive
  method's config also holds its proposal's values, under their field paths;
- a pack's result: each member's epoch metrics, or {"failed": why}, under "m<trial>" (which Ray
  flattens to "m<trial>/val_acc", ... in its files); a lone trial's, at the top level;
- name and folder: trial_0003 for a trial, pack_0002 for a pack (its first trial's number).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from tunekit.metrics import METRICS

TRIAL = "trial"  # config key: the plan trial a Ray trial trains
PACK = "pack"  # config key: the plan trials a Ray trial trains as one pack, in plan order
_FOLDER = re.compile(rf"({TRIAL}|{PACK})_(\d+)$")


def numbered(indices: Sequence[int], packed: bool) -> dict[str, Any]:
    """The numbering of a Ray trial that trains plan trials `indices`: as a pack, or alone."""
    return {PACK: list(indices)} if packed else {TRIAL: indices[0]}


def grid(packs: Sequence[Sequence[int]]) -> tuple[str, list[Any]]:
    """The key and values of the grid Tune runs a fixed plan as: its trial numbers, or its packs
    (every one, a pack of one included) where any pack has more than one trial."""
    if any(len(p) > 1 for p in packs):
        return PACK, [list(p) for p in packs]
    return TRIAL, [p[0] for p in packs]


def is_numbered(config: Mapping[str, Any]) -> bool:
    """Whether a Ray config says which plan trials it trains (an empty one, of a trial that never
    reported, does not)."""
    return config.get(TRIAL) is not None or PACK in config


def is_packed(config: Mapping[str, Any]) -> bool:
    return PACK in config


def members(config: Mapping[str, Any]) -> list[int]:
    """The plan trials a Ray trial trains: its pack, or its one trial."""
    return list(config[PACK]) if PACK in config else [config[TRIAL]]


def proposal(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """An adaptive method's proposal: a Ray config's values, its numbering left out."""
    return {k: v for k, v in (config or {}).items() if k not in (TRIAL, PACK)}


def name(config: Mapping[str, Any]) -> str:
    """trial_0003: a trial's name and folder is its plan number; pack_0002: a pack's, its
    first trial's."""
    return folder(members(config)[0], is_packed(config))


def folder(index: int, packed: bool) -> str:
    return f"{PACK if packed else TRIAL}_{index:04d}"


def from_folder(path: str | None) -> tuple[bool, int] | None:
    """(packed, first plan trial) of a Ray trial's folder, from its path; None if not one."""
    match = _FOLDER.search((path or "").rstrip("/"))
    return (match.group(1) == PACK, int(match.group(2))) if match else None


def member(index: int) -> str:
    """The key of plan trial `index`'s metrics in its pack's result."""
    return f"m{index}"


def member_metrics(result: Mapping[str, Any], index: int, packed: bool) -> dict[str, Any] | None:
    """Trial `index`'s part of a Ray result (as reported, or a row of Ray's files): its
    metrics, {'failed': why}, or None if absent."""
    if not packed:
        return {k: result[k] for k in METRICS} if all(k in result for k in METRICS) else None
    own = result.get(member(index))
    if isinstance(own, dict):
        return own
    prefix = f"{member(index)}/"
    found = {
        k[len(prefix) :]: v
        for k, v in result.items()
        if k.startswith(prefix) and v == v and v is not None
    }  # NaN: the column of a member that had failed
    if found.get("failed"):
        return {"failed": found["failed"]}
    return {k: found[k] for k in METRICS} if all(k in found for k in METRICS) else None
