"""A whole study: the base trial, how it varies, where it runs and is tracked, what it claims."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from tunekit.packing import AUTO_PACK  # noqa: F401  (named in SweepSpec.pack's comment)
from tunekit.spec.base import Strict
from tunekit.spec.claims import Claim
from tunekit.spec.search import AshaSpec, SearchSpec
from tunekit.spec.trial import TrialConfig
from tunekit.text import fmt


class ResourcesSpec(Strict):
    cpus_per_trial: PositiveInt = 1  # CPU cores per trial; torch uses this many threads
    gpus_per_trial: float | None = Field(None, ge=0, le=8)  # None: 0.25 (4 per GPU) if the
    #                                       cluster has GPUs, else 0; fractions share one GPU


class SweepSpec(Strict):
    storage: str | None = None  # results folder or URI (s3://bucket/prefix) every node reaches;
    #                             None: $TUNEKIT_STORAGE (a cluster's default), else ./runs
    max_concurrent: PositiveInt | None = None  # trials at once; None: as many as resources allow
    max_failures: NonNegativeInt = 0  # retries of a failed trial, from its last checkpoint
    max_trials: PositiveInt = 5000  # a plan of more trials is refused (a typo'd grid, say)
    asha: AshaSpec | None = None  # stop weak trials early on val_acc; None: run every epoch
    pack: Literal["auto"] | PositiveInt = "auto"  # trials of one shape trained as one fused
    #     network per Ray trial (grid plans); auto: 1 on CPUs; on GPUs measured on the
    #     driver's GPU, else up to AUTO_PACK


class TrackingSpec(Strict):
    uri: str | None = None  # MLflow tracking URI; None: $MLFLOW_TRACKING_URI, else local store
    experiment: str | None = None  # MLflow experiment name; None: the spec's name


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
