"""A recorded sweep, read back from MLflow: found by its spec file or experiment name, its
results table and findings, its study report and its comparison graphs. `api` hands these on:
`tunekit report` and `tunekit plot` call them through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunekit.errors import UsageError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from tunekit.records import RunRecord
    from tunekit.results import ResultRow
    from tunekit.spec import Claim, ExperimentSpec


@dataclass(frozen=True)
class Sweep:
    """A sweep MLflow holds: its store, experiment and run, and the spec file it was named by."""

    client: MlflowClient
    experiment: str
    run_id: str
    spec: ExperimentSpec | None = None  # None: named by its experiment


def named(spec_or_name: str | Path) -> tuple[ExperimentSpec | None, str]:
    """(the spec, its MLflow experiment) of a spec file, validated; (None, the name) of a name."""
    from tunekit import track
    from tunekit.spec import load_spec

    if not Path(spec_or_name).is_file():
        return None, str(spec_or_name)
    spec = load_spec(spec_or_name)
    return spec, track.experiment_name(spec)


def find(spec_or_name: str | Path | Sweep, tracking_uri: str | None = None) -> Sweep:
    """The latest sweep of a spec file or an experiment name. Read-only: a store that does not
    exist, or holds no such sweep, is an error naming where tunekit looked."""
    from tunekit import track

    if isinstance(spec_or_name, Sweep):
        return spec_or_name
    spec, name = named(spec_or_name)
    client = track.connect(track.tracking_uri(spec, tracking_uri), create=False)
    return Sweep(client, name, track.find_sweep(client, name), spec)


def _claims(spec: ExperimentSpec | None, recorded: str) -> tuple[list[Claim], list[str]]:
    """(claims to test, parameters a search sampled): the spec file's, if one was given, else
    those of the spec the sweep recorded."""
    if spec is None:
        import yaml

        from tunekit.spec import ExperimentSpec

        try:
            spec = ExperimentSpec.model_validate(yaml.safe_load(recorded) or {})
        except Exception:  # noqa: BLE001 (recorded by an older tunekit, or none: nothing to add)
            return [], []
    return list(spec.claims), list(spec.search.sample)


@dataclass(frozen=True)
class Results:
    """A sweep's results as `tunekit report` shows them."""

    name: str  # the MLflow experiment, or the folder of a trials.csv
    records: list[RunRecord]  # every trial, by plan number
    rows: list[ResultRow]  # one per configuration, best first
    claims: list[Claim]
    sampled: list[str]  # the parameters a TPE or random search sampled

    def table(self) -> list[dict[str, Any]]:
        """One record per configuration (mean max val_acc, 95% interval, each seed's, n, ...)."""
        return [r.as_dict() for r in self.rows]

    def findings(self) -> list[str]:
        """The statistics and the claims' verdicts in sentences, then what failed."""
        from tunekit.findings import findings
        from tunekit.results import failures

        return findings(self.rows, self.claims, self.sampled) + failures(self.records)


def results(spec_or_name: str | Path | Sweep, tracking_uri: str | None = None) -> Results:
    """The results of a spec's (or an experiment's) latest sweep, read from MLflow."""
    from tunekit import track
    from tunekit.results import result_rows

    sweep = find(spec_or_name, tracking_uri)
    records = track.trial_runs(sweep.client, sweep.run_id)
    recorded = "" if sweep.spec else track.sweep_texts(sweep.client, sweep.run_id)[0]
    claims, sampled = _claims(sweep.spec, recorded)
    return Results(sweep.experiment, records, result_rows(records), claims, sampled)


def results_csv(trials: Path, spec: str | Path | None = None) -> Results:
    """The results of a study's committed trials.csv, without MLflow; the claims of `spec` if
    it is a spec file."""
    from tunekit.records import read_trials_csv
    from tunekit.results import result_rows

    records = read_trials_csv(trials)
    claims, sampled = _claims(named(spec)[0] if spec else None, "")
    return Results(trials.parent.name, records, result_rows(records), claims, sampled)


def table(spec_or_name: str | Path, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """The results table of a spec's latest sweep, read from MLflow: one record per
    configuration (mean max val_acc, 95% interval, each seed's value, n, vs best, ...)."""
    return results(spec_or_name, tracking_uri).table()


def study_report(
    spec_or_name: str | Path | Sweep,
    out: Path,
    format: str = "markdown",
    *,
    tracking_uri: str | None = None,
) -> list[Path]:
    """Write the whole study report of the latest sweep (markdown or html: table, statistics,
    graphs, digits, spec, environment) into folder `out`, and log it to the sweep's MLflow run.
    Returns the document's path, then its figures'."""
    from tunekit import study, track
    from tunekit.results import result_rows

    sweep = find(spec_or_name, tracking_uri)
    client, run = sweep.client, sweep.run_id
    records = track.trial_runs(client, run)
    spec_text, env = track.sweep_texts(client, run)
    claims, sampled = _claims(sweep.spec, spec_text)
    wrong = {r.run_id: track.misclassified(client, r.run_id) for r in records}
    doc = study.Study(
        name=sweep.experiment,
        sweep_run=run,
        tracking_uri=client.tracking_uri,
        rows=result_rows(records),
        histories={r.run_id: track.history(client, r.run_id) for r in records},
        wrong={i: w for i, w in wrong.items() if w is not None},
        spec_text=spec_text,
        environment=env,
        records=records,
        claims=claims,
        sampled=sampled,
    )
    paths = study.write(doc, out, format)
    track.log_plots(client, run, paths, "report")
    return paths


def plot(
    spec_or_name: str | Path | Sweep,
    out: Path,
    runs: Sequence[str] = (),
    *,
    tracking_uri: str | None = None,
) -> list[Path]:
    """Draw the four comparison graphs and a misclassified-digits grid per trial into folder
    `out`, and log them to the sweep's run. `runs`: trial numbers or MLflow run ids (prefixes
    too); none: every trial."""
    from tunekit import track

    sweep = find(spec_or_name, tracking_uri)
    records = track.trial_runs(sweep.client, sweep.run_id)

    def picks(w: str, r: RunRecord) -> bool:
        return w == str(r.trial) or (not w.isdigit() and r.run_id.startswith(w))

    missing = [w for w in runs if not any(picks(w, r) for r in records)]
    if missing:
        raise UsageError(
            "--runs",
            f"no trial of this sweep is {', '.join(missing)}; trials: "
            f"{' '.join(str(r.trial) for r in records)}",
        )
    chosen = [r for r in records if not runs or any(picks(w, r) for w in runs)]
    return draw(sweep.client, sweep.run_id, chosen, out)


def draw(
    client: MlflowClient, sweep_run: str, chosen: list[RunRecord], folder: Path, grids: bool = True
) -> list[Path]:
    """Draw the comparison graphs (and, with `grids`, each trial's misclassified digits) of trial
    runs into `folder`, and log them to the sweep's run."""
    import json

    from tunekit import figures, track

    folder.mkdir(parents=True, exist_ok=True)
    labels = figures.legend_labels([r.params for r in chosen])
    curves = [(label, track.history(client, r.run_id)) for label, r in zip(labels, chosen)]
    paths = [folder / "curves.json"]  # the data behind the graphs
    paths[0].write_text(
        json.dumps(
            [
                {"trial": r.trial, "label": label, "history": h}
                for r, (label, h) in zip(chosen, curves)
            ],
            indent=1,
        )
    )
    for name, fig in figures.curve_figures(curves).items():
        paths.append(folder / f"{name}.png")
        fig.savefig(paths[-1])
    for label, r in zip(labels, chosen if grids else []):
        wrong = track.misclassified(client, r.run_id)
        if wrong is not None:
            paths.append(folder / f"misclassified_trial_{r.trial}.png")
            figures.misclassified_figure(
                wrong["images"], wrong["labels"], wrong["preds"], title=f"trial {r.trial}: {label}"
            ).savefig(paths[-1])
    track.log_plots(client, sweep_run, paths)
    return paths
