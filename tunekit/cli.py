"""The `tunekit` command: each command parses its arguments, calls `api` (which does the work, the
same for a notebook) and prints what it returns. It imports no training, tracking or Ray code but
through `api` (tests/test_layout.py holds it to that).

Heavy libraries (torch, Ray, MLflow, matplotlib) are imported inside the commands that need them,
so `--help` and `validate` answer at once.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer
import typer.core

from tunekit import options
from tunekit.errors import TunekitError, UsageError, first_line
from tunekit.options import NAME, SET, SPEC, TRACKING

if TYPE_CHECKING:
    from tunekit.api import Outcome
    from tunekit.plan import Plan


app = typer.Typer(
    cls=options.Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Hyperparameter studies of small vision models: YAML spec in, table out.",
)


@app.command(cls=options.Command)
def validate(
    spec: Path = SPEC,
    set_: list[str] | None = SET,
    format: str = typer.Option(
        "table",
        "--format",
        "-f",
        metavar="FORMAT",
        help="table, or json: every trial at full precision.",
    ),
) -> None:
    """Check a spec and print its plan: the numbered trials and the values each one sets."""
    with options.handled():
        options.choice("--format", format, ("table", "json"))
        from tunekit.api import load

        plan = load(spec, options.overrides(set_))
        if format == "json":
            typer.echo(json.dumps(plan.as_json(), indent=1))
            return
        from tunekit.report import console, plan_table

        console.print(plan_table(plan))
        console.print(f"{plan.size} trial(s), valid.")


@app.command(cls=options.Command)
def schema() -> None:
    """Print the JSON Schema of experiment specs (for editor completion and checks)."""
    from tunekit.spec import ExperimentSpec

    typer.echo(json.dumps(ExperimentSpec.model_json_schema(), indent=2))


@app.command(cls=options.Command)
def train(
    spec: Path = SPEC,
    trial: int = typer.Option(
        0,
        "--trial",
        metavar="N",
        help="Which trial of the plan to run (its number in validate and the sweep).",
    ),
    set_: list[str] | None = SET,
    threads: int | None = typer.Option(
        None,
        min=1,
        metavar="N",
        help="torch threads (default: the spec's resources.cpus_per_trial, as in a sweep).",
    ),
) -> None:
    """Run one trial of a spec here, in this process, exactly as the sweep runs it."""
    with options.handled():
        from tunekit import api

        overrides = options.overrides(set_)
        plan = api.load(spec, overrides)
        t = api.trial(plan, trial, overrides)  # refused, or its data read and model built
        from tunekit.report import EpochProgress, console, fit_summary

        threads = threads or plan.spec.resources.cpus_per_trial
        console.print(f"[bold]{plan.spec.name}[/] trial {trial}: {t.label} · {threads} thread(s)")
        with EpochProgress(f"trial {trial}", t.config.train.epochs) as progress:
            result = api.train(plan, t, threads=threads, progress=progress)
        console.print(fit_summary(result))


@contextmanager
def _interruptible() -> Iterator[threading.Event]:
    """Ctrl-C sets the event instead of raising at a random point; the sweep stops safely."""
    event = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: event.set())
    try:
        yield event
    finally:
        signal.signal(signal.SIGINT, previous)


@app.command(cls=options.Command)
def sweep(
    spec: Path = SPEC,
    set_: list[str] | None = SET,
    address: str | None = typer.Option(
        None,
        metavar="ADDRESS",
        help="Ray cluster: 'auto' (this node's), HOST:6379, or ray://HOST:10001. "
        "Default: start a local Ray for this sweep.",
    ),
    resume: bool = typer.Option(
        False, "--resume", metavar="", help="Carry on an interrupted sweep of the same plan."
    ),
    restart: bool = typer.Option(
        False,
        "--restart",
        metavar="",
        help="Start over: set the earlier sweep's results aside (its MLflow runs are kept).",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", metavar="", help="Print the plan and resources; start nothing."
    ),
    tracking_uri: str | None = TRACKING,
) -> None:
    """Run every trial of a spec's plan on Ray Tune, record it in MLflow, print the results.

    Exit code 0 when every trial finished, 1 when any failed, 130 when interrupted (Ctrl-C):
    run it again with --resume to carry on.
    """
    with options.handled(), _interruptible() as interrupted:
        if resume and restart:
            raise UsageError(
                "--restart",
                "not both --resume and --restart: --resume carries on, --restart starts over",
            )
        from tunekit import api, report

        plan = api.load(spec, options.overrides(set_))
        checked = api.check(plan)  # the data read, each model built: exit 2 if not
        asks = api.ask(plan)  # a bad TUNEKIT_GPUS_PER_TRIAL stops us here
        if dry_run:
            return _dry_run(plan, asks, checked.unpackable)
        s = plan.spec
        with report.SweepView(s.name, plan.size, s.train.epochs) as view:
            outcome = api.run(
                plan,
                address=address,
                resume=resume,
                restart=restart,
                tracking_uri=tracking_uri,
                listeners=[view],
                interrupted=interrupted,
                checked=checked,
                say=lambda line: report.console.print(line, markup=False, highlight=False),
            )
            view.finished(outcome.states)  # a resumed sweep's earlier trials counted too
        again = ["tunekit sweep", str(spec), *(f"--set {x}" for x in set_ or [])]
        again += [f"--address {address}"] if address else []
        again += [f"--tracking-uri {tracking_uri}"] if tracking_uri else []
        raise typer.Exit(_ended(outcome, " ".join([*again, "--resume"])))


def _dry_run(plan: Plan, asks: str, unpackable: str | None) -> None:
    """The plan, what each trial asks for, and the time estimate (or why there is none)."""
    from tunekit import api, report

    report.console.print(report.plan_table(plan))
    report.console.print(report.resources_line(plan.spec, plan.size, asks))
    try:
        estimate = report.estimate_line(api.estimate(plan, unpackable))
    except TunekitError as e:  # the data missing, say
        estimate = f"estimate: none ({first_line(e)})"
    report.console.print(estimate, highlight=False)


def _ended(outcome: Outcome, resume_command: str) -> int:
    """Print where MLflow holds the sweep and how it ended; its exit code."""
    from tunekit import report

    s = outcome.plan.spec
    report.console.print(
        f"MLflow: {outcome.tracking_uri}, experiment "
        f"{outcome.experiment!r}, sweep run {outcome.sweep_run}",
        highlight=False,
        soft_wrap=True,
    )
    return report.sweep_outcome(
        s.name,
        outcome.rows,
        outcome.states,
        outcome.plan.size,
        outcome.interrupted,
        resume_command,
        outcome.path,
        s.claims,
        list(s.search.sample),
    )


@app.command("report", cls=options.Command)
def report_(
    name_or_spec: str = NAME,
    format: str = typer.Option(
        "table",
        "--format",
        "-f",
        metavar="FORMAT",
        help="table, markdown, csv, json; or html (with --out).",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        metavar="FOLDER",
        help="Write the whole study report (markdown or html: table, "
        "statistics, graphs, digits, spec, environment) into this "
        "folder, and log it to the sweep's MLflow run.",
    ),
    trials: Path | None = typer.Option(
        None,
        "--trials",
        metavar="CSV",
        help="Rebuild the table and statistics from a study's "
        "trials.csv instead of MLflow (claims from the spec).",
    ),
    tracking_uri: str | None = TRACKING,
) -> None:
    """The results of the latest sweep, from MLflow, with the statistics over seeds.

    Trials that differ only in their seed are one configuration: mean and 95% interval of max
    val_acc, and whether it can be told apart from the best one at this n.
    """
    with options.handled():
        _report_args(format, out, trials)
        from tunekit import api, report

        if out is not None:
            sweep = api.find(name_or_spec, tracking_uri)
            paths = api.study_report(sweep, out, format)
            report.console.print(
                f"wrote {paths[0]} and {len(paths) - 1} figure(s); logged to sweep run "
                f"{sweep.run_id}",
                highlight=False,
            )
            return
        found = (
            api.results(name_or_spec, tracking_uri)
            if trials is None
            else api.results_csv(trials, name_or_spec)  # no MLflow: the committed values
        )
        table = report.results_table(f"{found.name}: max val_acc", found.rows, format)
        if isinstance(table, str):
            typer.echo(table, nl=False)
        else:
            report.console.print(table)
        if format in ("table", "markdown"):
            for line in found.findings():
                typer.echo(("- " if format == "markdown" else "") + line)


def _report_args(format: str, out: Path | None, trials: Path | None) -> None:
    """Refuse what `report` cannot do with its arguments together."""
    options.choice("--format", format, ("table", "markdown", "csv", "json", "html"))
    if out is not None and format not in ("markdown", "html"):
        raise UsageError("--out", "writes a study report: use it with -f markdown or -f html")
    if format == "html" and out is None:
        raise UsageError("--format", "html is a folder of files: add --out DIR")
    if out is not None and out.exists() and not out.is_dir():
        raise UsageError("--out", f"{out} is a file; give a folder for the report")
    if trials is not None and out is not None:
        raise UsageError(
            "--trials", "holds the values, not the curves and digits: use it without --out"
        )


@app.command(cls=options.Command)
def plot(
    name_or_spec: str = NAME,
    runs: list[str] | None = typer.Option(
        None,
        "--runs",
        metavar="LIST",
        help="Trial numbers or MLflow run ids (prefixes too), comma-separated; "
        "default: every trial.",
    ),
    out: Path = typer.Option(
        Path("plots"), "--out", metavar="FOLDER", help="Folder for the PNG files."
    ),
    tracking_uri: str | None = TRACKING,
) -> None:
    """Draw the four comparison graphs and a misclassified-digits grid per trial, from MLflow.

    The PNG files go to --out and to the sweep's MLflow run.
    """
    with options.handled():
        if out.exists() and not out.is_dir():
            raise UsageError("--out", f"{out} is a file; give a folder for the plots")
        from tunekit import api
        from tunekit.report import console

        wanted = [w.strip() for item in runs or [] for w in item.split(",") if w.strip()]
        for path in api.plot(name_or_spec, out, wanted, tracking_uri=tracking_uri):
            console.print(f"wrote {path}", highlight=False)


@app.command(cls=options.Command)
def ui(
    name_or_spec: str | None = typer.Argument(
        None,
        metavar="[SPEC_OR_NAME]",
        help="A spec file or experiment name: print the URL of its experiment.",
        show_default=False,
    ),
    port: int = typer.Option(5000, metavar="PORT", help="Port to serve on."),
    host: str = typer.Option(
        "127.0.0.1", metavar="HOST", help="Address to listen on (127.0.0.1: this machine only)."
    ),
    tracking_uri: str | None = TRACKING,
) -> None:
    """Start the MLflow UI on the store tunekit records to (Ctrl-C stops it)."""
    with options.handled():
        from tunekit import api
        from tunekit.report import console

        api.serve_ui(
            name_or_spec,
            host=host,
            port=port,
            tracking_uri=tracking_uri,
            announce=lambda line: console.print(line, highlight=False, soft_wrap=True),
        )


def main() -> None:
    """The `tunekit` command. A Ctrl-C before a command has set up its own handling (while
    Python imports, say) ends it quietly with exit code 130, like one during a sweep."""
    try:
        app(prog_name="tunekit")
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    finally:  # the work is done and recorded: let exit handlers finish rather than die half-way
        signal.signal(signal.SIGINT, signal.SIG_IGN)
