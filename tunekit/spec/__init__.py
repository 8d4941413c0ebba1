"""Experiment specs: pydantic models of a study, read from YAML.

Validation happens here, once, at the edge: `load_spec` turns a YAML file into a frozen
`ExperimentSpec`, so code further in only ever sees typed, valid objects (its trials, each
validated too: `plan.load_plan`).

- `trial`: one trial's settings (data, model, train) and the dotted paths that name them;
- `search`: how a study varies them; `claims`: what it tests; `study`: the whole study;
- `reading`: a YAML file to a spec, every problem named by key and line.
"""

from tunekit.spec.claims import Claim
from tunekit.spec.reading import load_spec, read_spec, yaml_line
from tunekit.spec.search import AshaSpec, Distribution, SearchSpec
from tunekit.spec.study import ExperimentSpec, ResourcesSpec, SweepSpec, TrackingSpec
from tunekit.spec.trial import (
    TRIAL_PATHS,
    DataSpec,
    ModelSpec,
    OptimizerSpec,
    SchedulerSpec,
    TrainSpec,
    TrialConfig,
    check_path,
    resolve,
    set_path,
)

__all__ = [
    "TRIAL_PATHS",
    "AshaSpec",
    "Claim",
    "DataSpec",
    "Distribution",
    "ExperimentSpec",
    "ModelSpec",
    "OptimizerSpec",
    "ResourcesSpec",
    "SchedulerSpec",
    "SearchSpec",
    "SweepSpec",
    "TrackingSpec",
    "TrainSpec",
    "TrialConfig",
    "check_path",
    "load_spec",
    "read_spec",
    "resolve",
    "set_path",
    "yaml_line",
]
