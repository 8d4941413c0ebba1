"""MLflow tracking: one experiment per spec, a parent run per sweep, a child run per trial; the
only module that imports mlflow. Every write happens in the driver, from what the trials report
and checkpoint, so workers never need to reach the tracking server. A resumed sweep finds its
parent run and its trials' runs again by their tags: no duplicate runs, no lost epochs."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from tunekit.environment import environment
from tunekit.errors import SpecError, TunekitError
from tunekit.metrics import METRICS
from tunekit.records import RunRecord, flat_params
from tunekit.spec import ExperimentSpec
from tunekit.trials import Status, TrialState

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from tunekit.cluster import Ask
    from tunekit.plan import Plan

TAG = "tunekit."  # prefix of tunekit's own run tags
END_STATUS = {
    Status.DONE: "FINISHED",
    Status.STOPPED: "FINISHED",
    Status.FAILED: "FAILED",
    Status.INVALID: "FAILED",
    Status.UNFINISHED: "KILLED",
    Status.PENDING: "KILLED",
}
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI opens on runs


class TrackingError(TunekitError):
    """The tracking server cannot be reached or refused a write; no trial was started."""

    exit_code = 2


def tracking_uri(spec: ExperimentSpec | None, override: str | None = None) -> str:
    """--tracking-uri, else the spec's tracking.uri, else $MLFLOW_TRACKING_URI, else a SQLite
    store in the working directory (./mlflow.db, artifacts in ./mlruns)."""
    uri = override or (spec and spec.tracking.uri) or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path('mlflow.db').resolve()}"


def experiment_name(spec: ExperimentSpec) -> str:
    return spec.tracking.experiment or spec.name


def _local_store(uri: str) -> Path | None:
    """The file or folder of a local store (sqlite:///x.db, file:///x, a plain path), else None."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///"))
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    return None if "://" in uri else Path(uri)


def connect(uri: str, create: bool = True) -> MlflowClient:
    """A client for `uri`, checked to answer within seconds (MLflow's own retries take minutes).

    `create=False` (report, plot, ui): a local store that does not exist is an error naming
    where tunekit looked, instead of a new empty store.
    """
    for name in ("mlflow", "alembic"):  # no INFO lines about database migrations
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # quiet downloads
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # tunekit says where
    local = _local_store(uri)
    if not create and local is not None and not local.exists():
        raise TrackingError(
            f"no MLflow store at {local.resolve()} (from {uri}); run the sweep "
            "first, or point --tracking-uri / tracking.uri / MLFLOW_TRACKING_URI "
            "at the store it used"
        )
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as r:
                r.read()
        except (urllib.error.URLError, OSError) as e:
            raise TrackingError(
                f"cannot reach the MLflow tracking server at {uri}: "
                f"{getattr(e, 'reason', e)}. Start it, or point "
                "--tracking-uri / tracking.uri / MLFLOW_TRACKING_URI elsewhere."
            ) from None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as e:  # any store error: say which store, keep MLflow's words
        raise TrackingError(f"the MLflow store at {uri} does not answer: {e}") from None
    return client


class Tracker:
    """Records a sweep in MLflow. Implements trials.Listener; `finish` reconciles at the end.

    A trial's run is named and tagged by its plan number and carries the plan's parameters,
    whenever it is created: at the trial's start, or at the end for a trial that never started.
    """

    def __init__(
        self,
        client: MlflowClient,
        plan: Plan,
        spec_file: Path,
        sweep_path: str,
        resume: bool = False,
        draw: Callable[[TrialState, Path], None] | None = None,
    ):
        """`draw(trial, folder)` saves a finished trial's figures into folder (PNG files), logged
        as its run's artifacts: the caller's display code, so that tracking imports none."""
        self.client, self.plan, self.draw = client, plan, draw
        spec = plan.spec
        name = experiment_name(spec)
        exp = client.get_experiment_by_name(name)
        self.experiment_id = (
            exp.experiment_id if exp else client.create_experiment(name, tags=EXPERIMENT_KIND)
        )
        found = resume and client.search_runs(
            [self.experiment_id],
            max_results=1,
            order_by=["attributes.start_time DESC"],
            filter_string=f"tags.`{TAG}role` = 'sweep' and tags.`{TAG}sweep_path` = '{sweep_path}'",
        )
        if found:  # a resumed sweep: attach to its run
            self.parent = found[0].info.run_id
            self.client.update_run(self.parent, status="RUNNING")
        else:
            self.parent = client.create_run(
                self.experiment_id,
                run_name=f"{spec.name} sweep",
                tags={f"{TAG}role": "sweep", f"{TAG}sweep_path": sweep_path},
            ).info.run_id
            self.client.log_artifact(self.parent, str(spec_file), "spec")
            self._log_text(
                self.parent,
                yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False),
                "spec/resolved.yaml",
            )
            self._log_text(self.parent, json.dumps(plan.as_json(), indent=1), "plan.json")
            self._log_text(self.parent, json.dumps(environment(), indent=1), "environment.json")
        self.runs: dict[int, str] = {}  # plan trial number -> MLflow run id
        self.logged: dict[str, int] = {}  # MLflow run id -> last epoch logged
        self.unlogged: set[int] = set()  # trials whose run has no params yet
        for run in client.search_runs(
            [self.experiment_id],
            max_results=50_000,
            filter_string=(f"tags.`mlflow.parentRunId` = '{self.parent}'"),
        ):
            index = int(run.data.tags[f"{TAG}trial"])
            self.runs[index] = run.info.run_id
            if not run.data.params:  # the driver died between creating the run and its params
                self.unlogged.add(index)
            history = client.get_metric_history(run.info.run_id, "val_acc")
            self.logged[run.info.run_id] = max((m.step for m in history), default=0)

    # -- trials.Listener ------------------------------------------------------------------------
    def sweep_started(self, joined: str, asks: Ask) -> None:
        self.client.log_batch(
            self.parent, tags=[RunTag(f"{TAG}ray", joined), RunTag(f"{TAG}asks", str(asks))]
        )

    def trial_started(self, trial: TrialState) -> None:
        run = self._run(trial)
        self.client.set_tag(run, f"{TAG}status", Status.RUNNING)

    def epoch_done(self, trial: TrialState, metrics: dict[str, Any]) -> None:
        self._log_epochs(self._run(trial), [metrics])

    def trial_retried(self, trial: TrialState) -> None:
        self.client.set_tag(self._run(trial), f"{TAG}retries", str(trial.retries))

    def trial_ended(self, trial: TrialState) -> None:
        pass  # the final state, with the checkpointed weights, is recorded by `finish`

    # -- the end of the sweep --------------------------------------------------------------------
    def finish(self, trials: Sequence[TrialState]) -> None:
        """Make every trial's run complete (epochs, summary, tags, artifacts) and close the runs."""
        for trial in trials:
            run = self._run(trial)
            self._log_epochs(run, trial.history)
            tags = [
                RunTag(f"{TAG}status", trial.status),
                RunTag(f"{TAG}nodes", ",".join(sorted(trial.node_ids))),
            ]
            if trial.ray_id:
                tags.append(RunTag(f"{TAG}ray_trial_id", trial.ray_id))
            if trial.device:
                tags.append(RunTag(f"{TAG}device", trial.on))
            if trial.warning:
                tags.append(RunTag(f"{TAG}warning", trial.warning))
            if trial.error:  # whole; past MLflow's tag limit, whole in error.txt
                tags.append(RunTag(f"{TAG}error", trial.error[:MAX_TAG_VAL_LENGTH]))
                if len(trial.error) > MAX_TAG_VAL_LENGTH:
                    self._log_text(run, trial.error, "error.txt")
            elif f"{TAG}error" in self.client.get_run(run).data.tags:  # an earlier attempt's
                self.client.delete_tag(run, f"{TAG}error")
            best = trial.best
            summary = (
                []
                if best is None
                else [
                    Metric("max_val_acc", best["val_acc"], _now(), 0),
                    Metric("best_epoch", best["epoch"], _now(), 0),
                ]
            )
            self.client.log_batch(run, metrics=summary, tags=tags)
            if trial.best_state is not None:
                self._log_trial_artifacts(run, trial, trial.best_state)
            self.client.set_terminated(run, END_STATUS.get(trial.status, "FINISHED"))
        ok = all(t.status in (Status.DONE, Status.STOPPED, Status.INVALID) for t in trials)
        self.client.set_terminated(self.parent, "FINISHED" if ok else "FAILED")

    def _run(self, trial: TrialState) -> str:
        if trial.index not in self.runs:
            run = self.client.create_run(
                self.experiment_id,
                run_name=f"trial {trial.index}: {trial.label}",
                tags={
                    "mlflow.parentRunId": self.parent,
                    f"{TAG}sweep_id": self.parent,
                    f"{TAG}trial": str(trial.index),
                    f"{TAG}status": Status.PENDING,
                    **(
                        {f"{TAG}proposal": str(trial.proposal)}  # the seeds of one TPE proposal
                        if trial.proposal is not None
                        else {}
                    ),
                },
            ).info.run_id
            self.runs[trial.index], self.logged[run] = run, 0
            self.unlogged.add(trial.index)
        run = self.runs[trial.index]
        if trial.index in self.unlogged:  # the plan's values (a TPE trial's: its proposal)
            try:
                config = self.plan.trial(trial.index, trial.params).config
                values = flat_params(config)
                self._log_text(
                    run,
                    yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False),
                    "config.yaml",
                )
            except SpecError:  # an invalid TPE proposal: record what it proposed on the base
                values = {
                    **flat_params(self.plan.trial_base()),
                    **{k: str(v) for k, v in trial.params.items()},
                }
            self.client.log_batch(run, params=[Param(k, v) for k, v in values.items()])
            self.unlogged.discard(trial.index)
        return run

    def _log_epochs(self, run: str, history: Sequence[dict[str, Any]]) -> None:
        new = [m for m in history if m["epoch"] > self.logged.get(run, 0)]
        if not new:
            return
        now = _now()
        self.client.log_batch(
            run,
            metrics=[
                Metric(k if k != "seconds" else "epoch_seconds", float(m[k]), now, int(m["epoch"]))
                for m in new
                for k in METRICS
                if k != "epoch"
            ],
        )
        self.logged[run] = max(m["epoch"] for m in new)

    def _log_trial_artifacts(self, run: str, trial: TrialState, best: dict[str, Any]) -> None:
        import torch

        with tempfile.TemporaryDirectory() as d:
            torch.save(best["model"], Path(d) / "best_model.pt")
            torch.save(best["wrong"], Path(d) / "misclassified.pt")
            if self.draw:
                self.draw(trial, Path(d))
            self.client.log_artifacts(run, d)

    def _log_text(self, run: str, text: str, path: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            file = Path(d) / Path(path).name
            file.write_text(text)
            self.client.log_artifact(
                run, str(file), str(Path(path).parent) if "/" in path else None
            )


def find_sweep(client: MlflowClient, experiment: str) -> str:
    """The run id of the latest sweep recorded under `experiment`."""
    exp = client.get_experiment_by_name(experiment)
    runs = (
        []
        if exp is None
        else client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`{TAG}role` = 'sweep'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    )
    if not runs:
        raise TrackingError(
            f"no sweep of {experiment!r} in the MLflow store at {client.tracking_uri}"
        )
    return runs[0].info.run_id


def trial_runs(client: MlflowClient, sweep_run: str) -> list[RunRecord]:
    """Every trial run of a sweep, as MLflow has them."""
    exp = client.get_run(sweep_run).info.experiment_id
    out = []
    for run in client.search_runs(
        [exp], max_results=50_000, filter_string=f"tags.`mlflow.parentRunId` = '{sweep_run}'"
    ):
        m, tags = run.data.metrics, run.data.tags
        out.append(
            RunRecord(
                run.info.run_id,
                int(tags.get(f"{TAG}trial", -1)),
                run.data.params,
                m.get("max_val_acc"),
                int(m["best_epoch"]) if "best_epoch" in m else None,
                tags.get(f"{TAG}status", run.info.status.lower()),
                tags.get(f"{TAG}error"),
            )
        )
    return sorted(out, key=lambda r: r.trial)


def history(client: MlflowClient, run_id: str) -> list[dict[str, Any]]:
    """A run's per-epoch metrics as [{'epoch': 1, 'val_acc': ..., ...}, ...]."""
    by_epoch: dict[int, dict[str, Any]] = {}
    for key in METRICS[1:]:
        name = "epoch_seconds" if key == "seconds" else key
        for m in client.get_metric_history(run_id, name):
            by_epoch.setdefault(m.step, {"epoch": m.step})[key] = m.value
    return [by_epoch[e] for e in sorted(by_epoch)]


def misclassified(client: MlflowClient, run_id: str) -> dict[str, Any] | None:
    """The misclassified test images a trial run stored, or None."""
    import torch

    try:
        with tempfile.TemporaryDirectory() as d:
            path = client.download_artifacts(run_id, "misclassified.pt", d)
            return torch.load(path, weights_only=True, map_location="cpu")
    except (MlflowException, OSError):  # none stored: the trial failed before its first epoch
        return None


def log_plots(
    client: MlflowClient, sweep_run: str, paths: Sequence[Path], folder: str = "plots"
) -> None:
    for path in paths:
        client.log_artifact(sweep_run, str(path), folder)


def sweep_texts(client: MlflowClient, sweep_run: str) -> tuple[str, dict[str, str]]:
    """The spec file a sweep was started from, and the environment it recorded."""
    with tempfile.TemporaryDirectory() as d:
        specs = [
            a.path
            for a in client.list_artifacts(sweep_run, "spec")
            if not a.path.endswith("resolved.yaml")
        ]
        spec = (
            Path(client.download_artifacts(sweep_run, specs[0], d)).read_text()
            if specs
            else "(not recorded)"
        )
        try:
            env = json.loads(
                Path(client.download_artifacts(sweep_run, "environment.json", d)).read_text()
            )
        except (MlflowException, OSError):
            env = {"recorded": "no (a sweep from an older tunekit)"}
    return spec, env


def _now() -> int:
    return int(time.time() * 1000)
