"""Grid: every trial of grid × cases × samples × repeats, fixed up front.

`grid` takes every combination of its values, each combined with every one of `cases`; `sample`
is drawn `num_samples` times (seeded by train.seed), each draw running the whole grid × cases;
`repeats` trains each on seeds train.seed, train.seed + 1, ... Ray Tune runs the plan's trial
numbers as one grid search (`wire.grid`): no searcher.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import TYPE_CHECKING, Any

from tunekit.search import Method, lookup, names

if TYPE_CHECKING:
    from tunekit.spec import ExperimentSpec, SearchSpec


class Grid(Method):
    def check(self, search: SearchSpec) -> None:
        if search.budget is not None:
            adaptive = " or ".join(n for n in names() if lookup(n).adaptive)
            raise ValueError(
                f"budget is for method {adaptive}; grid runs every trial it expands to"
            )

    def size(self, spec: ExperimentSpec) -> int:
        s = spec.search
        grid = math.prod(len(v) for v in s.grid.values())
        return grid * max(1, len(s.cases)) * s.num_samples * s.repeats

    def points(self, spec: ExperimentSpec) -> list[dict[str, Any]]:
        """Pure: the same spec always gives the same trials (draws are seeded by train.seed)."""
        s = spec.search
        points = [dict(zip(s.grid, combo)) for combo in itertools.product(*s.grid.values())]
        points = [{**p, **c} for p in points for c in (s.cases or [{}])]
        rng = random.Random(spec.train.seed)
        out = []
        for _ in range(s.num_samples):
            draws = {path: dist.draw(rng) for path, dist in s.sample.items()}
            for point in points:
                for r in range(s.repeats):
                    seed = {"train.seed": spec.train.seed + r} if s.repeats > 1 else {}
                    out.append({**point, **draws, **seed})
        return out


METHOD = Grid()
