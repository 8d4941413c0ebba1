"""Learning-rate (and momentum) schedules as plain functions of the step: each member of a pack
follows its own, and a whole epoch of a pack's values is one [K, steps] table, not K scheduler
objects stepped in Python.

- step: the seed's StepLR, which only started stepping after epoch `start_epoch`: the lr of
  epoch e is decayed once per `step_size` epochs done beyond `start_epoch`.
- onecycle: torch's OneCycleLR with its defaults (cosine, div_factor 25, final_div_factor 1e4),
  momentum cycled from 0.95 down to 0.85 and back as torch does for SGD; per batch.
- none: constant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from tunekit.spec import TrainSpec

ONECYCLE_MOMENTUM = (0.95, 0.85)  # torch's max_momentum and base_momentum
DIV, FINAL_DIV = 25.0, 1e4  # torch's div_factor and final_div_factor


def _cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def onecycle(t: TrainSpec, step: int, total: int) -> tuple[float, float]:
    """(lr, momentum) of optimizer step `step` (0-based) of `total`, as torch's OneCycleLR."""
    peak = t.scheduler.max_lr or t.optimizer.lr
    first, low = peak / DIV, peak / DIV / FINAL_DIV
    top, bottom = ONECYCLE_MOMENTUM
    turn = float(t.scheduler.pct_start * total) - 1
    if step <= turn:
        pct = step / turn
        return _cos(first, peak, pct), _cos(top, bottom, pct)
    pct = (step - turn) / (total - 1 - turn)
    return _cos(peak, low, pct), _cos(bottom, top, pct)


def epoch_values(t: TrainSpec, epoch: int, steps: int) -> tuple[list[float], list[float]]:
    """Each step's (lr, momentum) in `epoch` (1-based) of `steps` optimizer steps."""
    s = t.scheduler
    if s.name == "onecycle":
        total = t.epochs * steps
        pairs = [onecycle(t, (epoch - 1) * steps + i, total) for i in range(steps)]
        return [p[0] for p in pairs], [p[1] for p in pairs]
    lr = t.optimizer.lr
    if s.name == "step":
        lr = lr * s.gamma ** (max(0, epoch - 1 - s.start_epoch) // s.step_size)
    return [lr] * steps, [t.optimizer.momentum] * steps


def table(
    trains: Sequence[TrainSpec], epoch: int, steps: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Every member's values in `epoch`: lr and momentum as [steps, K] tensors (row s is step
    s's), and each member's lr at the epoch's start as the float the spec gives (to report)."""
    values = [epoch_values(t, epoch, steps) for t in trains]
    lr = torch.tensor([v[0] for v in values], dtype=torch.float32).t().contiguous()
    momentum = torch.tensor([v[1] for v in values], dtype=torch.float32).t().contiguous()
    return lr.to(device), momentum.to(device), [v[0][0] for v in values]
