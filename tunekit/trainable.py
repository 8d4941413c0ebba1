"""The Ray trainable: the only code that runs on Ray's workers.

A Ray trial is one plan trial or a pack of them (its config numbers them: `wire`); it builds
their validated configs from the plan it was handed, calls `train.fit` or `train.fit_pack` with a
report callback that hands Ray each epoch's metrics and a checkpoint, and so resumes from the last
finished epoch.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from tunekit import cluster, packing, wire
from tunekit.errors import SpecError
from tunekit.plan import OBJECTIVE, Plan
from tunekit.spec import TrialConfig
from tunekit.train import fit, fit_pack, pick_device
from tunekit.trials import InvalidProposalError

STATE_FILE = "state.pt"


def _rooted(cfg: TrialConfig, root: str | None) -> TrialConfig:
    if root and cfg.data.root is None:  # trials run in other working directories
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": Path(root)})})
    return cfg


def train(config: dict[str, Any], plan: Plan, root: str | None) -> None:
    """The Ray trainable: the plan trial or pack that `config` numbers (`wire`), resumed from
    its last checkpoint if any."""
    if wire.is_packed(config):  # (an adaptive config is the proposal's; plan.trial reads it)
        return _train_pack(wire.members(config), plan, root, config)
    (index,) = wire.members(config)
    cfg = _rooted(_planned(plan, index, config).config, root)
    where, resume = _placement(cfg), load_state(tune.get_checkpoint())

    def report(metrics: Any, state: dict[str, Any]) -> None:
        _report({**metrics.as_dict(), **where}, state)

    fit(cfg, report, threads=plan.spec.resources.cpus_per_trial, resume=resume)


def _planned(plan: Plan, index: int, params: dict[str, Any]) -> Any:
    """Plan trial `index` (an adaptive plan's: built from its proposal's params)."""
    try:
        return plan.trial(index, params)
    except SpecError as e:  # only a proposal can be invalid: fixed plans are checked up front
        raise InvalidProposalError(
            "; ".join(f"{p.field}: {p.message}" for p in e.problems)
        ) from None


def _train_pack(
    indices: list[int], plan: Plan, root: str | None, params: dict[str, Any] | None = None
) -> None:
    """A pack of plan trials as one fused network: one result per epoch with each member's
    metrics under its `wire.member` key (or why it failed), and the objective for TPE and ASHA:
    the mean of the members' max val_acc so far where the pack is one configuration's seeds,
    else the best member's val_acc."""
    configs = [_rooted(_planned(plan, i, params or {}).config, root) for i in indices]
    where, resume = _placement(configs[0]), load_state(tune.get_checkpoint())
    seeds = packing.seeds_together(plan)

    def report(metrics: list[Any], state: dict[str, Any]) -> None:
        live = [m for m in metrics if m is not None]
        if seeds:  # each member's best so far, failed ones left out
            best = [
                max(h["val_acc"] for h in s["history"])
                for s in state["members"]
                if s["history"] and not s["failed"]
            ]
            objective = statistics.fmean(best) if best else 0.0
        else:
            objective = max((m.val_acc for m in live), default=0.0)
        out: dict[str, Any] = {
            "epoch": max(len(s["history"]) for s in state["members"]),
            OBJECTIVE[0]: objective,
            **where,
        }
        for i, m, s in zip(indices, metrics, state["members"]):
            out[wire.member(i)] = m.as_dict() if m is not None else {"failed": s["failed"] or ""}
        _report(out, state)

    fit_pack(configs, report, threads=plan.spec.resources.cpus_per_trial, resume=resume)


def _placement(cfg: TrialConfig) -> dict[str, Any]:
    """Where a Ray trial runs and on what: its node, device and GPUs, and a warning if these
    disagree."""
    device = pick_device(cfg.train.device).type
    gpu_ids, warning = cluster.given(device)
    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "device": device,
        "gpu_ids": gpu_ids,
        "warning": warning or "",
    }


def load_state(checkpoint: tune.Checkpoint | None) -> dict[str, Any] | None:
    """The training state a Ray trial saved with a checkpoint (`fit`'s or `fit_pack`'s)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        # CPU tensors whatever device wrote them: a GPU worker's checkpoint is read by a
        # CPU-only head at the end of a sweep, or by a trial resumed on another kind of node
        return torch.load(Path(d) / STATE_FILE, weights_only=True, map_location="cpu")


def _report(result: dict[str, Any], state: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as d:
        torch.save(state, Path(d) / STATE_FILE)
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))
