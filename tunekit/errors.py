"""Errors that tunekit reports to the user: each says what is wrong and where, then exits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def first_line(e: BaseException) -> str:
    """An exception's message in one line (its first), or its type's name if it has none."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


class TunekitError(Exception):
    """An error the CLI prints without a traceback, exiting with `exit_code`."""

    exit_code = 1


@dataclass(frozen=True)
class Problem:
    field: str  # dotted path of the offending field, or <yaml>/<file>/<spec>
    message: str
    line: int | None = None  # 1-based line in the spec file, when known
    loc: tuple = ()  # where in the YAML the value came from, to find `line`


class SpecError(TunekitError):
    """The spec is invalid: nothing was started. Exit code 2, like a usage error."""

    exit_code = 2

    def __init__(self, problems: list[Problem], source: Path | None = None):
        self.problems = problems
        self.source = source
        super().__init__(str(self))

    @classmethod
    def at(cls, key: str, message: str) -> SpecError:
        """One problem, at `key`."""
        return cls([Problem(key, message)])

    def __reduce__(self) -> tuple:  # raised on a Ray worker, re-raised on the driver
        return (type(self), (self.problems, self.source))

    def __str__(self) -> str:
        where = f" {self.source}" if self.source else ""
        if len(self.problems) == 1 and self.problems[0].field == "<file>":
            return f"cannot read spec{where}: it {self.problems[0].message}"

        def one(p: Problem) -> str:
            return f"{f'line {p.line}, ' if p.line else ''}{p.field}: {p.message}"

        if len(self.problems) == 1:  # one line, the key named
            return f"invalid spec{where}: {one(self.problems[0])}"
        return "\n".join(
            [
                f"invalid spec{where}: {len(self.problems)} problems",
                *(f"  {one(p)}" for p in self.problems),
            ]
        )


class UsageError(TunekitError):
    """A command-line argument is wrong (not the spec): nothing was started. Exit code 2."""

    exit_code = 2

    def __init__(self, option: str, message: str):
        self.option, self.message = option, message
        super().__init__(f"{option}: {message}")

    def __reduce__(self) -> tuple:
        return (type(self), (self.option, self.message))


class DataError(TunekitError):
    """The dataset files are missing or unreadable."""


class DivergedError(TunekitError):
    """The training loss became NaN or infinite."""
