"""The plan of trials: what a spec expands to, numbered 0..N-1, computed once and handed on.

`validate`, `--dry-run`, the sweep, MLflow, `train --trial N` and `report` all read trials from
here, so a trial's number and values are the same wherever they are shown or run. A fixed plan
(grid) lists every trial up front; an adaptive one (tpe) has a search space and a budget, and its
trials get their numbers in the order they are proposed. The search method (`tunekit.search`)
says which, and what the trials are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tunekit import wire
from tunekit.errors import Problem, SpecError
from tunekit.packing import pack_key
from tunekit.search import Method, lookup
from tunekit.spec import ExperimentSpec, SearchSpec, TrialConfig, read_spec, resolve, yaml_line
from tunekit.spec.base import location
from tunekit.text import fmt

OBJECTIVE = ("val_acc", "max")  # what TPE and ASHA optimise: the test accuracy Tune last saw


def label(params: Mapping[str, Any]) -> str:
    """'model.args.norm=LN, train.l2=3.447e-06': how a trial is named wherever it is shown."""
    return ", ".join(f"{k}={fmt(v)}" for k, v in params.items()) or "base config"


@dataclass(frozen=True)
class Trial:
    index: int  # its number in the plan: the same in validate, the sweep, MLflow and the report
    params: dict[str, Any]  # the field paths this trial sets on top of the base config
    config: TrialConfig

    @property
    def label(self) -> str:
        return label(self.params)

    def record(self) -> dict[str, Any]:
        """Full precision, for JSON: the trial number, what it sets, and its whole config."""
        return {
            "trial": self.index,
            "params": self.params,
            "config": self.config.model_dump(mode="json"),
        }


@dataclass(frozen=True)
class Plan:
    spec: ExperimentSpec
    trials: list[Trial]  # grid: every trial; tpe: none yet (they are proposed while it runs)
    source: Path | None = None  # the spec file it was read from

    @property
    def size(self) -> int:
        return plan_size(self.spec)

    @property
    def method(self) -> Method:
        return lookup(self.spec.search.method)

    @property
    def adaptive(self) -> bool:
        """Whether its trials are proposed while the sweep runs (tpe), not planned up front."""
        return self.method.adaptive

    def trial(self, index: int, params: Mapping[str, Any] | None = None) -> Trial:
        """Trial `index`: from the list (grid), or built from a proposal's params (adaptive)."""
        if not self.adaptive:
            return self.trials[index]
        params = self.proposed_params(index, params)
        return Trial(index, params, resolve(self.spec.base(), params, index))

    def proposed_params(self, index: int, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """An adaptive trial's values: its proposal's (Ray's config, numbering left out) and, with
        repeats, its seed: proposal index // repeats, on seed train.seed + index % repeats."""
        out = wire.proposal(params)
        repeats = self.spec.search.repeats
        if repeats > 1:
            out["train.seed"] = self.spec.train.seed + index % repeats
        return out

    def proposal(self, index: int) -> int | None:
        """The proposal a trial belongs to (its seeds share it); None in a fixed plan."""
        return index // self.spec.search.repeats if self.adaptive else None

    def trial_base(self) -> TrialConfig:
        """The base config every trial builds on."""
        return resolve(self.spec.base(), {})

    def identity(self) -> dict[str, Any]:
        """What makes two plans the same plan: stored with a sweep, compared on --resume."""
        method = {"method": self.spec.search.method}
        if self.adaptive:
            return {**method, **self.method.identity(self)}
        return {
            **method,
            "trials": [{"trial": t.index, "config": t.record()["config"]} for t in self.trials],
        }

    def seed_packs(self) -> list[list[int]]:
        """A grid's trials grouped by configuration: each group its seeds, in plan order."""
        groups: dict[str, list[int]] = {}
        for t in self.trials:
            key = repr(sorted((k, repr(v)) for k, v in t.params.items() if k != "train.seed"))
            groups.setdefault(key, []).append(t.index)
        return sorted(groups.values())

    def packs(self, size: int) -> list[list[int]]:
        """The trials grouped into packs of at most `size` (`packing.decide`) that share a shape
        (`pack_key`), in plan order."""
        if size <= 1:
            return [[t.index] for t in self.trials]
        shapes: dict[str, list[int]] = {}
        for t in self.trials:
            shapes.setdefault(pack_key(t.config), []).append(t.index)
        packs = [
            group[i : i + size] for group in shapes.values() for i in range(0, len(group), size)
        ]
        return sorted(packs)

    def as_json(self) -> dict[str, Any]:
        s = self.spec
        out: dict[str, Any] = {
            "name": s.name,
            "method": s.search.method,
            "size": self.size,
            "epochs": s.train.epochs,
        }
        if self.adaptive:
            out.update({k: v for k, v in self.identity().items() if k in ("budget", "space")})
            out["objective"] = {"metric": OBJECTIVE[0], "mode": OBJECTIVE[1], "at": "last epoch"}
        out["trials"] = [t.record() for t in self.trials]
        return out


def plan_size(spec: ExperimentSpec) -> int:
    """How many trials a spec plans, without expanding it."""
    return lookup(spec.search.method).size(spec)


def expand(spec: ExperimentSpec) -> list[Trial]:
    """The trials its search method plans up front (none for an adaptive one), numbered in
    order, each validated like the base."""
    base = spec.base()
    trials: list[Trial] = []
    for params in lookup(spec.search.method).points(spec):
        try:
            trials.append(Trial(len(trials), params, resolve(base, params, len(trials))))
        except SpecError as e:
            raise SpecError([_blame(p, params, spec.search) for p in e.problems]) from None
    return trials


def _check_sample_edges(spec: ExperimentSpec) -> None:
    """Every value a distribution can draw is valid if its edges (or choices) are."""
    base = spec.base()
    for path, dist in spec.search.sample.items():
        for value in dist.edges():
            try:
                resolve(base, {path: value})
            except SpecError as e:
                raise SpecError(
                    [_blame(p, {path: value}, spec.search) for p in e.problems]
                ) from None


def _blame(problem: Problem, params: Mapping[str, Any], search: SearchSpec) -> Problem:
    """Point a trial's problem at the search entry that set the offending value."""
    hits = [p for p in params if p == problem.field or p.startswith(problem.field + ".")]
    if not hits:
        return problem
    loc = search.source(hits[0])
    return Problem(location(loc), f"{problem.field}: {problem.message}", loc=loc)


def make_plan(spec: ExperimentSpec) -> Plan:
    """The plan of a validated spec; SpecError if it is too large or any trial is invalid."""
    size = plan_size(spec)
    if size > spec.sweep.max_trials:
        raise SpecError(
            [
                Problem(
                    "search",
                    f"the plan has {size:,} trials, more than "
                    f"sweep.max_trials = {spec.sweep.max_trials:,}; raise it "
                    "(--set sweep.max_trials=N) if you mean it",
                    loc=("search",),
                )
            ]
        )
    _check_sample_edges(spec)
    return Plan(spec, expand(spec))


def load_plan(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Plan:
    """Read and validate a spec file and plan its trials; SpecError naming fields and lines."""
    spec, root = read_spec(path, overrides)
    try:
        return replace(make_plan(spec), source=Path(path))
    except SpecError as e:
        problems = [replace(p, line=yaml_line(root, p.loc)) if p.loc else p for p in e.problems]
        raise SpecError(problems, source=Path(path)) from None


def differences(old: Any, new: Any, path: str = "") -> list[str]:
    """'trials.2.config.train.epochs: 3 -> 2' for every leaf where two plan identities differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            d
            for k in dict.fromkeys([*old, *new])
            for d in differences(old.get(k, "<none>"), new.get(k, "<none>"), f"{path}{k}.")
        ]
    if (
        isinstance(old, list)
        and isinstance(new, list)
        and not (path.endswith("choice.") or path.endswith("uniform.") or path.endswith("randint."))
    ):
        if len(old) != len(new):
            return [f"{path}count: {len(old)} -> {len(new)}"] + [
                d
                for i in range(min(len(old), len(new)))
                for d in differences(old[i], new[i], f"{path}{i}.")
            ]
        return [
            d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{path}{i}.")
        ]
    if json.dumps(old) == json.dumps(new):
        return []
    return [f"{path.rstrip('.')}: {json.dumps(old)} -> {json.dumps(new)}"]
