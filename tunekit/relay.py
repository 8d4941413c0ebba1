"""Ray Tune's trials read back as the plan's: the driver-side callback that relays Ray's events to
the listeners as `trials.TrialState` updates, one per plan trial (a pack's Ray trial updates each of
its members), and each trial's final state from what Ray stored, earlier sessions' included. A
trial's number, parameters and labels always come from the plan (`wire` reads the numbers),
never from what Ray reports.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from tunekit import wire
from tunekit.plan import Plan
from tunekit.trainable import load_state
from tunekit.trials import Listener, Status, TrialState


@dataclass
class Active:
    """The sweep the driver is running now. Ray pickles callbacks with the experiment, so the
    relay keeps nothing itself and a resumed run's relay finds the new listeners here."""

    plan: Plan
    listeners: list[Listener]
    interrupted: threading.Event
    packs: list[list[int]] = field(default_factory=list)
    trials: dict[int, TrialState] = field(default_factory=dict)
    forwarded: bool = False


_active: Active | None = None


def begin(
    plan: Plan, listeners: list[Listener], interrupted: threading.Event, packs: list[list[int]]
) -> Active:
    """The sweep the relay reports on from now until `end`."""
    global _active
    _active = Active(plan, listeners, interrupted, packs)
    return _active


def end() -> None:
    global _active
    _active = None


class Relay(tune.Callback):
    """Turns Ray Tune's driver-side events into TrialState updates for the listeners, one state
    per plan trial (a pack's Ray trial updates each of its members)."""

    def _states(self, trial: Any) -> tuple[list[TrialState], list[Listener]]:
        assert _active is not None
        states = []
        for index in wire.members(trial.config):
            if index not in _active.trials:
                plan = _active.plan
                _active.trials[index] = TrialState(
                    index,
                    plan.proposed_params(index, trial.config)
                    if plan.adaptive
                    else plan.trials[index].params,
                    proposal=plan.proposal(index) if plan.spec.search.repeats > 1 else None,
                )
            state = _active.trials[index]
            state.ray_id = trial.trial_id
            states.append(state)
        return states, _active.listeners

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        # A Ctrl-C that came while Tune was still setting up reached tunekit's handler, not
        # Tune's: hand it on now that Tune's is in place, so Tune stops and saves its state.
        if _active and _active.interrupted.is_set() and not _active.forwarded:
            _active.forwarded = True
            os.kill(os.getpid(), signal.SIGINT)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        for trial in trials:  # know every trial Tune has, started or not (TPE: its params)
            if wire.is_numbered(trial.config):
                self._states(trial)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        states, listeners = self._states(trial)
        for t in states:
            if t.status in (Status.FAILED, Status.DONE):
                continue
            t.status = Status.RUNNING
            for listener in listeners:
                listener.trial_started(t)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        states, listeners = self._states(trial)
        for t in states:
            metrics = wire.member_metrics(result, t.index, wire.is_packed(trial.config))
            if metrics is None or t.status == Status.FAILED:
                continue
            t.node_ids.add(result["node_id"])
            t.device, t.gpu_ids = result["device"], result["gpu_ids"]
            t.warning = result["warning"] or None
            if "failed" in metrics:  # a pack member that diverged: the others train on
                t.status, t.error = Status.FAILED, f"DivergedError: {metrics['failed']}"
                for listener in listeners:
                    listener.trial_ended(t)
                continue
            t.history = [m for m in t.history if m["epoch"] < metrics["epoch"]] + [metrics]
            for listener in listeners:
                listener.epoch_done(t, metrics)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        states, _ = self._states(trial)
        epochs = _active.plan.spec.train.epochs if _active else 0
        for t in states:
            last = t.history[-1]["epoch"] if t.history else None  # None: an earlier session's
            if t.status != Status.FAILED:
                self._end(
                    t, Status.STOPPED if last is not None and last < epochs else Status.DONE, None
                )

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        states, listeners = self._states(trial)  # it failed (its node lost, say) and goes on
        reason = _reason(trial)  # from its last checkpoint, on whichever node has room
        for t in states:
            t.retries += 1
            t.error = reason
            for listener in listeners:
                listener.trial_retried(t)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        reason = _reason(trial)
        states, _ = self._states(trial)
        for t in states:
            if t.status != Status.FAILED:
                self._end(
                    t,
                    Status.INVALID if reason.startswith("InvalidProposal") else Status.FAILED,
                    reason,
                )

    def _end(self, t: TrialState, status: Status, error: str | None) -> None:
        assert _active is not None
        t.status, t.error = status, error
        for listener in _active.listeners:
            listener.trial_ended(t)


def _checkpointed(checkpoint: tune.Checkpoint | None) -> list[dict[str, Any]]:
    """Each member's state in a Ray trial's last checkpoint (one for a lone trial)."""
    state = load_state(checkpoint) or {}
    return state.get("members", [state] if state else [])


def _reason(trial: Any) -> str:
    """The exception a failed trial raised, from the error file Ray keeps for it on the driver."""
    path = getattr(trial, "error_file", None) or ""
    return _exception(Path(path).read_text() if path and os.path.exists(path) else "")


def _exception(text: str) -> str:
    """'DivergedError: training loss became nan ...' from a traceback: the last exception, its
    message whole (Ray's storage errors run over several lines)."""
    found = list(_EXCEPTION_LINE.finditer(text))
    if found:
        name, message = found[-1].group(1), text[found[-1].start(2) :].strip()
        return f"{name.rsplit('.', 1)[-1]}: {message}"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)\w*): (.*)$", re.M)


def final_states(active: Active, result: Any) -> list[TrialState]:
    """A Ray trial's plan trials as its stored results show them (earlier sessions included);
    identity from the plan.

    None for a TPE trial Tune created but never started in a session of this driver: its
    parameters are known only to Tune, which will run it on --resume.
    """
    config = result.config or {}  # empty (or None) for a trial that never reported
    if wire.is_numbered(config):
        indices = wire.members(config)
    elif (found := wire.from_folder(result.path)) is None:
        return []
    elif found[0]:  # a pack's
        indices = next((p for p in active.packs if p[0] == found[1]), [found[1]])
    else:
        indices = [found[1]]
    if active.plan.adaptive and not config and indices[0] not in active.trials:
        return []
    df = result.metrics_dataframe
    rows = [] if df is None or df.empty else df.to_dict("records")
    saved = _checkpointed(result.checkpoint)
    packed = len(indices) > 1 or wire.is_packed(config)
    return [
        _state(active, result, index, rows, saved[i] if i < len(saved) else None, packed)
        for i, index in enumerate(indices)
    ]


def _state(
    active: Active,
    result: Any,
    index: int,
    rows: list[dict[str, Any]],
    saved: dict[str, Any] | None,
    packed: bool,
) -> TrialState:
    known = active.trials.get(index)
    config = result.config or {}
    params = (
        known.params
        if known
        else active.plan.proposed_params(index, config)
        if active.plan.adaptive
        else active.plan.trials[index].params
    )
    mine = [(r, m) for r in rows if (m := wire.member_metrics(r, index, packed)) is not None]
    history = list({m["epoch"]: m for r, m in mine if "failed" not in m}.values())
    last = rows[-1] if rows else {}
    state = TrialState(
        index,
        params,
        history=history,
        node_ids={r["node_id"] for r, _ in mine},
        device=last.get("device"),
        gpu_ids=str(last.get("gpu_ids") or ""),
        warning=last.get("warning") or None,
        ray_id=known.ray_id if known else result.metrics.get("trial_id"),
        path=result.path,
        best_state=saved["best"] if saved else None,
    )
    if state.best_state is not None and "model" not in state.best_state:
        state.best_state = None  # failed before its first epoch ended
    diverged = next((m["failed"] for _, m in mine if "failed" in m), None) or (saved or {}).get(
        "failed"
    )
    epochs = active.plan.spec.train.epochs
    if diverged:
        state.status, state.error = Status.FAILED, f"DivergedError: {diverged}"
    elif result.error is not None:
        state.error = _exception(str(result.error))
        state.status = (
            Status.INVALID if state.error.startswith("InvalidProposal") else Status.FAILED
        )
    elif len(history) == epochs:
        state.status = Status.DONE
    else:  # ASHA stopped it, or the sweep was interrupted before it finished
        stopped = active.plan.spec.sweep.asha and history and not active.interrupted.is_set()
        state.status = Status.STOPPED if stopped else Status.UNFINISHED
    return state
