"""Results: trials grouped into configurations (rows) and the results table (its findings in
sentences: `findings`). Columns follow the parameters that vary in the plan; the statistics come
from `stats`. Plain values in and out: no MLflow, no terminal, no matplotlib."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tunekit.text import fmt
from tunekit.trials import Status

if TYPE_CHECKING:
    from tunekit.stats import Comparison, Summary

IGNORED = frozenset({"train.seed", "data.root"})  # never what tells configurations apart


def varying(params: Sequence[dict[str, Any]], ignore: frozenset[str] = frozenset()) -> list[str]:
    """The keys whose value differs between the dicts, in the order they first appear."""
    keys = dict.fromkeys(k for p in params for k in p if k not in ignore)
    return [k for k in keys if len({repr(p.get(k)) for p in params}) > 1]


def column_names(paths: Sequence[str]) -> dict[str, str]:
    """What a table, a legend or a sentence calls each parameter: the last part of its path
    (`model.args.width` -> width), the whole path where two would share a name."""
    last = [p.rsplit(".", 1)[-1] for p in paths]
    return {p: n if last.count(n) == 1 else p for p, n in zip(paths, last)}


@dataclass
class ResultRow:
    """One configuration: its trials (several when repeated with other seeds). Only finished
    trials with a finite max val_acc are in `accs` (the values the statistics use); the others
    are in `left_out`, with why."""

    setting: dict[str, str]  # column -> value, for each parameter that varies in the plan
    params: dict[str, str]  # the configuration's values by field path (seed left out)
    accs: list[float]
    best_epochs: list[int]
    statuses: list[str]
    run_ids: list[str]
    errors: list[str]
    trials: list[int]  # plan numbers of its trials
    summary: Summary | None = None  # mean and 95% interval of max val_acc (stats.summarize)
    epochs: Summary | None = None  # the same of the best epoch
    vs_best: Comparison | None = None
    label: str = ""  # the values that tell it apart from the other configurations
    left_out: list[str] = field(default_factory=list)  # "trial 3 (failed)", "trial 5 (NaN)"
    used: list[int] = field(default_factory=list)  # the trials behind `accs`, in its order

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.accs) if self.accs else None

    @property
    def std(self) -> float:
        return statistics.stdev(self.accs) if len(self.accs) > 1 else 0.0

    @property
    def status(self) -> str:
        counts = {s: self.statuses.count(s) for s in dict.fromkeys(self.statuses)}
        if len(counts) == 1:
            return self.statuses[0]
        return ", ".join(f"{n} {s}" for s, n in counts.items())

    def as_dict(self) -> dict[str, Any]:
        s, v = self.summary, self.vs_best
        return {
            **self.setting,
            "trials": self.trials,
            "max_val_acc": self.mean,
            "std": self.std,
            "ci95": [s.low, s.high] if s and s.low is not None else None,
            "ci95_cut_at_bounds": bool(s and s.clipped),
            "all_seeds_equal": bool(s and s.equal),
            "n": len(self.accs),
            "accs": self.accs,
            "trials_used": self.used,
            "left_out": self.left_out,
            "best_epochs": self.best_epochs,
            "best_epoch_mean": self.epochs.mean if self.epochs else None,
            "best_epoch_ci95": [self.epochs.low, self.epochs.high]
            if self.epochs and self.epochs.low is not None
            else None,
            "p_vs_best": v.p if v else None,
            "p_vs_best_holm": v.p_holm if v else None,
            "worse_than_best": v.worse if v else None,
            "gap_told_apart": v.gap if v else None,
            "status": self.status,
            "run_ids": self.run_ids,
            "errors": self.errors,
        }


ACCURACY = (0.0, 100.0)  # what an accuracy interval may span


def result_rows(runs: Sequence[Any]) -> list[ResultRow]:
    """Group runs (records.RunRecord) by everything but the seed, with each configuration's mean,
    95% interval and comparison with the best (stats); best mean max val_acc first. A trial's
    value counts only if it finished (status done) and is finite."""
    from tunekit import stats

    columns = varying([r.params for r in runs], IGNORED)
    names = column_names(columns)
    groups: dict[tuple, ResultRow] = {}
    for r in runs:
        key = tuple(r.params.get(k, "") for k in columns)
        row = groups.setdefault(
            key,
            ResultRow(
                {names[k]: r.params.get(k, "") for k in columns},
                {k: r.params.get(k, "") for k in columns},
                [],
                [],
                [],
                [],
                [],
                [],
            ),
        )
        value = r.max_val_acc
        if r.status != Status.DONE:
            row.left_out.append(f"trial {r.trial} ({r.status})")
        elif value is None or not math.isfinite(value):
            row.left_out.append(f"trial {r.trial} (max val_acc {value})")
        else:
            row.accs.append(value)
            row.best_epochs.append(r.best_epoch)
            row.used.append(r.trial)
        row.statuses.append(r.status)
        row.run_ids.append(r.run_id)
        row.trials.append(r.trial)
        if r.error:
            row.errors.append(r.error)
    rows = sorted(groups.values(), key=lambda g: (g.mean is None, -(g.mean or 0)))
    shown = varying([r.setting for r in rows]) or list(rows[0].setting if rows else [])
    for r in rows:
        r.label = ", ".join(f"{k}={fmt(r.setting[k])}" for k in shown)
    measured = [r for r in rows if r.accs]
    for r in measured:
        trained = int(float(r.params.get("train.epochs") or max(r.best_epochs)))
        r.summary = stats.summarize(r.accs, ACCURACY)
        r.epochs = stats.summarize(r.best_epochs, (1, max(trained, *r.best_epochs)))
    if measured:
        compared = stats.versus_best({i: r.accs for i, r in enumerate(measured)})
        for i, r in enumerate(measured):
            r.vs_best = compared[i]
    return rows


def interval(s: Summary | None, digits: int) -> str:
    if s is None:
        return "-"
    if s.equal:
        return f"{s.mean:.{digits}f} (all seeds equal)"
    if s.low is None:
        return f"{s.mean:.{digits}f}"
    cut = "†" if s.clipped else ""
    return f"{s.mean:.{digits}f} [{s.low:.{digits}f}, {s.high:.{digits}f}]{cut}"


def _versus(row: ResultRow, best: ResultRow | None) -> str:
    v = row.vs_best
    if v is None or best is None:
        return "-"
    if row is best:
        return "best"
    if v.p_holm is None:
        return v.why_none or "-"
    if v.worse:
        return f"worse (p={v.p_holm:.2g})"
    return (
        f"not distinguishable at n = {len(row.accs)} (p={v.p_holm:.2g}; a gap of about "
        f"{v.gap:.2f} would be)"
    )


def _seeds(row: ResultRow) -> str:
    """Each seed's value, as a strip beside the mean."""
    return " ".join(f"{a:.2f}" for a in row.accs) or "-"


def _cells(row: ResultRow, best: ResultRow | None = None) -> list[str]:
    error = row.errors[-1].strip().splitlines()[0] if row.errors else ""  # the whole is in MLflow
    status = row.status + (f": {error[:77]}…" if len(error) > 80 else f": {error}" if error else "")
    return [
        *map(fmt, row.setting.values()),
        ", ".join(map(str, row.trials)),
        interval(row.summary, 2),
        _seeds(row),
        str(len(row.accs)),
        _versus(row, best),
        interval(row.epochs, 1)
        if row.epochs and row.epochs.n > 1
        else ", ".join(map(str, row.best_epochs)) or "-",
        status,
        " ".join(r[:12] for r in row.run_ids),
    ]


HEAD = [
    "trial",
    "Max Val Acc [95% CI]",
    "seeds",
    "n",
    "vs best",
    "best epoch",
    "status",
    "MLflow run id",
]


def header(rows: Sequence[ResultRow]) -> list[str]:
    """The table's columns: the parameters that vary, then the results."""
    return [*(rows[0].setting if rows else {}), *HEAD]


def table_cells(rows: Sequence[ResultRow]) -> list[list[str]]:
    """Each row's cells, as the table and markdown show them."""
    best = next((r for r in rows if r.accs), None)
    return [_cells(r, best) for r in rows]


def results_table(rows: Sequence[ResultRow], format: str) -> str:
    """The results table (one column per varying parameter, then Max Val Acc [95% CI], seeds,
    n, vs best, ...) as markdown, csv or json.

    Table and markdown show numbers as people read them (fmt); csv and json keep full precision.
    Max Val Acc is the mean over the seeds used (n) with its 95% interval, then each seed's
    value; "vs best" says whether a configuration can be told apart from the best one at this n
    (stats.versus_best).
    """
    head = header(rows)
    best = next((r for r in rows if r.accs), None)
    if format == "json":
        return json.dumps([r.as_dict() for r in rows], indent=2)
    if format == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow([*head[:-1], "max_val_acc", "ci95_low", "ci95_high", "std", "run ids"])
        for r in rows:
            s = r.summary
            writer.writerow(
                [
                    *r.setting.values(),
                    *_cells(r, best)[len(r.setting) : len(head) - 1],
                    *(
                        repr(x) if x is not None else ""
                        for x in (r.mean, s and s.low, s and s.high)
                    ),
                    repr(r.std),
                    " ".join(r.run_ids),
                ]
            )
        return out.getvalue()
    if format != "markdown":
        raise ValueError(f"unknown format {format!r}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [
        "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
        for cells in table_cells(rows)
    ]
    return "\n".join(lines) + "\n"


def failures(records: Sequence[Any]) -> list[str]:
    """Each failed (or invalid) trial's reason, whole (the table shows its first line)."""
    return [
        f"trial {r.trial} {r.status}: {r.error}"
        for r in sorted(records, key=lambda r: r.trial)
        if r.error and r.status != Status.DONE
    ]


def importance(rows: Sequence[ResultRow], sampled: Sequence[str]) -> dict[str, float] | None:
    """The sampled parameters' importance over the configurations' seed means (fANOVA)."""
    from tunekit.importance import fanova  # optuna, on first use

    measured = [r for r in rows if r.accs]
    return fanova(
        [(r.params, statistics.fmean(r.accs)) for r in measured],
        [p for p in sampled if all(p in r.params for r in measured)],
    )
