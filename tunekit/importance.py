"""Parameter importance of a search: how much of the spread of configurations' seed means each
sampled parameter explains, by optuna's fANOVA (a model's estimate, not a test)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def fanova(
    configs: Sequence[tuple[Mapping[str, str], float]], params: Sequence[str], seed: int = 0
) -> dict[str, float] | None:
    """How much of the variation in configurations' values each parameter explains: optuna's
    fANOVA over (parameters, seed mean) — a random-forest model's estimate, not a test. Ranges
    come from the values (log where they span 100× or more). None for fewer than 4
    configurations or fewer than 2 parameters that vary."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    dists: dict[str, Any] = {}
    for p in params:
        values = [str(c[p]) for c, _ in configs]
        try:
            numbers = [float(v) for v in values]
        except ValueError:
            if len(set(values)) > 1:
                dists[p] = CategoricalDistribution(sorted(set(values)))
            continue
        low, high = min(numbers), max(numbers)
        if low < high:
            dists[p] = FloatDistribution(low, high, log=low > 0 and high / low >= 100)
    if len(configs) < 4 or len(dists) < 2:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for c, value in ((c, float(v)) for c, v in configs if math.isfinite(v)):
        study.add_trial(
            optuna.trial.create_trial(
                params={
                    p: str(c[p]) if isinstance(d, CategoricalDistribution) else float(c[p])
                    for p, d in dists.items()
                },
                distributions=dists,
                value=value,
            )
        )
    found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed))
    return {p: float(v) for p, v in found.items()}
