"""What the driver checks before any trial, beyond the spec's own rules: that the data can be
read, and that each model of the plan builds, fits it and trains: one training step and one
evaluation in the pack its trials will train in, on a few of its real images, down the path a
trial takes (`train.rehearse`). A problem is a SpecError naming the key (exit 2), and nothing
has been started or recorded: what passes here does not fail in every trial.

It also finds what the sweep needs to know of the user's code: whether a pack of it would be its
members alone (`pack.packable`), and which modules Ray's workers need sent (`imports.to_ship`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunekit import imports, pack, packing, train
from tunekit.datasets import loading as datasets
from tunekit.errors import SpecError, first_line
from tunekit.models import building as models
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
    """One config's dataset read, its model built on a dummy batch, and a step of it trained
    alone: (image shape, classes, the model)."""
    images = datasets.check(config.data)
    model = models.check(config.model, images.shape, images.classes, _data_key(config))
    rehearse(config, images.shape, 1)
    return images.shape, images.classes, model


def rehearse(config: TrialConfig, shape: tuple[int, ...], members: int) -> None:
    """A training step of `config` in a pack of `members` (`train.rehearse`); what every trial
    would raise, as a SpecError naming the data key."""
    try:
        train.rehearse([config] * members)
    except SpecError:
        raise
    except Exception as e:  # what every trial would raise: say it once, here
        name = config.model.import_ or config.model.name
        raise SpecError.at(
            _data_key(config),
            f"images of shape {'×'.join(map(str, shape))} do not train in "
            f"{name}{f' (a pack of {members})' if members > 1 else ''}: "
            f"{type(e).__name__}: {first_line(e)}",
        ) from None


def _data_key(config: TrialConfig) -> str:
    return "data.import" if config.data.import_ else "data.dataset"


def check(plan: Plan) -> Checked:
    """Read each dataset of the plan, and build and train each model on a few of its images,
    alone and, where it packs, in a pack of two."""
    configs = _configs(plan)
    shape: tuple[int, ...] = ()
    classes, unpackable = 0, None
    for c in configs:
        shape, classes, model = check_config(c)
        why = pack.packable(model, shape) if c.model.import_ else None
        if unpackable is None:
            unpackable = why
        if why is None:
            rehearse(c, shape, 2)  # the pack its trials may train in
    targets = [t for c in configs for t in (c.model.import_, c.data.import_) if t]
    ship = imports.to_ship(list(dict.fromkeys(targets)))
    if unpackable and packing.seeds_together(plan):
        by = plan.spec.search.method if plan.adaptive else "asha"
        raise SpecError.at(
            "search.repeats",
            f"with {by}, a configuration's seeds train as one pack, and this model cannot be "
            f"packed: {unpackable}",
        )
    return Checked(shape, classes, unpackable, ship)
