"""How a study varies its trials: grid, cases, samples from distributions, repeats, TPE, ASHA."""

from __future__ import annotations

import math
import random
from typing import Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from tunekit.spec.base import Strict
from tunekit.spec.trial import check_path


class Distribution(Strict):
    """Exactly one of: uniform [low, high], loguniform [low, high], randint [low, high), choice."""

    uniform: tuple[float, float] | None = None
    loguniform: tuple[PositiveFloat, PositiveFloat] | None = None
    randint: tuple[int, int] | None = None
    choice: list[Any] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        given = [k for k in ("uniform", "loguniform", "randint", "choice") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of uniform, loguniform, randint, choice")
        bounds = getattr(self, given[0])
        if given[0] != "choice" and not bounds[0] < bounds[1]:
            raise ValueError(f"{given[0]}: low must be below high, got {list(bounds)}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("uniform", "loguniform", "randint", "choice") if getattr(self, k))

    def edges(self) -> list[Any]:
        """Values that bound what a draw can be: validating them validates every draw."""
        if self.choice is not None:
            return list(self.choice)
        low, high = getattr(self, self.kind)
        return [low, high - 1] if self.kind == "randint" else [low, high]

    def draw(self, rng: random.Random) -> Any:
        if self.choice is not None:
            return rng.choice(self.choice)
        low, high = getattr(self, self.kind)
        if self.kind == "randint":
            return rng.randrange(low, high)
        if self.kind == "loguniform":
            return math.exp(rng.uniform(math.log(low), math.log(high)))
        return rng.uniform(low, high)


class SearchSpec(Strict):
    method: Literal["grid", "tpe"] = "grid"  # grid: every trial of grid × cases × samples ×
    #   repeats, fixed up front; tpe: Bayesian search (Optuna's TPE) over `sample`, `budget` trials
    budget: PositiveInt | None = None  # tpe: how many trials it proposes in all
    grid: dict[str, list[Any]] = {}  # field path -> values; every combination is a trial
    cases: list[dict[str, Any]] = []  # hand-picked settings, each combined with every grid point
    sample: dict[str, Distribution] = {}  # field path -> distribution, drawn num_samples times
    num_samples: PositiveInt = 1  # draws of `sample` (each draw runs the whole grid × cases)
    repeats: PositiveInt = 1  # seeds per configuration: train.seed, train.seed + 1, ...; with
    #   tpe, each proposal is trained on this many seeds (one pack) and scored by their mean

    @field_validator("grid", "sample")
    @classmethod
    def _known_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        problems = []  # every misspelt key at once, not the first only
        for path, values in value.items():
            try:
                check_path(path)
            except ValueError as e:
                problems.append(str(e))
            if isinstance(values, list) and not values:
                problems.append(f"{path!r} has no values")
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("cases")
    @classmethod
    def _known_case_keys(cls, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, case in enumerate(cases):
            if not case:
                raise ValueError(f"case {i} is empty")
            for path in case:
                check_path(path)
        return cases

    @model_validator(mode="before")
    @classmethod
    def _not_empty(cls, data: Any) -> Any:
        if isinstance(data, dict) and not any(data.get(k) for k in ("grid", "cases", "sample")):
            raise ValueError(
                "search is empty: give grid, cases or sample "
                "(or drop `search` to run the base config once)"
            )
        return data

    @model_validator(mode="after")
    def _consistent(self) -> SearchSpec:
        for path in {p for case in self.cases for p in case} | set(self.sample):
            if path in self.grid:
                raise ValueError(f"{path!r} is set by both grid and cases/sample; keep one")
        if self.num_samples > 1 and not self.sample:
            raise ValueError(
                "num_samples > 1 repeats identical trials without `sample`; "
                "use repeats for more seeds"
            )
        if "train.seed" in self.grid and self.repeats > 1:
            raise ValueError("train.seed is in the grid and repeats > 1; use one of them")
        if self.method == "tpe":
            fixed = [k for k in ("grid", "cases") if getattr(self, k)] + [
                k for k in ("num_samples",) if getattr(self, k) > 1
            ]
            if not self.sample or self.budget is None or fixed:
                raise ValueError(
                    "method tpe searches `sample` (uniform, loguniform, randint, "
                    "choice) for `budget` trials"
                    + (f"; it takes no {', '.join(fixed)}" if fixed else "; give both")
                )
        elif self.budget is not None:
            raise ValueError("budget is for method tpe; grid runs every trial it expands to")
        return self

    def source(self, path: str) -> tuple[Any, ...]:
        """Where in the spec a trial's value for `path` was set (a YAML location)."""
        if path in self.grid or path in self.sample:
            return ("search", "grid" if path in self.grid else "sample", path)
        case = next((i for i, c in enumerate(self.cases) if path in c), None)
        return ("search", "cases", case, path) if case is not None else ("search", "repeats")


class AshaSpec(Strict):
    grace_period: PositiveInt = 5  # epochs every trial runs before it may be stopped
    reduction_factor: float = Field(3.0, gt=1)  # about 1 in this many trials goes on at each rung
