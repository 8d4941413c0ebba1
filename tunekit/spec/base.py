"""The spec's base model and the two ways its errors name a place."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

IMPORT = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"  # "package.module:callable"


class Strict(BaseModel):
    """Unknown keys refused, values frozen, no NaN or infinity."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Importable(Strict):
    """A part of the spec that may name the user's own code: `import: "module:callable"` with
    keyword `args` (each sweepable as `<part>.args.NAME`). Written `import` in YAML and dumps."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
        populate_by_name=True,
        serialize_by_alias=True,
    )


def message(err: Mapping[str, Any]) -> str:
    """A pydantic error's message as a person reads it."""
    return str(err["msg"]).removeprefix("Value error, ")


def location(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a dotted key: ('train', 'epochs') -> 'train.epochs'."""
    return ".".join(str(p) for p in loc) or "<spec>"


class NestedErrors(ValueError):
    """A part of the spec validated against a schema of its own (a built-in model's args),
    raised from a validator with that schema's errors, so that each keeps its own key."""

    def __init__(self, at: tuple[str, ...], errors: list[dict[str, Any]]):
        super().__init__("; ".join(f"{location((*at, *e['loc']))}: {e['msg']}" for e in errors))
        self.at, self.errors = at, errors


def errors(e: ValidationError) -> list[dict[str, Any]]:
    """A ValidationError's errors, those of a NestedErrors each at its own key."""
    out: list[dict[str, Any]] = []
    for err in e.errors():
        inner = (err.get("ctx") or {}).get("error")
        if isinstance(inner, NestedErrors):
            out += [{**x, "loc": (*err["loc"], *inner.at, *x["loc"])} for x in inner.errors]
        else:
            out.append(dict(err))
    return out


def nested(e: ValidationError, at: tuple[str, ...], allowed: list[str]) -> NestedErrors:
    """The errors of a schema of its own as a NestedErrors at `at`; an unknown key's names the
    closest allowed one."""
    found: list[dict[str, Any]] = []
    for details in e.errors():
        err = dict(details)
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(details["loc"][-1]), allowed, n=1)
            err = {
                **err,
                "type": "unknown_key",
                "msg": f"unknown key{f'; did you mean {close[0]!r}?' if close else ''} "
                f"(allowed: {', '.join(allowed)})",
                "input": {},  # nothing to quote
            }
        found.append(err)
    return NestedErrors(at, found)
