"""One trial's settings: data, model and training, and the dotted paths that name them."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from tunekit.errors import Problem, SpecError
from tunekit.spec.base import IMPORT, Importable, Strict, errors, location, message, nested
from tunekit.text import fmt


class DataSpec(Importable):
    dataset: str = "mnist"  # a built-in dataset: a file of tunekit/datasets/ (its registry)
    import_: str | None = Field(None, alias="import", pattern=IMPORT)  # your own: a callable
    #   returning (train_images, train_labels, test_images, test_labels), images uint8 N×H×W or
    #   N×C×H×W, labels 0..classes-1 (int); `dataset` is then not used
    args: dict[str, Any] = {}  # keyword args of that callable (sweep them: data.args.NAME)
    root: Path | None = None  # folder holding <Dataset>/raw; None: $TUNEKIT_DATA_DIR, else ./data
    rotation: float = Field(0.0, ge=0, le=180)  # random rotation of train images, ± degrees
    #   (default: the dataset's own, 7 for the digits; 0 for your own data)
    crop: NonNegativeInt = 0  # random crop: pad by this many pixels and crop back (a shift of
    #   up to ± crop pixels); default: the dataset's own, 4 for cifar10; 0 for your own data
    flip: bool = False  # random horizontal flip (default: the dataset's own, on for cifar10)
    subset: PositiveInt | None = None  # train on the first N training images only (smoke runs)
    download: bool = True  # fetch missing files with torchvision (needs internet)

    @field_validator("dataset")
    @classmethod
    def _built_in(cls, name: str) -> str:
        from tunekit.datasets import registry  # the built-in datasets' files (torch)

        registry.get(name)  # a ValueError listing the valid names
        return name

    @model_validator(mode="before")
    @classmethod
    def _augment_for_the_dataset(cls, data: Any) -> Any:
        """The dataset's own augmentations unless the spec says otherwise (rotation for the
        digits, random crop and flip for CIFAR); none for your own data."""
        if not isinstance(data, dict) or data.get("import") or data.get("import_"):
            return data
        from tunekit.datasets import registry

        entry = registry.datasets().get(data.get("dataset", "mnist"))
        if entry is None:
            return data  # the dataset field says what is wrong
        return {**entry.augment.as_dict(), **data}

    @model_validator(mode="after")
    def _args_for_import(self) -> DataSpec:
        if self.args and not self.import_:
            raise ValueError(
                "args are the keyword args of your own dataset's callable: give `import` too"
            )
        return self

    @model_serializer(mode="wrap")
    def _only_what_applies(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        drop = ("dataset", "download") if self.import_ else ("import", "import_", "args")
        return {k: v for k, v in out.items() if k not in drop}


class ModelSpec(Importable):
    name: str = "seed_cnn"  # a built-in model: a file of tunekit/models/ (its registry)
    import_: str | None = Field(None, alias="import", pattern=IMPORT)  # your own model: a
    #   callable returning an nn.Module that maps images N×C×H×W to N×classes
    args: dict[str, Any] = {}  # the built-in model's args (seed_cnn: norm, groups, dropout), or
    #   your callable's keyword args; sweep them as model.args.NAME
    output: Literal["logits", "log_probs"] = "logits"  # what your model returns; the loss is
    #   cross-entropy either way (a built-in model says its own)

    @model_validator(mode="after")
    def _args_fit_the_model(self) -> ModelSpec:
        """A built-in model's args checked against its schema, its defaults filled in (so a
        dump says every value a trial used)."""
        if self.import_:
            if "name" in self.model_fields_set:
                raise ValueError("give name (a built-in model) or import (your own), not both")
            return self
        if self.output != "logits":
            raise ValueError("output is for your own model; a built-in model says its own")
        from tunekit.models import registry  # the built-in models' files (torch)

        entry = registry.get(self.name)
        try:
            args = entry.args.model_validate(self.args).model_dump(mode="json")
        except ValidationError as e:
            raise nested(e, ("args",), list(entry.args.model_fields)) from None
        object.__setattr__(self, "args", args)  # frozen: the validated, complete args
        return self

    @model_serializer(mode="wrap")
    def _only_what_applies(self, handler: Any) -> dict[str, Any]:
        """Dumps (MLflow params, config.yaml, the plan) hold only the fields that apply."""
        out = handler(self)
        drop = ("name",) if self.import_ else ("import", "import_", "output")
        return {k: v for k, v in out.items() if k not in drop}

    @property
    def log_probs(self) -> bool:
        """Whether the model's output is log-probabilities (else logits)."""
        if self.import_:
            return self.output == "log_probs"
        from tunekit.models import registry

        return registry.get(self.name).output == "log_probs"


class OptimizerSpec(Strict):
    name: Literal["sgd"] = "sgd"  # torch.optim.SGD
    lr: PositiveFloat = 0.04104  # learning rate (peak lr for onecycle unless max_lr is set)
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD momentum


_SCHEDULER_FIELDS = {
    "step": {"step_size", "gamma", "start_epoch"},
    "onecycle": {"max_lr", "pct_start"},
    "none": set(),
}


class SchedulerSpec(Strict):
    name: Literal["step", "onecycle", "none"] = "step"  # step: the seed's StepLR; none: constant
    step_size: PositiveInt = 2  # step: epochs between two decays
    gamma: float = Field(0.09, gt=0, le=1)  # step: lr factor at each decay
    start_epoch: NonNegativeInt = 12  # step: epochs at constant lr before the decays start
    max_lr: PositiveFloat | None = None  # onecycle: peak lr; None: the optimizer's lr
    pct_start: float = Field(0.3, gt=0, lt=1)  # onecycle: fraction of batches spent warming up

    @model_validator(mode="after")
    def _fields_fit_name(self) -> SchedulerSpec:
        # Fields of another scheduler are errors, unless left at their defaults (a full dump).
        stray = {
            f
            for f in self.model_fields_set - _SCHEDULER_FIELDS[self.name] - {"name"}
            if getattr(self, f) != type(self).model_fields[f].default
        }
        if stray:
            raise ValueError(
                f"{', '.join(sorted(stray))} do(es) not apply to scheduler "
                f"'{self.name}' (it takes: {sorted(_SCHEDULER_FIELDS[self.name])})"
            )
        return self


class TrainSpec(Strict):
    epochs: PositiveInt = 25
    batch_size: PositiveInt = 128  # images per SGD step
    optimizer: OptimizerSpec = OptimizerSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    l1: float = Field(0.0, ge=0)  # λ₁: loss += l1 · Σ|p| over the penalized parameters
    l2: float = Field(0.0, ge=0)  # λ₂: SGD weight decay over the penalized parameters
    penalize: Literal["all", "weights"] = "all"  # all: every parameter, as the seed; weights: convs
    seed: int = 1  # seeds init, batch order, augmentation and dropout
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available
    eval_batch_size: PositiveInt = 1000  # images per forward pass when evaluating
    compile: bool = False  # the training step under torch.compile(fullgraph=True), on CUDA
    #                        captured as a CUDA graph; off: eager (as fast on CPU, no compiling)


class TrialConfig(Strict):
    """Everything one training run needs; what `train.fit` takes."""

    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainSpec = TrainSpec()


def _paths(cls: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted field path under a model, nested models included."""
    out = []
    for name, field in cls.model_fields.items():
        path = prefix + (field.alias or name)
        out.append(path)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out += _paths(field.annotation, path + ".")
    return out


TRIAL_PATHS = _paths(TrialConfig)


ARGS = ("model.args.", "data.args.")  # any name under these: your callable's keyword args


def check_path(path: str) -> str:
    """The path itself if it names a trial field; else a ValueError with the closest names."""
    if path.startswith(ARGS) and path.count(".") == 2 and path.rsplit(".", 1)[1].isidentifier():
        return path
    if path not in TRIAL_PATHS:
        from tunekit.models import registry  # the built-in models' args are paths too

        args = [f"model.args.{a}" for m in registry.models().values() for a in m.args.model_fields]
        close = difflib.get_close_matches(path, [*TRIAL_PATHS, *args], n=3)
        if path.startswith("model.") and f"model.args.{path[6:]}" in args:
            close = [f"model.args.{path[6:]}"]  # a built-in model's option: under args
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"{path!r} names no field{hint} (fields are under data., model., train.)")
    return path


def set_path(raw: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of nested dict `raw` with dotted `path` set to `value`."""
    head, _, rest = path.partition(".")
    out = dict(raw)
    if rest:
        inner = out.get(head)
        out[head] = set_path(inner if isinstance(inner, dict) else {}, rest, value)
    else:
        out[head] = value
    return out


def resolve(base: dict[str, Any], params: Mapping[str, Any], index: int = 0) -> TrialConfig:
    """Validate `base` with `params` set on it; errors name the trial and the fields it set."""
    raw = base
    for path, value in params.items():
        raw = set_path(raw, path, value)
    try:
        return TrialConfig.model_validate(raw)
    except ValidationError as e:
        setting = (
            ", ".join(
                f"{k}={fmt(v) if isinstance(v, float) else repr(v)}" for k, v in params.items()
            )
            or "the base config"
        )
        raise SpecError(
            [
                Problem(location(err["loc"]), f"{message(err)} (trial {index}: {setting})")
                for err in errors(e)
            ]
        ) from None
