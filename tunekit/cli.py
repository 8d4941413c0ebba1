"""The `tunekit` command: each command parses its arguments and calls the modules that do the work."""

from __future__ import annotations

import json
import os
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


@app.command()
def sweep(spec: Path = SPEC, set_: Optional[List[str]] = SET,
          address: Optional[str] = typer.Option(
              None, help="Ray cluster: 'auto' (this node's), or ray://HOST:10001. "
                         "Default: start a local Ray for this sweep."),
          resume: bool = typer.Option(False, "--resume",
                                      help="Carry on an interrupted sweep of this spec."),
          dry_run: bool = typer.Option(False, "--dry-run",
                                       help="Print the trials and resources; start nothing.")
          ) -> None:
    """Run every trial of a spec on Ray Tune and print the max val_acc of each.

    Exit code 0 when every trial finished, 1 when any failed, 130 when interrupted (Ctrl-C):
    run it again with --resume to carry on.
    """
    with _handled():
        s, trials = _load(spec, set_)
        from tunekit.report import (SweepView, console, failures, resources_line,
                                    sweep_table, trials_table)
        if dry_run:
            console.print(trials_table(s.name, trials))
            console.print(resources_line(s, len(trials)))
            return
        from tunekit import sweep as sweeps
        with SweepView(s.name, len(trials), s.train.epochs) as view:
            states = sweeps.run(s, address=address, resume=resume, listeners=[view])
        console.print(sweep_table(s.name, states))
        failed = [t for t in states if t.status == "failed"]
        unfinished = [t for t in states if t.status == "unfinished"]
        if unfinished or len(states) < len(trials):
            console.print(f"[yellow]interrupted:[/] {len(unfinished)} trial(s) unfinished; "
                          f"continue with: tunekit sweep {spec} --resume")
        if failed:
            console.print(f"[red]{len(failed)} of {len(states)} trial(s) failed[/] "
                          f"(tracebacks: error.txt in each trial's folder under "
                          f"{sweeps.storage_root(s)}/{s.name}):", highlight=False)
            for line in failures(states):
                console.print(f"  {line}", highlight=False, soft_wrap=True)
        interrupted = unfinished or len(states) < len(trials)
        raise typer.Exit(130 if interrupted else 1 if failed else 0)
