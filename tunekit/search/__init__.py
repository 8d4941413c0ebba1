"""Search methods: what `search.method` names, one file each in this package, behind `Method`.

- A fixed method (`grid`) plans every trial up front: `points` gives each trial's values in plan
  order, and the sweep hands Ray Tune the plan's trial numbers (or packs) as one grid search.
- An adaptive method (`tpe`) proposes trials while the sweep runs, from the results so far:
  `space` is what Tune draws from and `searcher` the Tune searcher that proposes; the sweep
  numbers the proposals (`wire`) and, with repeats, trains each on its seeds as one pack.

Each file also holds its own spec rules (`check`: what it takes and needs) and its plan's size.
Adding a method is one new file here, `<name>.py`, that sets `METHOD` to a `Method`; then
`search.method: <name>` validates, plans and sweeps. Like Ray Tune's `tune/search/__init__.py`,
a method is imported only when named, and its Ray and Optuna imports are inside its functions,
so reading a spec and planning need neither.

Random search is grid's `sample` and `num_samples` (draws fixed up front from train.seed), not a
method of its own. ASHA is not a method either: it is a scheduler (`sweep.asha`) that stops weak
trials of any plan early, and it stays with the sweep.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunekit.plan import Plan
    from tunekit.spec import ExperimentSpec, SearchSpec


class Method:
    """One search method. A fixed method overrides `size` and `points`; an adaptive one sets
    `adaptive` and overrides `size`, `space` and `searcher`."""

    adaptive = False  # True: trials are proposed while the sweep runs, none planned up front

    def check(self, search: SearchSpec) -> None:
        """Raise ValueError, saying why, if `search` gives what this method does not take or
        lacks what it needs."""

    def size(self, spec: ExperimentSpec) -> int:
        """How many trials it plans (repeats included), without expanding them."""
        raise NotImplementedError

    def points(self, spec: ExperimentSpec) -> list[dict[str, Any]]:
        """Each planned trial's values by field path, in plan order (a fixed method's)."""
        return []

    def identity(self, plan: Plan) -> dict[str, Any]:
        """An adaptive plan's identity, beside its method's name (stored with a sweep, compared
        on --resume): its budget, seed, repeats, base config and space. A fixed plan's is its
        trials (`Plan.identity`)."""
        s = plan.spec
        seeds = {"repeats": s.search.repeats} if s.search.repeats > 1 else {}
        return {
            "budget": s.search.budget,
            "seed": s.train.seed,
            **seeds,
            "base": plan.trial_base().model_dump(mode="json"),
            "space": {
                k: d.model_dump(mode="json", exclude_none=True) for k, d in s.search.sample.items()
            },
        }

    def space(self, plan: Plan) -> dict[str, Any]:
        """An adaptive method's Ray Tune search space (Tune's `param_space`)."""
        raise NotImplementedError

    def searcher(self, plan: Plan) -> Any:
        """An adaptive method's Ray Tune `Searcher`, maximising `plan.OBJECTIVE`; the sweep
        limits how many trials it runs at once and numbers its proposals. It must save its
        attributes with its state, as Ray's searchers do: the proposal count is kept there."""
        raise NotImplementedError


@functools.cache
def _modules() -> tuple[str, ...]:
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__)))


def names() -> list[str]:
    """Every method: this package's modules (a leading _ marks a helper, not a method)."""
    return [n for n in _modules() if not n.startswith("_")]


def lookup(name: str) -> Method:
    """The method `name` (imported on first use); ValueError listing the methods if none."""
    if name not in names():
        valid = [repr(n) for n in names()]
        listed = " or ".join([", ".join(valid[:-1]), valid[-1]] if len(valid) > 1 else valid)
        raise ValueError(f"Input should be {listed}")
    method = getattr(importlib.import_module(f"{__name__}.{name}"), "METHOD", None)
    if not isinstance(method, Method):
        raise TypeError(f"{__name__}.{name} sets no METHOD, a search Method")
    return method
