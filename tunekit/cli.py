"""The `tunekit` command: each command parses its arguments and calls the modules that do the work.

Heavy libraries (torch, Ray, MLflow, matplotlib) are imported inside the commands that need them,
so `--help` and `validate` answer at once.
"""

from __future__ import annotations

import json
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Optional

import typer
import typer.core
import yaml

from tunekit.errors import TunekitError, UsageError, first_line


class _Command(typer.core.TyperCommand):
    """Help as people write it: `tunekit sweep [OPTIONS] SPEC`, flags without a type."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [p.strip("{}") for p in super().collect_usage_pieces(ctx)]

    def get_help_option(self, ctx: Any) -> Any:
        return _untyped(super().get_help_option(ctx))


class _Group(typer.core.TyperGroup):
    def get_help_option(self, ctx: Any) -> Any:
        return _untyped(super().get_help_option(ctx))


def _untyped(option: Any) -> Any:
    if option is not None:
        option.metavar = ""  # a flag: no <bool>
    return option


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Hyperparameter studies of small vision models: YAML spec in, table out.",
)

SPEC = typer.Argument(
    ...,
    metavar="SPEC",
    help="Experiment spec (YAML), e.g. experiments/smoke.yaml.",
    show_default=False,
)
SET = typer.Option(
    None,
    "--set",
    metavar="FIELD=VALUE",
    help="Override a field: --set train.epochs=1 (repeatable).",
)
TRACKING = typer.Option(
    None,
    "--tracking-uri",
    metavar="URI",
    help="MLflow tracking URI (default: the spec's "
    "tracking.uri, else $MLFLOW_TRACKING_URI, else ./mlflow.db).",
)
NAME = typer.Argument(
    ...,
    metavar="SPEC_OR_NAME",
    help="A spec file, or the name of its MLflow experiment.",
    show_default=False,
)


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
        if not eq or not key.strip():
            raise UsageError("--set", f"expected FIELD=VALUE (e.g. train.epochs=3), got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _plan(spec: Path, sets: Optional[List[str]]):
    """The spec's plan; import paths in it find modules beside the spec and in this folder."""
    from tunekit.api import load

    return load(spec, _overrides(sets))


def _checked(check: Any, what: Any, spec: Path) -> Any:
    """`check(what)`, its problems named against the spec file."""
    from tunekit.errors import SpecError

    try:
        return check(what)
    except SpecError as e:
        raise SpecError(e.problems, source=e.source or spec) from None


def _choice(option: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise UsageError(option, f"{value!r} is not one of: {', '.join(valid)}")
    return value


@app.command(cls=_Command)
def validate(
    spec: Path = SPEC,
    set_: Optional[List[str]] = SET,
    format: str = typer.Option(
        "table",
        "--format",
        "-f",
        metavar="FORMAT",
        help="table, or json: every trial at full precision.",
    ),
) -> None:
    """Check a spec and print its plan: the numbered trials and the values each one sets."""
    with _handled():
        _choice("--format", format, ("table", "json"))
        plan = _plan(spec, set_)
        if format == "json":
            typer.echo(json.dumps(plan.as_json(), indent=1))
            return
        from tunekit.report import console, plan_table

        console.print(plan_table(plan))
        console.print(f"{plan.size} trial(s), valid.")


@app.command(cls=_Command)
def schema() -> None:
    """Print the JSON Schema of experiment specs (for editor completion and checks)."""
    from tunekit.spec import ExperimentSpec

    typer.echo(json.dumps(ExperimentSpec.model_json_schema(), indent=2))


@app.command(cls=_Command)
def train(
    spec: Path = SPEC,
    trial: int = typer.Option(
        0,
        "--trial",
        metavar="N",
        help="Which trial of the plan to run (its number in validate and the sweep).",
    ),
    set_: Optional[List[str]] = SET,
    threads: Optional[int] = typer.Option(
        None,
        min=1,
        metavar="N",
        help="torch threads (default: the spec's resources.cpus_per_trial, as in a sweep).",
    ),
) -> None:
    """Run one trial of a spec here, in this process, exactly as the sweep runs it."""
    with _handled():
        plan = _plan(spec, set_)
        if plan.adaptive:
            raise UsageError(
                "--trial",
                "a TPE plan's trials exist only once TPE proposes them; "
                "set their values with --set on a spec without search",
            )
        if not 0 <= trial < len(plan.trials):
            raise UsageError(
                "--trial",
                f"{spec} plans {len(plan.trials)} trial(s), numbered "
                f"0..{len(plan.trials) - 1}; got {trial}",
            )
        t = plan.trials[trial]
        clash = sorted(
            k
            for k in _overrides(set_)
            if any(p == k or p.startswith(k + ".") or k.startswith(p + ".") for p in t.params)
        )
        if clash:
            raise UsageError(
                "--set",
                f"trial {trial} sets {', '.join(clash)} itself (search "
                f"wins over --set); pick the trial that has the value you "
                f"want (tunekit validate {spec})",
            )
        from tunekit.checks import check_config
        from tunekit.report import EpochProgress, console, fit_summary
        from tunekit.train import fit

        _checked(check_config, t.config, spec)  # the data read and the model built, or exit 2
        threads = threads or plan.spec.resources.cpus_per_trial
        console.print(f"[bold]{plan.spec.name}[/] trial {trial}: {t.label} · {threads} thread(s)")
        with EpochProgress(f"trial {trial}", t.config.train.epochs) as progress:
            result = fit(t.config, progress, threads=threads)
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


@app.command(cls=_Command)
def sweep(
    spec: Path = SPEC,
    set_: Optional[List[str]] = SET,
    address: Optional[str] = typer.Option(
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
    tracking_uri: Optional[str] = TRACKING,
) -> None:
    """Run every trial of a spec's plan on Ray Tune, record it in MLflow, print the results.

    Exit code 0 when every trial finished, 1 when any failed, 130 when interrupted (Ctrl-C):
    run it again with --resume to carry on.
    """
    with _handled(), _interruptible() as interrupted:
        if resume and restart:
            raise UsageError(
                "--restart",
                "not both --resume and --restart: --resume carries on, --restart starts over",
            )
        from tunekit import api, cluster, figures, report

        plan = api.load(spec, _overrides(set_))
        checked = api.check(plan)  # the data read, each model built: exit 2 if not
        asks = cluster.ask_before_start(plan.spec)  # a bad TUNEKIT_GPUS_PER_TRIAL stops us here
        if dry_run:
            report.console.print(report.plan_table(plan))
            report.console.print(report.resources_line(plan.spec, plan.size, asks))
            report.console.print(_estimate(plan), highlight=False)
            return
        s = plan.spec
        with report.SweepView(s.name, plan.size, s.train.epochs) as view:
            outcome = api.run(
                plan,
                address=address,
                resume=resume,
                restart=restart,
                tracking_uri=tracking_uri,
                listeners=[view],
                draw=figures.trial_figures,
                interrupted=interrupted,
                checked=checked,
                say=lambda line: report.console.print(line, markup=False, highlight=False),
            )
        from tunekit import track

        with tempfile.TemporaryDirectory() as d:  # the comparison graphs, for the sweep's run
            _plot(
                track.connect(outcome.tracking_uri),
                outcome.sweep_run,
                outcome.records,
                Path(d),
                grids=False,
            )
        report.console.print(
            f"MLflow: {outcome.tracking_uri}, experiment "
            f"{track.experiment_name(s)!r}, sweep run {outcome.sweep_run}",
            highlight=False,
            soft_wrap=True,
        )
        again = [
            "tunekit sweep",
            str(spec),
            *(f"--set {x}" for x in set_ or []),
            *([f"--address {address}"] if address else []),
            *([f"--tracking-uri {tracking_uri}"] if tracking_uri else []),
            "--resume",
        ]
        code = report.sweep_outcome(
            s.name,
            outcome.rows,
            outcome.states,
            plan.size,
            outcome.interrupted,
            " ".join(again),
            outcome.path,
            s.claims,
            list(s.search.sample),
        )
        raise typer.Exit(code)


def _estimate(plan) -> str:
    """The dry run's time estimate, or why there is none (the data missing, say)."""
    import os
    import torch
    from tunekit import measure, report

    try:
        est = measure.estimate(plan, os.cpu_count() or 1, torch.cuda.device_count())
    except TunekitError as e:
        return f"estimate: none ({first_line(e)})"
    return report.estimate_line(est)


def _tracking(name_or_spec: str, tracking_uri: Optional[str]):
    """(client, latest sweep run, experiment name) for a spec file or an experiment name.

    Read-only: a store that does not exist is an error naming where tunekit looked.
    """
    from tunekit import track
    from tunekit.spec import load_spec

    spec = load_spec(name_or_spec) if Path(name_or_spec).is_file() else None
    name = track.experiment_name(spec) if spec else name_or_spec
    client = track.connect(track.tracking_uri(spec, tracking_uri), create=False)
    return client, track.find_sweep(client, name), name


def _study(name_or_spec: str, recorded_spec: str) -> tuple[list, list[str]]:
    """(claims to test, parameters a search sampled): the spec file's, if one was given
    (validated as it loads), else those of the spec the sweep recorded."""
    from tunekit.spec import ExperimentSpec, load_spec

    if Path(name_or_spec).is_file():
        spec = load_spec(name_or_spec)
    else:
        import yaml

        try:
            spec = ExperimentSpec.model_validate(yaml.safe_load(recorded_spec) or {})
        except Exception:  # noqa: BLE001 (recorded by an older tunekit, or none: nothing to add)
            return [], []
    return list(spec.claims), list(spec.search.sample)


@app.command("report", cls=_Command)
def report_(
    name_or_spec: str = NAME,
    format: str = typer.Option(
        "table",
        "--format",
        "-f",
        metavar="FORMAT",
        help="table, markdown, csv, json; or html (with --out).",
    ),
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        metavar="FOLDER",
        help="Write the whole study report (markdown or html: table, "
        "statistics, graphs, digits, spec, environment) into this "
        "folder, and log it to the sweep's MLflow run.",
    ),
    trials: Optional[Path] = typer.Option(
        None,
        "--trials",
        metavar="CSV",
        help="Rebuild the table and statistics from a study's "
        "trials.csv instead of MLflow (claims from the spec).",
    ),
    tracking_uri: Optional[str] = TRACKING,
) -> None:
    """The results of the latest sweep, from MLflow, with the statistics over seeds.

    Trials that differ only in their seed are one configuration: mean and 95% interval of max
    val_acc, and whether it can be told apart from the best one at this n.
    """
    with _handled():
        _choice("--format", format, ("table", "markdown", "csv", "json", "html"))
        if out is not None and format not in ("markdown", "html"):
            raise UsageError("--out", "writes a study report: use it with -f markdown or -f html")
        if format == "html" and out is None:
            raise UsageError("--format", "html is a folder of files: add --out DIR")
        if out is not None and out.exists() and not out.is_dir():
            raise UsageError("--out", f"{out} is a file; give a folder for the report")
        from tunekit import report, results, track

        if trials is not None:  # no MLflow: the committed values
            from tunekit.records import read_trials_csv

            if out is not None:
                raise UsageError(
                    "--trials", "holds the values, not the curves and digits: use it without --out"
                )
            records, name = read_trials_csv(trials), trials.parent.name
            claims, sampled = _study(name_or_spec, "")
        else:
            client, sweep_run, name = _tracking(name_or_spec, tracking_uri)
            records = track.trial_runs(client, sweep_run)
            spec_text, env = track.sweep_texts(client, sweep_run)
            claims, sampled = _study(name_or_spec, spec_text)
        rows = results.result_rows(records)
        if out is not None:
            from tunekit import study

            doc = study.Study(
                name,
                sweep_run,
                client.tracking_uri,
                rows,
                {r.run_id: track.history(client, r.run_id) for r in records},
                {
                    r.run_id: w
                    for r in records
                    if (w := track.misclassified(client, r.run_id)) is not None
                },
                spec_text,
                env,
                records,
                claims,
                sampled,
            )
            paths = study.write(doc, out, format)
            track.log_plots(client, sweep_run, paths, "report")
            report.console.print(
                f"wrote {paths[0]} and {len(paths) - 1} figure(s); logged to sweep run {sweep_run}",
                highlight=False,
            )
            return
        table = report.results_table(f"{name}: max val_acc", rows, format)
        if isinstance(table, str):
            typer.echo(table, nl=False)
        else:
            report.console.print(table)
        if format in ("table", "markdown"):
            for line in results.findings(rows, claims, sampled) + results.failures(records):
                typer.echo(("- " if format == "markdown" else "") + line)


@app.command(cls=_Command)
def plot(
    name_or_spec: str = NAME,
    runs: Optional[List[str]] = typer.Option(
        None,
        "--runs",
        metavar="LIST",
        help="Trial numbers or MLflow "
        "run ids (prefixes too), comma-separated; "
        "default: every trial.",
    ),
    out: Path = typer.Option(
        Path("plots"), "--out", metavar="FOLDER", help="Folder for the PNG files."
    ),
    tracking_uri: Optional[str] = TRACKING,
) -> None:
    """Draw the four comparison graphs and a misclassified-digits grid per trial, from MLflow.

    The PNG files go to --out and to the sweep's MLflow run.
    """
    with _handled():
        if out.exists() and not out.is_dir():
            raise UsageError("--out", f"{out} is a file; give a folder for the plots")
        from tunekit import track

        client, sweep_run, _ = _tracking(name_or_spec, tracking_uri)
        records = track.trial_runs(client, sweep_run)
        wanted = [w.strip() for item in runs or [] for w in item.split(",") if w.strip()]
        chosen = [
            r
            for r in records
            if not wanted
            or any(
                w == str(r.trial) or (not w.isdigit() and r.run_id.startswith(w)) for w in wanted
            )
        ]
        missing = [
            w
            for w in wanted
            if not any(
                w == str(r.trial) or (not w.isdigit() and r.run_id.startswith(w)) for r in records
            )
        ]
        if missing:
            raise UsageError(
                "--runs",
                f"no trial of this sweep is {', '.join(missing)}; trials: "
                f"{' '.join(str(r.trial) for r in records)}",
            )
        from tunekit.report import console

        for path in _plot(client, sweep_run, chosen, out):
            console.print(f"wrote {path}", highlight=False)


def _plot(client, sweep_run: str, chosen: list, folder: Path, grids: bool = True) -> List[Path]:
    """Draw the comparison graphs (and, with `grids`, each trial's misclassified digits) of trial
    runs into `folder`, and log them to the sweep's run."""
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


@app.command(cls=_Command)
def ui(
    name_or_spec: Optional[str] = typer.Argument(
        None,
        metavar="[SPEC_OR_NAME]",
        help="A spec file or experiment name: print the URL of its experiment.",
        show_default=False,
    ),
    port: int = typer.Option(5000, metavar="PORT", help="Port to serve on."),
    host: str = typer.Option(
        "127.0.0.1", metavar="HOST", help="Address to listen on (127.0.0.1: this machine only)."
    ),
    tracking_uri: Optional[str] = TRACKING,
) -> None:
    """Start the MLflow UI on the store tunekit records to (Ctrl-C stops it)."""
    with _handled():
        from tunekit import track
        from tunekit.spec import load_spec

        spec = load_spec(name_or_spec) if name_or_spec and Path(name_or_spec).is_file() else None
        uri = track.tracking_uri(spec, tracking_uri)
        name = track.experiment_name(spec) if spec else name_or_spec
        from tunekit.report import console

        from tunekit.ui import serve

        serve(
            uri, host, port, name, lambda line: console.print(line, highlight=False, soft_wrap=True)
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
