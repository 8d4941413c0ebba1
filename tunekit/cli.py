"""The `tunekit` command: each command parses its arguments and calls the modules that do the work."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Optional

import typer
import yaml

from tunekit.errors import Problem, SpecError, TunekitError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Hyperparameter studies of small vision models: YAML spec in, table out.")

SPEC = typer.Argument(..., help="Experiment spec (YAML), e.g. experiments/smoke.yaml.",
                      show_default=False)
SET = typer.Option(None, "--set", help="Override a field: --set train.epochs=1 (repeatable).")


@contextmanager
def _handled() -> Iterator[None]:
    """Turn tunekit's own errors into a message and an exit code (2: bad spec or arguments)."""
    try:
        yield
    except TunekitError as e:
        from tunekit.report import print_error
        print_error(str(e))
        raise typer.Exit(e.exit_code) from None


def _overrides(items: Optional[List[str]]) -> dict[str, Any]:
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SpecError([Problem("--set", f"expected key=value, got {item!r}")])
        out[key.strip()] = yaml.safe_load(value)
    return out


def _load(spec: Path, sets: Optional[List[str]]):
    from tunekit.spec import expand, load_spec
    s = load_spec(spec, _overrides(sets))
    return s, expand(s)


@app.command()
def validate(spec: Path = SPEC, set_: Optional[List[str]] = SET) -> None:
    """Check a spec and print the trials it expands to (the parameters that vary)."""
    with _handled():
        s, trials = _load(spec, set_)
        from tunekit.report import console, trials_table
        console.print(trials_table(s.name, trials))
        console.print(f"{len(trials)} trial(s), valid.")


@app.command()
def schema() -> None:
    """Print the JSON Schema of experiment specs (for editor completion and checks)."""
    from tunekit.spec import ExperimentSpec
    typer.echo(json.dumps(ExperimentSpec.model_json_schema(), indent=2))


@app.command()
def train(spec: Path = SPEC,
          trial: int = typer.Option(0, "--trial", help="Which trial of the expansion to run."),
          set_: Optional[List[str]] = SET,
          threads: int = typer.Option(len(os.sched_getaffinity(0)),
                                      help="torch threads (default: every CPU this process may use).")
          ) -> None:
    """Run one trial of a spec here, in this process, with a progress bar per epoch."""
    with _handled():
        s, trials = _load(spec, set_)
        if not 0 <= trial < len(trials):
            raise SpecError([Problem("--trial", f"{spec} has {len(trials)} trial(s): "
                                                f"0..{len(trials) - 1}, got {trial}")])
        from tunekit.report import EpochProgress, console, fit_summary
        from tunekit.train import fit
        t = trials[trial]
        setting = ", ".join(f"{k}={v}" for k, v in t.params.items()) or "base config"
        console.print(f"[bold]{s.name}[/] trial {trial}: {setting}")
        with EpochProgress(f"trial {trial}", t.config.train.epochs) as progress:
            result = fit(t.config, progress, threads=threads)
        console.print(fit_summary(result))


TRACKING = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: the spec's "
                        "tracking.uri, else $MLFLOW_TRACKING_URI, else ./mlflow.db).")


@app.command()
def sweep(spec: Path = SPEC, set_: Optional[List[str]] = SET,
          address: Optional[str] = typer.Option(
              None, help="Ray cluster: 'auto' (this node's), HOST:6379, or ray://HOST:10001. "
                         "Default: start a local Ray for this sweep."),
          resume: bool = typer.Option(False, "--resume",
                                      help="Carry on an interrupted sweep of this spec."),
          dry_run: bool = typer.Option(False, "--dry-run",
                                       help="Print the trials and resources; start nothing."),
          tracking_uri: Optional[str] = TRACKING) -> None:
    """Run every trial of a spec on Ray Tune, record it in MLflow, print max val_acc per trial.

    Exit code 0 when every trial finished, 1 when any failed, 130 when interrupted (Ctrl-C):
    run it again with --resume to carry on.
    """
    with _handled():
        s, trials = _load(spec, set_)
        from tunekit import report
        if dry_run:
            report.console.print(report.trials_table(s.name, trials))
            report.console.print(report.resources_line(s, len(trials)))
            return
        from tunekit import sweep as sweeps, track
        uri = track.tracking_uri(s, tracking_uri)
        client = track.connect(uri)  # an unreachable server stops us before any trial starts
        path = sweeps.prepare(s, address=address, resume=resume)
        tracker = track.Tracker(client, s, spec, path, resume=resume)
        with report.SweepView(s.name, len(trials), s.train.epochs) as view:
            states = sweeps.run(s, address=address, resume=resume, listeners=[view, tracker])
        tracker.finish(states)
        records = track.trial_runs(client, tracker.parent)
        with tempfile.TemporaryDirectory() as d:  # the comparison graphs, for the sweep's run
            _plot(client, tracker.parent, records, Path(d), grids=False)
        rows = report.result_rows(records)
        report.console.print(report.results_table(f"{s.name}: max val_acc per configuration", rows))
        report.console.print(f"MLflow: {uri}, experiment {track.experiment_name(s)!r}, "
                             f"sweep run {tracker.parent}", highlight=False, soft_wrap=True)
        failed = [t for t in states if t.status == "failed"]
        interrupted = [t for t in states if t.status == "unfinished"] or len(states) < len(trials)
        if interrupted:
            report.console.print(f"[yellow]interrupted:[/] continue with: tunekit sweep {spec} "
                                 "--resume")
        if failed:
            report.console.print(f"[red]{len(failed)} of {len(states)} trial(s) failed[/] "
                                 f"(tracebacks: error.txt in each trial's folder under {path}):",
                                 highlight=False)
            for line in report.failures(states):
                report.console.print(f"  {line}", highlight=False, soft_wrap=True)
        raise typer.Exit(130 if interrupted else 1 if failed else 0)


def _tracking(name_or_spec: str, tracking_uri: Optional[str]):
    """(client, latest sweep run, experiment name) for a spec file or an experiment name."""
    from tunekit import track
    from tunekit.spec import load_spec
    spec = load_spec(name_or_spec) if Path(name_or_spec).is_file() else None
    name = track.experiment_name(spec) if spec else name_or_spec
    client = track.connect(track.tracking_uri(spec, tracking_uri))
    return client, track.find_sweep(client, name), name


NAME = typer.Argument(..., help="A spec file, or the name of its MLflow experiment.",
                      show_default=False)


@app.command("report")
def report_(name_or_spec: str = NAME,
            format: str = typer.Option("table", "--format", "-f",
                                       help="table, markdown, csv or json."),
            tracking_uri: Optional[str] = TRACKING) -> None:
    """Rebuild the max-val-accuracy table of the latest sweep from MLflow.

    Trials that differ only in their seed are grouped: mean ± std over n.
    """
    with _handled():
        if format not in ("table", "markdown", "csv", "json"):
            raise SpecError([Problem("--format", f"{format!r}: valid: table, markdown, csv, json")])
        from tunekit import report, track
        client, sweep_run, name = _tracking(name_or_spec, tracking_uri)
        rows = report.result_rows(track.trial_runs(client, sweep_run))
        out = report.results_table(f"{name}: max val_acc", rows, format)
        if isinstance(out, str):
            typer.echo(out, nl=False)
        else:
            report.console.print(out)


@app.command()
def plot(name_or_spec: str = NAME,
         runs: Optional[List[str]] = typer.Option(None, "--runs", help="MLflow run ids (or "
                                                  "prefixes) to draw; default: every trial."),
         out: Path = typer.Option(Path("plots"), "--out", help="Folder for the PNG files."),
         tracking_uri: Optional[str] = TRACKING) -> None:
    """Draw the four comparison graphs and a misclassified-digits grid per trial, from MLflow.

    The PNG files go to --out and to the sweep's MLflow run.
    """
    with _handled():
        from tunekit import report, track
        client, sweep_run, _ = _tracking(name_or_spec, tracking_uri)
        records = track.trial_runs(client, sweep_run)
        chosen = [r for r in records if not runs or any(r.run_id.startswith(p) for p in runs)]
        if runs and len(chosen) < len(runs):
            raise SpecError([Problem("--runs", f"no trial run of this sweep matches some of "
                                     f"{runs}; runs: {' '.join(r.run_id for r in records)}")])
        for path in _plot(client, sweep_run, chosen, out):
            report.console.print(f"wrote {path}", highlight=False)


def _plot(client, sweep_run: str, chosen: list, folder: Path, grids: bool = True) -> List[Path]:
    """Draw the comparison graphs (and, with `grids`, each trial's misclassified digits) of trial
    runs into `folder`, and log them to the sweep's run."""
    from tunekit import report, track
    folder.mkdir(parents=True, exist_ok=True)
    labels = report.legend_labels([r.params for r in chosen])
    curves = [(label, track.history(client, r.run_id)) for label, r in zip(labels, chosen)]
    paths = [folder / "curves.json"]  # the data behind the graphs
    paths[0].write_text(json.dumps(dict(curves), indent=1))
    for name, fig in report.curve_figures(curves).items():
        paths.append(folder / f"{name}.png")
        fig.savefig(paths[-1])
    for label, r in zip(labels, chosen if grids else []):
        wrong = track.misclassified(client, r.run_id)
        if wrong is not None:
            paths.append(folder / f"misclassified_{r.run_id[:12]}.png")
            report.misclassified_figure(wrong["images"], wrong["labels"], wrong["preds"],
                                        title=label).savefig(paths[-1])
    track.log_plots(client, sweep_run, paths)
    return paths
