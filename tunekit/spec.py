"""Experiment specs: pydantic models of a study, loaded from YAML and expanded into trials.

Validation happens here, once: `load_spec` turns a YAML file into a frozen `ExperimentSpec` and
checks every trial it expands to, so code further in only ever sees typed, valid objects.
"""

from __future__ import annotations

import difflib
import math
import random
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from tunekit.errors import Problem, SpecError

# Output channels of the six conv blocks (model.py builds them; kept here so that reading a spec
# does not import torch).
CHANNELS = (8, 8, 8, 16, 16, 16)


def fmt(value: Any) -> str:
    """The one rule for numbers people read: about 4 significant digits, no float noise.

    Takes numbers, and the strings MLflow keeps params as ("3.7725799377838215e-06" -> 3.773e-06).
    """
    if isinstance(value, str):
        try:
            int(value)
            return value
        except ValueError:
            try:
                return fmt(float(value)) if value.strip().lower() not in ("nan", "inf") else value
            except ValueError:
                return value
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


DIGITS = ("mnist", "fashion_mnist", "kmnist")  # 28×28 grey images in the IDX format
IMPORT = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"  # "package.module:callable"


class _Importable(_Strict):
    """A part of the spec that may name the user's own code: `import: "module:callable"` with
    keyword `args` (each sweepable as `<part>.args.NAME`). Written `import` in YAML and dumps."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
        populate_by_name=True,
        serialize_by_alias=True,
    )


class DataSpec(_Importable):
    dataset: Literal["mnist", "fashion_mnist", "kmnist", "cifar10"] = "mnist"  # built in
    import_: str | None = Field(None, alias="import", pattern=IMPORT)  # your own: a callable
    #   returning (train_images, train_labels, test_images, test_labels), images uint8 N×H×W or
    #   N×C×H×W, labels 0..classes-1 (int); `dataset` is then not used
    args: dict[str, Any] = {}  # keyword args of that callable (sweep them: data.args.NAME)
    root: Path | None = None  # folder holding <Dataset>/raw; None: $TUNEKIT_DATA_DIR, else ./data
    rotation: float = Field(7.0, ge=0, le=180)  # random rotation of train images, ± degrees
    #   (default 7 for the digits, 0 for the others)
    crop: NonNegativeInt = 0  # random crop: pad by this many pixels and crop back (a shift of
    #   up to ± crop pixels); default 4 for cifar10, 0 for the others
    flip: bool = False  # random horizontal flip (default on for cifar10)
    subset: PositiveInt | None = None  # train on the first N training images only (smoke runs)
    download: bool = True  # fetch missing files with torchvision (needs internet)

    @model_validator(mode="before")
    @classmethod
    def _augment_for_the_dataset(cls, data: Any) -> Any:
        """Augmentations that fit the images, unless the spec says otherwise: rotation for the
        digits, random crop and flip for CIFAR, none for your own."""
        if isinstance(data, dict) and (
            data.get("dataset") not in (None, *DIGITS) or data.get("import") or data.get("import_")
        ):
            data = {
                "rotation": 0.0,
                "crop": 4 if data.get("dataset") == "cifar10" else 0,
                "flip": data.get("dataset") == "cifar10",
                **data,
            }
        return data

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


SEED_CNN = ("norm", "groups", "dropout")  # the built-in seed_cnn's own options


class ModelSpec(_Importable):
    name: Literal["seed_cnn"] = "seed_cnn"  # the built-in model (`models/`), unless `import`
    import_: str | None = Field(None, alias="import", pattern=IMPORT)  # your own model: a
    #   callable returning an nn.Module that maps images N×C×H×W to N×classes
    args: dict[str, Any] = {}  # keyword args of that callable (sweep them: model.args.NAME)
    output: Literal["logits", "log_probs"] = "logits"  # what your model returns; the loss is
    #   cross-entropy either way (seed_cnn returns log_probs)
    norm: Literal["BN", "GN", "LN"] = (
        "GN"  # seed_cnn: BatchNorm2d | GroupNorm(groups) | GroupNorm(1)
    )
    groups: PositiveInt = 4  # seed_cnn, GN only: GroupNorm groups; must divide every channel count
    dropout: float = Field(0.069, ge=0, lt=1)  # seed_cnn: drop probability after each conv block

    @field_validator("groups")
    @classmethod
    def _groups_divide_channels(cls, groups: int, info: ValidationInfo) -> int:
        if (
            info.data.get("norm") == "GN"
            and not info.data.get("import_")
            and any(c % groups for c in CHANNELS)
        ):
            valid = [g for g in range(1, min(CHANNELS) + 1) if all(c % g == 0 for c in CHANNELS)]
            raise ValueError(
                f"GroupNorm groups={groups} does not divide every layer's channel "
                f"count {sorted(set(CHANNELS))}; valid: {valid}"
            )
        return groups

    @model_validator(mode="after")
    def _options_fit_the_model(self) -> ModelSpec:
        defaults = type(self).model_fields
        if self.import_:
            stray = [f for f in SEED_CNN if getattr(self, f) != defaults[f].default]
            if stray:
                raise ValueError(
                    f"{', '.join(stray)}: options of the built-in seed_cnn; give "
                    f"your model's under args (args: {{{stray[0]}: ...}})"
                )
        else:
            if self.args:
                raise ValueError(
                    "args are the keyword args of your own model's callable: give "
                    "`import` too (seed_cnn takes norm, groups, dropout)"
                )
            if self.output != defaults["output"].default:
                raise ValueError("output is for your own model; seed_cnn returns log_probs")
        return self

    @model_serializer(mode="wrap")
    def _only_what_applies(self, handler: Any) -> dict[str, Any]:
        """Dumps (MLflow params, config.yaml, the plan) hold only the fields that apply."""
        out = handler(self)
        drop = (*SEED_CNN, "name") if self.import_ else ("import", "import_", "args", "output")
        return {k: v for k, v in out.items() if k not in drop}

    @property
    def log_probs(self) -> bool:
        """Whether the model's output is log-probabilities (else logits)."""
        return self.import_ is None or self.output == "log_probs"


class OptimizerSpec(_Strict):
    name: Literal["sgd"] = "sgd"  # torch.optim.SGD
    lr: PositiveFloat = 0.04104  # learning rate (peak lr for onecycle unless max_lr is set)
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD momentum


_SCHEDULER_FIELDS = {
    "step": {"step_size", "gamma", "start_epoch"},
    "onecycle": {"max_lr", "pct_start"},
    "none": set(),
}


class SchedulerSpec(_Strict):
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


class TrainSpec(_Strict):
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


class TrialConfig(_Strict):
    """Everything one training run needs; what `train.fit` takes."""

    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec()
    train: TrainSpec = TrainSpec()


PER_MEMBER = ("seed", "optimizer", "l1", "l2", "penalize")  # train settings a pack's trials
#                                                              may each have their own


def pack_key(config: TrialConfig) -> str:
    """What the trials of one pack must share: everything but the train settings in PER_MEMBER
    (and the device, which the pack decides)."""
    train = config.train.model_dump(mode="json", exclude={*PER_MEMBER, "device"})
    return repr(
        (
            config.data.model_dump(mode="json"),
            config.model.model_dump(mode="json"),
            sorted(train.items()),
        )
    )


class Distribution(_Strict):
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
        close = difflib.get_close_matches(path, TRIAL_PATHS, n=3)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"{path!r} names no field{hint} (fields are under data., model., train.)")
    return path


class SearchSpec(_Strict):
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


class ResourcesSpec(_Strict):
    cpus_per_trial: PositiveInt = 1  # CPU cores per trial; torch uses this many threads
    gpus_per_trial: float | None = Field(None, ge=0, le=8)  # None: 0.25 (4 per GPU) if the
    #                                       cluster has GPUs, else 0; fractions share one GPU


class AshaSpec(_Strict):
    grace_period: PositiveInt = 5  # epochs every trial runs before it may be stopped
    reduction_factor: float = Field(3.0, gt=1)  # about 1 in this many trials goes on at each rung


AUTO_PACK = 16  # sweep.pack auto where trials get a GPU and the driver has none to measure the
#                pack size on (measure.gpu_pack); on CPUs, 1


class SweepSpec(_Strict):
    storage: str | None = None  # results folder or URI (s3://bucket/prefix) every node reaches;
    #                             None: $TUNEKIT_STORAGE (a cluster's default), else ./runs
    max_concurrent: PositiveInt | None = None  # trials at once; None: as many as resources allow
    max_failures: NonNegativeInt = 0  # retries of a failed trial, from its last checkpoint
    max_trials: PositiveInt = 5000  # a plan of more trials is refused (a typo'd grid, say)
    asha: AshaSpec | None = None  # stop weak trials early on val_acc; None: run every epoch
    pack: Literal["auto"] | PositiveInt = "auto"  # trials of one shape trained as one fused
    #     network per Ray trial (grid plans); auto: 1 on CPUs; on GPUs measured on the
    #     driver's GPU, else up to AUTO_PACK


class TrackingSpec(_Strict):
    uri: str | None = None  # MLflow tracking URI; None: $MLFLOW_TRACKING_URI, else local store
    experiment: str | None = None  # MLflow experiment name; None: the spec's name


class Claim(_Strict):
    """A directional claim the study tests, in plan parameters: `better` beats `than` (at `at`),
    or, with `more_than_at`, beats it by more at `at` than at `more_than_at`."""

    text: str = Field(min_length=1)  # the claim in words, as the report quotes it
    better: dict[str, Any]  # e.g. {model.norm: GN}
    than: dict[str, Any]  # the same fields, other values: {model.norm: BN}
    at: dict[str, Any] = {}  # where: {train.batch_size: 16}; empty: averaged over the rest
    more_than_at: dict[str, Any] | None = None  # the same fields as `at`, other values

    @model_validator(mode="after")
    def _comparable(self) -> Claim:
        for part in ("better", "than", "at", "more_than_at"):
            for path in getattr(self, part) or {}:
                check_path(path)
        if not self.better or set(self.better) != set(self.than) or self.better == self.than:
            raise ValueError(
                "better and than name the same fields with other values, e.g. "
                "better: {model.norm: GN}, than: {model.norm: BN}"
            )
        if set(self.at) & set(self.better):
            raise ValueError("at fixes other fields than better/than")
        if self.more_than_at is not None and (
            set(self.more_than_at) != set(self.at) or self.more_than_at == self.at or not self.at
        ):
            raise ValueError("more_than_at names the same fields as at, with other values")
        return self


class ExperimentSpec(TrialConfig):
    """A whole study: the base trial config, how it varies, and where it runs and is tracked."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # names runs/ folders and MLflow
    search: SearchSpec = Field(default_factory=SearchSpec.model_construct)  # absent: one trial
    resources: ResourcesSpec = ResourcesSpec()
    sweep: SweepSpec = SweepSpec()
    tracking: TrackingSpec = TrackingSpec()
    claims: list[Claim] = []  # what the report tests, each in the direction stated

    @model_validator(mode="after")
    def _claims_in_the_plan(self) -> ExperimentSpec:
        s = self.search
        if self.claims and s.method != "grid":
            raise ValueError("claims: a claim compares planned configurations; use method grid")
        varied: dict[str, set[str]] = {k: {fmt(v) for v in vs} for k, vs in s.grid.items()}
        for case in s.cases:
            for k, v in case.items():
                varied.setdefault(k, set()).add(fmt(v))
        for i, c in enumerate(self.claims):
            for part in ("better", "than", "at", "more_than_at"):
                for path, value in (getattr(c, part) or {}).items():
                    if path not in varied:
                        raise ValueError(
                            f"claims[{i}].{part}: {path} does not vary in the plan "
                            f"(search.grid or search.cases)"
                        )
                    if fmt(value) not in varied[path]:
                        raise ValueError(
                            f"claims[{i}].{part}: {path}={fmt(value)} is not in the "
                            f"plan (it has {', '.join(sorted(varied[path]))})"
                        )
        return self

    def base(self) -> dict[str, Any]:
        """The trial fields as the user wrote them (defaults left out): what trials build on."""
        return self.model_dump(include={"data", "model", "train"}, exclude_unset=True)


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
                Problem(_loc(err["loc"]), f"{_msg(err)} (trial {index}: {setting})")
                for err in e.errors()
            ]
        ) from None


def _msg(err: Mapping[str, Any]) -> str:
    return err["msg"].removeprefix("Value error, ")


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "<spec>"


def _line(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
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
    loc, msg = tuple(err["loc"]), _msg(err)
    if err["type"] == "extra_forbidden":
        siblings = _fields_at(cls, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), siblings, n=1)
        msg = (
            f"unknown key{f'; did you mean {close[0]!r}?' if close else ''} "
            f"(allowed: {', '.join(siblings)})"
        )
    elif not isinstance(err.get("input"), (dict, list)) and err["type"] != "missing":
        msg = f"{msg} (got {err['input']!r})"
    from_set = any(_loc(loc).startswith(k) for k in overridden)
    return Problem(
        _loc(loc),
        msg + (" (from --set)" if from_set else ""),
        None if from_set else _line(root, loc),
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
            [_problem(err, root, ExperimentSpec, overrides) for err in e.errors()], source=path
        ) from None
    return spec, root


def load_spec(path: str | Path, overrides: Mapping[str, Any] | None = None) -> ExperimentSpec:
    """The validated spec of a YAML file (its trials: `plan.load_plan`)."""
    return read_spec(path, overrides)[0]
