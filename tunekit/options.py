"""What the `tunekit` commands share: their arguments and options, help as people write it, and
tunekit's errors turned into a message and an exit code (2: bad spec or arguments)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
import typer.core
import yaml

from tunekit.errors import TunekitError, UsageError


class Command(typer.core.TyperCommand):
    """Help as people write it: `tunekit sweep [OPTIONS] SPEC`, flags without a type."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [p.strip("{}") for p in super().collect_usage_pieces(ctx)]

    def get_help_option(self, ctx: Any) -> Any:
        return untyped(super().get_help_option(ctx))


class Group(typer.core.TyperGroup):
    def get_help_option(self, ctx: Any) -> Any:
        return untyped(super().get_help_option(ctx))


def untyped(option: Any) -> Any:
    if option is not None:
        option.metavar = ""  # a flag: no <bool>
    return option


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
def handled() -> Iterator[None]:
    """Turn tunekit's own errors into a message and an exit code (2: bad spec or arguments)."""
    try:
        yield
    except TunekitError as e:
        from tunekit.report import print_error

        print_error(str(e))
        raise typer.Exit(e.exit_code) from None


def overrides(items: list[str] | None) -> dict[str, Any]:
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UsageError("--set", f"expected FIELD=VALUE (e.g. train.epochs=3), got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def choice(option: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise UsageError(option, f"{value!r} is not one of: {', '.join(valid)}")
    return value
