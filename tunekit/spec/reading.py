"""Reading a spec file: YAML to a validated ExperimentSpec, every problem named by key and line."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tunekit.errors import Problem, SpecError
from tunekit.spec.base import errors, location, message
from tunekit.spec.study import ExperimentSpec
from tunekit.spec.trial import set_path


def yaml_line(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at `loc`, or of its deepest parent present in the file."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == str(part)), None)
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
        else:
            node = None
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


def _problem(
    err: Mapping[str, Any],
    root: yaml.Node | None,
    cls: type[BaseModel],
    overridden: Mapping[str, Any],
) -> Problem:
    loc, msg = tuple(err["loc"]), message(err)
    if err["type"] == "extra_forbidden":
        siblings = _fields_at(cls, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), siblings, n=1)
        msg = (
            f"unknown key{f'; did you mean {close[0]!r}?' if close else ''} "
            f"(allowed: {', '.join(siblings)})"
        )
    elif not isinstance(err.get("input"), (dict, list)) and err["type"] != "missing":
        msg = f"{msg} (got {err['input']!r})"
    from_set = any(location(loc).startswith(k) for k in overridden)
    return Problem(
        location(loc),
        msg + (" (from --set)" if from_set else ""),
        None if from_set else yaml_line(root, loc),
    )


def _fields_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    for part in loc:
        field = cls.model_fields.get(str(part))
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return []
        cls = field.annotation
    return [f.alias or name for name, f in cls.model_fields.items()]


def _duplicate_keys(node: yaml.Node | None, path: str = "") -> list[Problem]:
    """Keys given twice in one YAML mapping (PyYAML keeps the last silently)."""
    found: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, yaml.Node] = {}
        for key, value in node.value:
            name = str(key.value)
            if name in seen:
                found.append(
                    Problem(
                        path + name,
                        f"given twice, on lines {seen[name].start_mark.line + 1}"
                        f" and {key.start_mark.line + 1}; keep one",
                        key.start_mark.line + 1,
                    )
                )
            seen[name] = key
            found += _duplicate_keys(value, f"{path}{name}.")
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += _duplicate_keys(item, f"{path}{i}.")
    return found


def _read_text(path: Path) -> str:
    """The spec file's text; one clear problem if it is missing, a folder, not UTF-8 or empty."""

    def fail(message: str) -> SpecError:
        return SpecError([Problem("<file>", message)], source=path)

    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise fail("is a folder; give a spec file such as experiments/smoke.yaml") from None
    except OSError as e:
        raise fail(f"cannot be read: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise fail(f"is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None
    if not text.strip():
        raise fail("is empty; a spec needs at least `name:`")
    return text


def read_spec(
    path: str | Path, overrides: Mapping[str, Any] | None = None
) -> tuple[ExperimentSpec, yaml.Node]:
    """The validated spec of a YAML file and its YAML tree (to find the line of a problem).

    `overrides` (dotted path -> value, from `--set`) are applied to the YAML before validation.
    """
    path = Path(path)
    text = _read_text(path)
    try:
        root = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        # The line where the broken construct starts (an unclosed `{` on line 2), and where
        # the parser gave up (line 3), when they differ.
        mark = getattr(e, "problem_mark", None)
        start = getattr(e, "context_mark", None) or mark
        context = getattr(e, "context", None)
        found = (
            f" (found on line {mark.line + 1})"
            if mark and start and mark.line != start.line
            else ""
        )
        raise SpecError(
            [
                Problem(
                    "<yaml>",
                    (f"{context}: " if context else "")
                    + f"{getattr(e, 'problem', None) or e}{found}",
                    start.line + 1 if start else None,
                )
            ],
            source=path,
        ) from None
    if raw is None:  # comments only
        raise SpecError([Problem("<file>", "is empty; a spec needs at least `name:`")], source=path)
    if duplicates := _duplicate_keys(root):
        raise SpecError(duplicates, source=path)
    if not isinstance(raw, dict):
        raise SpecError(
            [Problem("<spec>", "a spec is a YAML mapping (name:, model:, train:, ...)", 1)],
            source=path,
        )
    overrides = overrides or {}
    for key, value in overrides.items():
        if key.split(".")[0] not in ExperimentSpec.model_fields or key.startswith("search"):
            raise SpecError(
                [
                    Problem(
                        key,
                        "--set takes a field path such as train.epochs "
                        "(search is not overridable: edit the spec)",
                    )
                ],
                source=path,
            )
        raw = set_path(raw, key, value)
    try:
        spec = ExperimentSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(
            [_problem(err, root, ExperimentSpec, overrides) for err in errors(e)], source=path
        ) from None
    return spec, root


def load_spec(path: str | Path, overrides: Mapping[str, Any] | None = None) -> ExperimentSpec:
    """The validated spec of a YAML file (its trials: `plan.load_plan`)."""
    return read_spec(path, overrides)[0]
