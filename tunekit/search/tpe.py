"""TPE: Bayesian search with Optuna's TPE sampler over `sample`, for `budget` proposals.

Each proposal is numbered as the sweep receives it; with `repeats` R, it is trained on R seeds as
one pack and scored by their mean. Optuna and Ray are imported only when a sweep runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunekit.search import Method

if TYPE_CHECKING:
    from tunekit.plan import Plan
    from tunekit.spec import Distribution, ExperimentSpec, SearchSpec


class TPE(Method):
    adaptive = True

    def check(self, search: SearchSpec) -> None:
        fixed = [k for k in ("grid", "cases") if getattr(search, k)] + [
            k for k in ("num_samples",) if getattr(search, k) > 1
        ]
        if not search.sample or search.budget is None or fixed:
            raise ValueError(
                "method tpe searches `sample` (uniform, loguniform, randint, "
                "choice) for `budget` trials"
                + (f"; it takes no {', '.join(fixed)}" if fixed else "; give both")
            )

    def size(self, spec: ExperimentSpec) -> int:
        return (spec.search.budget or 0) * spec.search.repeats

    def space(self, plan: Plan) -> dict[str, Any]:
        return {path: domain(d) for path, d in plan.spec.search.sample.items()}

    def searcher(self, plan: Plan) -> Any:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        from tunekit.plan import OBJECTIVE

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        s = plan.spec
        startup = max(2, min(10, (s.search.budget or 0) // 3))  # random proposals before TPE models
        return OptunaSearch(
            metric=OBJECTIVE[0],
            mode=OBJECTIVE[1],
            sampler=optuna.samplers.TPESampler(seed=s.train.seed, n_startup_trials=startup),
        )


def domain(d: Distribution) -> Any:
    """A spec distribution as Ray Tune's."""
    from ray import tune

    if d.choice is not None:
        return tune.choice(d.choice)
    low, high = getattr(d, d.kind)
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[
        d.kind
    ](low, high)


METHOD = TPE()
