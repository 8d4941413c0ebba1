"""A study's trials as plain records: what MLflow holds of each trial run (`track` reads it),
and `trials.csv`, the file beside a study report with every value its statistics use, which
`tunekit report --trials` reads back without MLflow."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunekit.errors import UsageError
from tunekit.trials import Status

if TYPE_CHECKING:
    from tunekit.spec import TrialConfig


@dataclass(frozen=True)
class RunRecord:
    """A trial's run as stored in MLflow."""

    run_id: str
    trial: int  # its number in the sweep's plan
    params: dict[str, str]
    max_val_acc: float | None
    best_epoch: int | None
    status: str
    error: str | None


TRIAL_COLUMNS = ["trial", "run_id", "status", "max_val_acc", "best_epoch", "used", "error"]


def trials_csv(records: Sequence[RunRecord]) -> str:
    """One row per trial with every value the statistics use (and whether they used it): what
    `tunekit report --trials` rebuilds the statistics from, without MLflow."""
    params = sorted({k for r in records for k in r.params})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*TRIAL_COLUMNS, *params])
    for r in sorted(records, key=lambda r: r.trial):
        ok = r.status == Status.DONE and r.max_val_acc is not None and math.isfinite(r.max_val_acc)
        writer.writerow(
            [
                r.trial,
                r.run_id,
                r.status,
                repr(r.max_val_acc) if r.max_val_acc is not None else "",
                r.best_epoch if r.best_epoch is not None else "",
                "yes" if ok else "no",
                (r.error or "").strip().splitlines()[0] if r.error else "",
                *(r.params.get(k, "") for k in params),
            ]
        )
    return out.getvalue()


def read_trials_csv(path: Path) -> list[RunRecord]:
    """The trials a trials.csv holds (as `trials_csv` wrote them)."""
    try:
        rows = list(csv.DictReader(path.open(newline="")))
    except OSError as e:
        raise UsageError("--trials", f"cannot read {path}: {e.strerror or e}") from None
    if not rows or not set(TRIAL_COLUMNS) <= set(rows[0]):
        raise UsageError(
            "--trials",
            f"{path} is not a trials.csv (its columns: "
            f"{', '.join(TRIAL_COLUMNS)}, then the parameters)",
        )
    return [
        RunRecord(
            r["run_id"],
            int(r["trial"]),
            {k: v for k, v in r.items() if k not in TRIAL_COLUMNS},
            float(r["max_val_acc"]) if r["max_val_acc"] else None,
            int(r["best_epoch"]) if r["best_epoch"] else None,
            r["status"],
            r["error"] or None,
        )
        for r in rows
    ]


def flat_params(config: TrialConfig) -> dict[str, str]:
    """Every field of a (nested) pydantic config as 'train.epochs' -> '3', a model's args as
    'model.args.norm' -> 'GN' (your model's import path as 'model.import')."""

    def flat(value: Any, prefix: str) -> dict[str, str]:
        if isinstance(value, dict):
            return {
                k: v
                for key, inner in value.items()
                for k, v in flat(inner, f"{prefix}{key}.").items()
            }
        return {prefix[:-1]: json.dumps(value) if isinstance(value, list) else str(value)}

    return flat(config.model_dump(mode="json"), "")
