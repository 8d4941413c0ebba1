"""What the driver checks before any trial, beyond the spec's own rules: that the data can be
read and that each model of the plan builds and fits it, once, on a dummy batch. A problem is a
SpecError naming the key (exit 2), and nothing has been started or recorded.

It also finds what the sweep needs to know of the user's code: whether a pack of it would be its
members alone (`pack.packable`), and which modules Ray's workers need sent (`imports.to_ship`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunekit import datasets, imports, models, pack
from tunekit.errors import Problem, SpecError
from tunekit.plan import Plan
from tunekit.spec import TrialConfig, resolve


@dataclass(frozen=True)
class Checked:
    """What the checks found."""

    image_shape: tuple[int, ...]  # C×H×W
    classes: int
    unpackable: str | None = None  # why a pack of the plan's model would not be its members
    ship: list[str] = field(default_factory=list)  # module files or folders for the workers


def _configs(plan: Plan) -> list[TrialConfig]:
    """One config per distinct (data, model) of the plan; a TPE plan's base config and each
    sampled model or data arg at its edges."""
    if not plan.adaptive:
        found: dict[str, TrialConfig] = {}
        for t in plan.trials:
            key = repr(
                (t.config.data.model_dump(mode="json"), t.config.model.model_dump(mode="json"))
            )
            found.setdefault(key, t.config)
        return list(found.values())
    spec = plan.spec
    out = [plan.trial_base()]
    for path, dist in spec.search.sample.items():
        if path.startswith(("model.", "data.")):
            out += [resolve(spec.base(), {path: v}) for v in dist.edges()]
    return out


def check_config(config: TrialConfig) -> tuple[tuple[int, ...], int, Any]:
    """One config's dataset read and model built on a dummy batch: (image shape, classes,
    the model)."""
    images = datasets.check(config.data)
    data_key = "data.import" if config.data.import_ else "data.dataset"
    return (
        images.shape,
        images.classes,
        models.check(config.model, images.shape, images.classes, data_key),
    )


def check(plan: Plan) -> Checked:
    """Read each dataset and build each model of the plan on a dummy batch of its images."""
    configs = _configs(plan)
    shape: tuple[int, ...] = ()
    classes, unpackable = 0, None
    for c in configs:
        shape, classes, model = check_config(c)
        if c.model.import_ and unpackable is None:
            unpackable = pack.packable(model, shape)
    targets = [t for c in configs for t in (c.model.import_, c.data.import_) if t]
    ship = imports.to_ship(list(dict.fromkeys(targets)))
    s = plan.spec
    if unpackable and s.search.repeats > 1 and (plan.adaptive or s.sweep.asha):
        raise SpecError(
            [
                Problem(
                    "search.repeats",
                    f"with {'tpe' if plan.adaptive else 'asha'}, "
                    "a configuration's seeds train as one pack, and this model "
                    f"cannot be packed: {unpackable}",
                )
            ]
        )
    return Checked(shape, classes, unpackable, ship)
