"""The spec's base model and the two ways its errors name a place."""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict

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
