"""tunekit from Python (a notebook, a script): load a spec with overrides, run its sweep, read the
results table as records. The same functions the `tunekit` command calls, without the terminal.

    import tunekit
    plan = tunekit.load("experiments/smoke.yaml", {"train.epochs": 2})
    outcome = tunekit.run(plan)              # a local Ray, MLflow in ./mlflow.db, as the CLI
    outcome.table()                          # one record per configuration, best first
    tunekit.table("experiments/smoke.yaml")  # the same later, from MLflow alone
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from typing import TYPE_CHECKING

from tunekit.errors import SpecError
from tunekit.plan import Plan

if TYPE_CHECKING:
    from tunekit.checks import Checked


def load(spec: str | Path, overrides: Mapping[str, Any] | None = None) -> Plan:
    """The validated plan of a spec file, with `overrides` (field path -> value, as --set) set;
    import paths in it find modules beside the spec and in the current folder."""
    from tunekit.imports import search_here
    from tunekit.plan import load_plan

    spec = Path(spec)
    search_here(spec.parent, Path.cwd())
    return load_plan(spec, overrides)


def check(plan: Plan) -> Checked:
    """The data read and each model built once on a dummy batch (`checks`), problems named
    against the spec file."""
    from tunekit import checks

    try:
        return checks.check(plan)
    except SpecError as e:
        raise SpecError(e.problems, source=e.source or plan.source) from None


@dataclass
class Outcome:
    """A finished (or interrupted) sweep: every trial's state, its MLflow records, the rows of
    the results table."""

    plan: Plan
    states: list[Any]  # trials.TrialState, by plan number
    records: list[Any]  # records.RunRecord, as MLflow holds them
    rows: list[Any]  # results.ResultRow, best first
    tracking_uri: str
    sweep_run: str  # the MLflow run of the sweep
    path: str  # where Ray keeps its results
    interrupted: bool

    def table(self) -> list[dict[str, Any]]:
        """The results table as records: one dict per configuration, best first."""
        return [r.as_dict() for r in self.rows]


def run(
    plan: Plan | str | Path,
    *,
    overrides: Mapping[str, Any] | None = None,
    address: str | None = None,
    resume: bool = False,
    restart: bool = False,
    tracking_uri: str | None = None,
    listeners: Sequence[Any] = (),
    draw: Callable[[Any, Path], None] | None = None,
    say: Callable[[str], None] = lambda line: None,
    interrupted: threading.Event | None = None,
    checked: Checked | None = None,
) -> Outcome:
    """Run (or resume) a plan's sweep as `tunekit sweep` does: the checks, storage and MLflow
    before any trial, then Ray Tune, every trial recorded in MLflow. `listeners` follow it
    (`trials.Listener`); `say` gets the lines the CLI prints before it starts."""
    from tunekit import cluster, storage, sweep, track
    from tunekit.results import result_rows

    if not isinstance(plan, Plan):
        plan = load(plan, overrides)
    if plan.source is None:
        raise ValueError("run a plan from tunekit.load (it records the spec file)")
    checked = checked or check(plan)
    s = plan.spec
    uri = track.tracking_uri(s, tracking_uri)
    client = track.connect(uri)  # an unreachable server stops us before any trial starts
    # All that can refuse the sweep, before its first trial: the storage takes this driver's
    # writes (URI, bucket, credentials), holds no sweep in the way, and every other node that
    # runs trials reads what the driver wrote there.
    with storage.probe(s) as probe:
        storage.check(plan, resume=resume, restart=restart)
        unchecked = sweep.start(plan, address, probe, checked)
    if unchecked:
        say(f"WARNING: {unchecked}")
    path = storage.record(plan, resume=resume, restart=restart)
    if restart:
        say(
            f"starting {s.name} over: the earlier sweep's results were set aside, its MLflow "
            "runs are kept"
        )
    tracker = track.Tracker(client, plan, plan.source, path, resume=resume, draw=draw)
    interrupted = interrupted or threading.Event()
    states = sweep.run(
        plan,
        address=address,
        resume=resume,
        listeners=[*listeners, tracker],
        interrupted=interrupted,
        checked=checked,
    )
    cluster.stop_ray()
    tracker.finish(states)
    records = track.trial_runs(client, tracker.parent)
    return Outcome(
        plan, states, records, result_rows(records), uri, tracker.parent, path, interrupted.is_set()
    )


def table(spec_or_name: str | Path, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """The results table of a spec's latest sweep, read from MLflow: one record per
    configuration (mean max val_acc, 95% interval, each seed's value, n, vs best, ...)."""
    from tunekit import track
    from tunekit.results import result_rows
    from tunekit.spec import load_spec

    spec = load_spec(spec_or_name) if Path(spec_or_name).is_file() else None
    name = track.experiment_name(spec) if spec else str(spec_or_name)
    client = track.connect(track.tracking_uri(spec, tracking_uri), create=False)
    return [
        r.as_dict() for r in result_rows(track.trial_runs(client, track.find_sweep(client, name)))
    ]
