"""The trial vocabulary the driver and its listeners share: what a trial's status can be, what
the driver knows of one trial, and the listener protocol. No Ray: the live view and the tracker
import this, not the sweep."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from tunekit.errors import TunekitError
from tunekit.plan import label

if TYPE_CHECKING:
    from tunekit.cluster import Ask


class Status(StrEnum):
    """A trial's fate, as the live view, MLflow's `tunekit.status` tag and the report spell it."""

    PENDING = "pending"  # planned, not started
    RUNNING = "running"
    DONE = "done"  # trained every epoch
    STOPPED = "stopped"  # stopped early by ASHA
    FAILED = "failed"  # raised, or its loss diverged
    INVALID = "invalid"  # a TPE proposal that breaks a spec rule: never trained
    UNFINISHED = "unfinished"  # the sweep was interrupted before it finished


class InvalidProposalError(TunekitError):
    """A TPE proposal that breaks a spec rule: reported, never trained."""


@dataclass
class TrialState:
    """What the driver knows of one trial of the plan."""

    index: int  # its number in the plan
    params: dict[str, Any]
    status: Status = Status.PENDING
    history: list[dict[str, Any]] = field(default_factory=list)  # one metrics dict per epoch
    error: str | None = None
    node_ids: set[str] = field(default_factory=set)
    device: str | None = None  # what it trained on (cpu, cuda) and the GPUs Ray gave it
    gpu_ids: str = ""
    warning: str | None = None  # its resources and its device disagree (a GPU left unused)
    retries: int = 0  # times it failed and went on from its last checkpoint (sweep.max_failures)
    ray_id: str | None = None
    proposal: int | None = None  # the configuration its seeds share (TPE proposal, seed pack)
    path: str | None = None  # the trial's folder in the sweep's storage
    best_state: dict[str, Any] | None = None  # from the last checkpoint: the best epoch's
    #                                           weights and misclassified images (train.fit)

    @property
    def best(self) -> dict[str, Any] | None:
        return max(self.history, key=lambda m: m["val_acc"], default=None)

    @property
    def label(self) -> str:
        return label(self.params)

    @property
    def on(self) -> str:
        """What it trained on: 'cuda (GPU 0)', 'cpu', or '' before its first epoch."""
        return (self.device or "") + (f" (GPU {self.gpu_ids})" if self.gpu_ids else "")


class Listener(Protocol):
    """Follows a sweep from the driver: the live view, the tracker."""

    def sweep_started(self, joined: str, asks: Ask) -> None: ...
    def trial_started(self, trial: TrialState) -> None: ...
    def trial_retried(self, trial: TrialState) -> None: ...
    def epoch_done(self, trial: TrialState, metrics: dict[str, Any]) -> None: ...
    def trial_ended(self, trial: TrialState) -> None: ...
