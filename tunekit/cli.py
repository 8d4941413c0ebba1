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
