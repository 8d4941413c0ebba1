"""Everything tunekit shows a person: tables, progress and summaries (rich)."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from tunekit.spec import AUTO_PACK, fmt

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from tunekit.stats import Comparison, Summary
    from tunekit.plan import Plan
    from tunekit.spec import ExperimentSpec
    from tunekit.sweep import TrialState
    from tunekit.train import EpochMetrics, FitResult

# Not a terminal (CI, a log file): wide lines rather than tables folded at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True)

SHOWN_TRIALS = 60  # a plan larger than this is summarised by validate and --dry-run


def varying(params: Sequence[dict[str, Any]], ignore: set[str] = frozenset()) -> list[str]:
    """The keys whose value differs between the dicts, in the order they first appear."""
    keys = dict.fromkeys(k for p in params for k in p if k not in ignore)
    return [k for k in keys if len({repr(p.get(k)) for p in params}) > 1]


def plan_table(plan: Plan) -> Group:
    """The plan as validate and --dry-run show it: every trial, or a summary of a large plan."""
    s = plan.spec
    if plan.adaptive:
        r = s.search.repeats
        goal = ("val_acc at the last epoch" if r == 1 else
                f"the mean of its {r} seeds' max val_acc ({s.search.budget} proposals × {r} "
                f"seeds, each proposal's seeds one pack)")
        space = Table(title=f"{s.name}: TPE search, budget {plan.size} trial(s), maximising "
                            f"{goal}", title_justify="left")
        for col in ("field", "distribution"):
            space.add_column(col)
        for path, d in s.search.sample.items():
            space.add_row(path, f"{d.kind} {' '.join(fmt(v) for v in getattr(d, d.kind))}")
        return Group(space, Text(f"trials are numbered 0..{plan.size - 1} as TPE proposes them; "
                                 f"{s.sweep.max_concurrent or 2} at once"))
    trials = plan.trials
    cols = varying([t.params for t in trials])
    shown = trials if len(trials) <= SHOWN_TRIALS else [*trials[:10], *trials[-5:]]
    table = Table(title=f"{s.name}: {len(trials)} trial(s)", title_justify="left")
    table.add_column("trial", justify="right")
    for c in cols:
        table.add_column(c)
    table.add_column("epochs", justify="right")
    for i, t in enumerate(shown):
        if i == 10 and len(shown) < len(trials):
            table.add_row("…", *(["…"] * len(cols)), "")
        table.add_row(str(t.index), *(fmt(t.params.get(c, "")) for c in cols),
                      str(t.config.train.epochs))
    parts: list[Any] = [table]
    if len(shown) < len(trials):
        axes = [f"{k}: {len(v)} value(s)" for k, v in s.search.grid.items()]
        axes += [f"cases: {len(s.search.cases)}"] * bool(s.search.cases)
        axes += [f"samples: {s.search.num_samples}"] * (s.search.num_samples > 1)
        axes += [f"repeats: {s.search.repeats}"] * (s.search.repeats > 1)
        parts.append(Text(f"{len(trials) - len(shown)} trial(s) not shown; the plan is "
                          f"{' × '.join(axes)}. `--format json` lists every trial."))
    return Group(*parts)


def print_error(message: str) -> None:
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


class EpochProgress:
    """A progress bar over a trial's epochs that prints one line of metrics per epoch."""

    def __init__(self, title: str, epochs: int):
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("epochs"), TimeElapsedColumn(),
                                 console=console, transient=True)
        self.task = self.progress.add_task(title, total=epochs)

    def __enter__(self) -> EpochProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, m: EpochMetrics, _state: object = None) -> None:
        self.progress.console.print(
            f"epoch {m.epoch:>3}  train loss {m.train_loss:.4f} acc {m.train_acc:6.2f}%  "
            f"val loss {m.val_loss:.4f} acc {m.val_acc:6.2f}%  lr {m.lr:.3g}  "
            f"{m.seconds:5.1f}s  {m.images_per_s:,.0f} img/s", highlight=False)
        self.progress.advance(self.task)


def fit_summary(result: FitResult) -> str:
    total = sum(m.seconds for m in result.history)
    speed = sum(m.images_per_s * m.seconds for m in result.history) / total
    return (f"max val_acc {result.max_val_acc:.2f}% at epoch {result.best_epoch}/"
            f"{len(result.history)} · trained {total:.0f}s at {speed:,.0f} img/s · "
            f"{result.misclassified.total} test images wrong at the best epoch")


def resources_line(spec: ExperimentSpec, trials: int, asks: str) -> str:
    cap = spec.sweep.max_concurrent or "as many as the cluster's CPUs/GPUs allow"
    pack = {"auto": f"packs: auto (1 on CPUs; where trials get a GPU, sized on the driver's GPU, "
                    f"else up to {AUTO_PACK} trials per pack)",
            1: "no packs"}.get(spec.sweep.pack, f"packs of up to {spec.sweep.pack} trials of "
                                                "one shape, each pack one Ray trial")
    return (f"{trials} trial(s) × {spec.train.epochs} epoch(s); each trial asks for {asks}; "
            f"{spec.resources.cpus_per_trial} torch thread(s) per trial; {pack}; at once: {cap}")


def estimate_line(est: Any) -> str:
    """`measure.SweepEstimate` in words: the time, and what it was measured from."""
    steps = [step for step, _ in est.shapes]

    def span(values: list[float], fmt: str) -> str:
        low, high = format(min(values), fmt), format(max(values), fmt)
        return low if low == high else f"{low}–{high}"
    return (f"estimate: about {_duration(est.seconds)} on this machine ({est.units} Ray "
            f"trial(s) of {est.epochs} epoch(s), {est.at_once} at a time; timed here on "
            f"{steps[0].device}, a few steps of each of {len(steps)} trial shape(s): "
            f"{span([s.seconds * 1000 for s in steps], ',.1f')} ms per step of "
            f"{span([s.k * s.batch for s in steps], ',')} images, "
            f"{span([s.images_per_s for s in steps], ',.0f')} img/s)")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class SweepView:
    """A running sweep as a person follows it. Implements sweep.Listener.

    On a terminal: a live view of the counts, each running trial's epoch and val_acc and the best
    so far, with a line as each trial ends. Elsewhere (a log file, nohup, CI, a Ray job): a plain
    line per finished epoch and per finished trial, and a summary line every `every` seconds.
    """

    def __init__(self, name: str, total: int, epochs: int, every: float = 60.0):
        self.name, self.total, self.epochs, self.every = name, total, epochs, every
        self.trials: dict[int, TrialState] = {}
        self.warned: set[int] = set()  # trials whose resource warning was shown
        self.asks = ""
        self.started = self.last_summary = time.monotonic()
        self.live = Live(self._render(), console=console, refresh_per_second=4, transient=True) \
            if console.is_terminal else None

    def __enter__(self) -> SweepView:
        if self.live:
            self.live.start()
        else:
            self._say(f"{self.name}: {self.total} trial(s) of {self.epochs} epoch(s)")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.live.stop()
        else:
            self._say(self._summary())

    def _say(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        (self.live.console if self.live else console).print(
            line if self.live else f"{stamp} {line}", highlight=False, soft_wrap=True)

    def _update(self, trial: TrialState) -> None:
        self.trials[trial.index] = trial
        if self.live:
            self.live.update(self._render())
        elif time.monotonic() - self.last_summary >= self.every:
            self.last_summary = time.monotonic()
            self._say(self._summary())

    def sweep_started(self, joined: str, asks: Any) -> None:
        self.asks = f"each trial asks for {asks}"
        self._say(f"{self.name} runs on {joined}; {self.asks}")
        if asks.warning:
            self._say(f"WARNING: {asks.warning}")

    def trial_started(self, trial: TrialState) -> None:
        self._update(trial)

    def trial_retried(self, trial: TrialState) -> None:
        done = trial.history[-1]["epoch"] if trial.history else 0
        reason = (trial.error or "").splitlines()[0] if trial.error else "no reason recorded"
        self._say(f"{'[yellow]↻[/]' if self.live else 'retrying:'} trial {trial.index} "
                  f"({trial.label}) failed after epoch {done} ({reason}); retry {trial.retries}, "
                  "from its last checkpoint")
        self._update(trial)

    def epoch_done(self, trial: TrialState, metrics: dict[str, Any]) -> None:
        if trial.warning and trial.index not in self.warned:
            self.warned.add(trial.index)
            self._say(f"{'[bold yellow]! ' if self.live else 'WARNING: '}trial {trial.index} "
                      f"({trial.label}): {trial.warning}{'[/]' if self.live else ''}")
        if not self.live:
            self._say(f"trial {trial.index} ({trial.label}) epoch {metrics['epoch']}/{self.epochs}"
                      f": val_acc {metrics['val_acc']:.2f}%, train loss "
                      f"{metrics['train_loss']:.4f}, {metrics['seconds']:.1f}s")
        self._update(trial)

    def trial_ended(self, trial: TrialState) -> None:
        if trial.status in ("failed", "invalid"):
            mark = "[red]✗[/]" if self.live else f"{trial.status}:"
            self._say(f"{mark} trial {trial.index} ({trial.label}): {trial.error}")
        else:
            best = trial.best
            acc = (f"max val_acc {best['val_acc']:.2f}% (epoch {best['epoch']})" if best
                   else "finished in an earlier session")
            mark = ("[green]✓[/]" if trial.status == "done" else "[yellow]■[/]") if self.live \
                else f"{trial.status}:"
            self._say(f"{mark} trial {trial.index} ({trial.label}): {acc}")
        self._update(trial)

    def _counts(self) -> dict[str, list[TrialState]]:
        return {s: [t for t in self.trials.values() if t.status == s]
                for s in ("running", "done", "stopped", "failed", "invalid")}

    def _summary(self) -> str:
        by = self._counts()
        best = max((t for t in self.trials.values() if t.best), default=None,
                   key=lambda t: t.best["val_acc"])
        minutes = (time.monotonic() - self.started) / 60
        stopped = f"{len(by['stopped'])} stopped early · " if by["stopped"] else ""
        invalid = f"{len(by['invalid'])} invalid · " if by["invalid"] else ""
        return (f"{self.name}: {len(by['done'])} done · {stopped}{len(by['running'])} running · "
                f"{len(by['failed'])} failed · {invalid}{self.total} in all · "
                f"{minutes:.1f} min" + (f" · best val_acc {best.best['val_acc']:.2f}% "
                                         f"(trial {best.index})" if best else ""))

    def _render(self) -> Group:
        table = Table(box=None)
        for col in ("trial", "setting", "epoch", "val_acc", "on"):
            table.add_column(col)
        for t in self._counts()["running"]:
            last = t.history[-1] if t.history else None
            table.add_row(str(t.index), t.label, f"{last['epoch'] if last else 0}/{self.epochs}",
                          f"{last['val_acc']:.2f}%" if last else "", t.on)
        return Group(Text(self._summary()), Text(self.asks, style="dim"), table)


def sweep_outcome(name: str, rows: Sequence[ResultRow], states: Sequence[TrialState],
                  planned: int, interrupted: bool, resume_command: str, path: str,
                  claims: Sequence[Any] = (), sampled: Sequence[str] = ()) -> int:
    """Print how a sweep ended (results, statistics, what failed, how to carry on); its exit
    code: 130 interrupted, 1 a trial failed, else 0 (invalid TPE proposals are not failures)."""
    console.print(results_table(f"{name}: max val_acc per configuration", rows))
    for line in findings(rows, claims, sampled):
        console.print(line, highlight=False, soft_wrap=True)
    failed = [t for t in states if t.status == "failed"]
    invalid = [t for t in states if t.status == "invalid"]
    unfinished = interrupted or len(states) < planned or any(
        t.status == "unfinished" for t in states)
    if unfinished:
        console.print(f"[yellow]interrupted:[/] continue with: {resume_command}", highlight=False,
                      soft_wrap=True)
    if invalid:  # a proposal's seeds are invalid together: count proposals
        proposals = {t.proposal if t.proposal is not None else t.index for t in invalid}
        seeds = len(invalid) // len(proposals)
        console.print(f"[yellow]{len(proposals)} of {planned // seeds} TPE proposal(s) broke a "
                      "spec rule and were not trained[/] (see the table)", highlight=False)
    warned = [t for t in states if t.warning]
    if warned:  # a GPU paid for and unused, or a GPU node trained on its CPU
        console.print(f"[yellow]{len(warned)} trial(s) did not train where their resources say"
                      f"[/], e.g. trial {warned[0].index}: {warned[0].warning}", highlight=False,
                      soft_wrap=True)
    if failed:
        console.print(f"[red]{len(failed)} of {planned} trial(s) failed:[/]", highlight=False)
        folder = path.partition("?")[0]  # a URI's options are not part of its files' paths
        for t in failed:  # a pack member's Ray folder is its pack's (pack_NNNN)
            where = t.path.rstrip("/").rsplit("/", 1)[-1] if t.path else f"trial_{t.index:04d}"
            alone = not (where.startswith("pack_")  # a diverged member raised nothing
                         and (t.error or "").startswith("DivergedError"))
            console.print(f"  trial {t.index} ({t.label}): {t.error}" + (
                f"\n    traceback: {folder}/{where}/error.txt" if alone else ""),
                highlight=False, soft_wrap=True)
    return 130 if unfinished else 1 if failed else 0


# -- results rebuilt from MLflow ----------------------------------------------------------------

SEED_COLUMNS = {"model.norm": "Norm", "train.l1": "L1", "train.l2": "L2",
                "train.batch_size": "Batch"}
IGNORED = {"train.seed", "data.root"}  # never a reason to tell two configurations apart


@dataclass
class ResultRow:
    """One configuration: its trials (several when repeated with other seeds). Only finished
    trials with a finite max val_acc are in `accs` (the values the statistics use); the others
    are in `left_out`, with why."""
    setting: dict[str, str]  # column -> value: the seed's four, then other params that vary
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
        return {**self.setting, "trials": self.trials, "max_val_acc": self.mean, "std": self.std,
                "ci95": [s.low, s.high] if s and s.low is not None else None,
                "ci95_cut_at_bounds": bool(s and s.clipped), "all_seeds_equal": bool(s and s.equal),
                "n": len(self.accs), "accs": self.accs, "trials_used": self.used,
                "left_out": self.left_out, "best_epochs": self.best_epochs,
                "best_epoch_mean": self.epochs.mean if self.epochs else None,
                "best_epoch_ci95": [self.epochs.low, self.epochs.high]
                if self.epochs and self.epochs.low is not None else None,
                "p_vs_best": v.p if v else None, "p_vs_best_holm": v.p_holm if v else None,
                "worse_than_best": v.worse if v else None,
                "gap_told_apart": v.gap if v else None, "status": self.status,
                "run_ids": self.run_ids, "errors": self.errors}


ACCURACY = (0.0, 100.0)  # what an accuracy interval may span


def result_rows(runs: Sequence[Any]) -> list[ResultRow]:
    """Group runs (records.RunRecord) by everything but the seed, with each configuration's mean,
    95% interval and comparison with the best (stats); best mean max val_acc first. A trial's
    value counts only if it finished (status done) and is finite."""
    from tunekit import stats
    others = varying([r.params for r in runs], IGNORED | set(SEED_COLUMNS))
    columns = list(SEED_COLUMNS) + others
    groups: dict[tuple, ResultRow] = {}
    for r in runs:
        key = tuple(r.params.get(k, "") for k in columns)
        row = groups.setdefault(key, ResultRow(
            {SEED_COLUMNS.get(k, k): r.params.get(k, "") for k in columns},
            {k: r.params.get(k, "") for k in columns}, [], [], [], [], [], []))
        value = r.max_val_acc
        if r.status != "done":
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


def _interval(s: Summary | None, digits: int) -> str:
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
    return (f"not distinguishable at n = {len(row.accs)} (p={v.p_holm:.2g}; a gap of about "
            f"{v.gap:.2f} would be)")


def _seeds(row: ResultRow) -> str:
    """Each seed's value, as a strip beside the mean."""
    return " ".join(f"{a:.2f}" for a in row.accs) or "-"


def _cells(row: ResultRow, best: ResultRow | None = None) -> list[str]:
    error = row.errors[-1].strip().splitlines()[0] if row.errors else ""  # the whole is in MLflow
    status = row.status + (f": {error[:77]}…" if len(error) > 80 else f": {error}" if error else "")
    return [*map(fmt, row.setting.values()), ", ".join(map(str, row.trials)),
            _interval(row.summary, 2), _seeds(row), str(len(row.accs)), _versus(row, best),
            _interval(row.epochs, 1) if row.epochs and row.epochs.n > 1
            else ", ".join(map(str, row.best_epochs)) or "-",
            status, " ".join(r[:12] for r in row.run_ids)]


HEAD = ["trial", "Max Val Acc [95% CI]", "seeds", "n", "vs best", "best epoch", "status",
        "MLflow run id"]


def results_table(title: str, rows: Sequence[ResultRow], format: str = "table") -> Table | str:
    """The seed's table (Norm | L1 | L2 | Batch | Max Val Acc ...) as rich, markdown, csv or json.

    Table and markdown show numbers as people read them (fmt); csv and json keep full precision.
    Max Val Acc is the mean over the seeds used (n) with its 95% interval, then each seed's
    value; "vs best" says whether a configuration can be told apart from the best one at this n
    (stats.versus_best).
    """
    head = [*(rows[0].setting if rows else SEED_COLUMNS.values()), *HEAD]
    best = next((r for r in rows if r.accs), None)
    if format == "json":
        return json.dumps([r.as_dict() for r in rows], indent=2)
    if format == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow([*head[:-1], "max_val_acc", "ci95_low", "ci95_high", "std", "run ids"])
        for r in rows:
            s = r.summary
            writer.writerow([*r.setting.values(), *_cells(r, best)[len(r.setting):len(head) - 1],
                             *(repr(x) if x is not None else "" for x in (
                                 r.mean, s and s.low, s and s.high)), repr(r.std),
                             " ".join(r.run_ids)])
        return out.getvalue()
    if format == "markdown":
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(r, best)) + " |"
                  for r in rows]
        return "\n".join(lines) + "\n"
    table = Table(title=title, title_justify="left")
    for h in head:
        table.add_column(h, justify="right" if h in ("n",) else "left")
    for r in rows:
        table.add_row(*_cells(r, best))
    return table


def failures(records: Sequence[Any]) -> list[str]:
    """Each failed (or invalid) trial's reason, whole (the table shows its first line)."""
    return [f"trial {r.trial} {r.status}: {r.error}"
            for r in sorted(records, key=lambda r: r.trial) if r.error and r.status != "done"]


def importance(rows: Sequence[ResultRow], sampled: Sequence[str]) -> dict[str, float] | None:
    """The sampled parameters' importance over the configurations' seed means (stats)."""
    from tunekit import stats
    measured = [r for r in rows if r.accs]
    return stats.importance([(r.params, r.mean) for r in measured],
                            [p for p in sampled if all(p in r.params for r in measured)])


def findings(rows: Sequence[ResultRow], claims: Sequence[Any] = (),
             sampled: Sequence[str] = ()) -> list[str]:
    """The statistics of a results table in plain sentences (percentage points throughout);
    `claims` (spec.Claim) are each tested and answered; `sampled` (a TPE or random search's
    parameters) get their importance."""
    from tunekit import stats
    measured = [r for r in rows if r.accs]
    if not measured:
        return []
    left = [x for r in rows for x in r.left_out]
    lines = ([f"Left out of every mean and test ({len(left)}): " + ", ".join(left) + "."]
             if left else [])
    counts = sorted({len(r.accs) for r in measured})
    if counts[-1] < 2:
        return lines + [
            "One seed per configuration: no intervals, and one seed cannot separate "
            "configurations. Repeat seeds (a grid's `search.repeats: 3` or more) to tell "
            "real differences from seed-to-seed noise."]
    best = measured[0]
    n = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
    lines.append(f"n = {n} seeds per configuration (the values used); intervals are 95% t "
                 "intervals of the mean max val_acc, in percentage points.")
    if counts[0] == 2:
        lines.append(f"With n = 2 a t interval has 1 degree of freedom: it is ±{stats._t(1):.1f} "
                     "standard errors wide, about 5 times a normal one. Use `search.repeats: 3` "
                     "or more.")
    if any(r.summary and r.summary.clipped for r in measured):
        lines.append("† An accuracy's t interval ran past 0–100 % and is cut there: with so few "
                     "seeds it is only a rough guide.")
    if any(r.epochs and r.epochs.clipped for r in measured):
        lines.append("† A best epoch's t interval ran past the epochs trained and is cut there.")
    if any(r.summary and r.summary.equal for r in measured):
        lines.append("All seeds equal: a configuration whose seeds all scored the same has no "
                     "interval (no spread to measure).")
    same = [r for r in measured[1:] if r.vs_best and r.vs_best.p_holm is not None
            and not r.vs_best.worse]
    worse = [r for r in measured[1:] if r.vs_best and r.vs_best.worse]
    if len(measured) == 1:
        lines.append(f"Only one configuration has values: {best.label} at "
                     f"{_interval(best.summary, 2)}; nothing to compare it with.")
    else:
        lines.append(f"Best: {best.label} at {_interval(best.summary, 2)}. It was picked from these "
                     "same results, so its mean is likely a little high (the winner's curse), and "
                     "the tests below do not correct for that. " + (
                         f"Not distinguishable from it at this n (Welch t-test against the best, "
                         f"Holm-corrected for {len(same) + len(worse)} comparisons, α = "
                         f"{stats.ALPHA}; this does not mean equal): "
                         + ("; ".join(f"{r.label} (p = {r.vs_best.p_holm:.2g}; a gap of about "
                                      f"{r.vs_best.gap:.2f} would be)" for r in same) or "none")
                         + "."
                         + (" Worse than the best: " + "; ".join(
                             f"{r.label} (p = {r.vs_best.p_holm:.2g})" for r in worse) + "."
                            if worse else "")))
    factors = [k for k in best.params if len({r.params[k] for r in measured}) > 1]
    trials = [({k: r.params[k] for k in best.params}, acc)
              for r in sorted(measured, key=lambda r: min(r.trials)) for acc in r.accs]
    lines += [_claim_line(c, trials, list(best.params)) for c in claims]
    found = importance(rows, sampled) if sampled else None
    if found:
        lines.append(f"Parameter importance over {len(measured)} configurations' seed means "
                     "(optuna's fANOVA: a random-forest model's estimate of how much of the "
                     "spread each parameter explains, not a test): " + ", ".join(
                         f"{SEED_COLUMNS.get(k, k)} {v:.2f}" for k, v in found.items()) + ".")
    grid = math.prod(len({r.params[k] for r in measured}) for k in factors) == len(measured)
    if not factors or not grid:
        return lines
    trials = [({k: p[k] for k in factors}, acc) for p, acc in trials]  # levels in plan order
    name = {k: SEED_COLUMNS.get(k, k) for k in factors}
    pairs = stats.interactions(trials, factors) if len(factors) <= 4 else []
    ps = {i.factors: i.p for i in pairs}
    for e in stats.main_effects(trials, factors, ps):
        caveat = (f" Read with care: {e.caveat.replace(e.factor, name[e.factor])}, so this "
                  "average hides an effect that changes with the other factor."
                  if e.caveat else "")
        lines.append(f"Main effect of {name[e.factor]}: {fmt(e.level)} − {fmt(e.reference)} = "
                     f"{_difference(e)}, the mean of its cell means over the other factors"
                     f"{f' (df {e.df:.1f})' if e.df else ''}.{caveat}")
    for i in pairs:
        a, b = (name[f] for f in i.factors)
        test = (f"interaction F = {i.f:.2f}, p = {i.p:.2g}" if i.p is not None
                else "no test: too few seeds or no spread")
        at = dict.fromkeys(e.at[1] for e in i.effects)
        by_level = "; ".join(f"at {b}={fmt(lv)}: " + ", ".join(
            f"{fmt(e.level)} − {fmt(e.reference)} = {_difference(e)}"
            for e in i.effects if e.at[1] == lv) for lv in at)
        lines.append(f"{a} × {b} ({test}): {by_level}.")
    return lines


def _claim_line(claim: Any, trials: Sequence[tuple[dict[str, str], float]],
                factors: list[str]) -> str:
    from tunekit import stats

    def norm(where: dict[str, Any] | None) -> dict[str, str] | None:
        return None if where is None else {k: fmt(v) for k, v in where.items()}
    rows = [({k: fmt(_number(v)) for k, v in p.items()}, acc) for p, acc in trials]
    r = stats.claim(rows, factors, norm(claim.better), norm(claim.than), norm(claim.at),
                    norm(claim.more_than_at))
    what = (f"({_side(claim.better)} − {_side(claim.than)}"
            + (f" at {_side(claim.at)}" if claim.at else "")
            + (f") − ({_side(claim.better)} − {_side(claim.than)} at "
               f"{_side(claim.more_than_at)}" if claim.more_than_at else "") + ") > 0")
    if r is None:
        return f"Claim: “{claim.text}” {what}: no trials on one side; not tested."
    interval = f" [{r.low:+.2f}, {r.high:+.2f}]" if r.low is not None else ""
    p = f", one-sided p = {r.p:.2g} in the stated direction" if r.p is not None else ""
    wheres = [_side(claim.at) or "overall", _side(claim.more_than_at or {})]
    won = ", ".join(f"{w:.2f} at {where}" for where, (_, w) in zip(wheres, r.improvement))
    return (f"Claim: “{claim.text}” {what}: estimate {r.estimate:+.2f}{interval}{p}; "
            f"P({_side(claim.better)} > {_side(claim.than)}) over seed pairs {won}. "
            f"Verdict: {r.verdict}.")


def _number(value: str) -> Any:
    """An MLflow parameter (a string) as the spec would have written it, for fmt."""
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value and "e" not in value else number


def _side(where: dict[str, Any]) -> str:
    return ", ".join(f"{SEED_COLUMNS.get(k, k)}={fmt(v)}" for k, v in where.items())


def _difference(e: Any) -> str:
    if e.low is None:
        return f"{e.difference:+.2f}"
    return f"{e.difference:+.2f} [{e.low:+.2f}, {e.high:+.2f}]"


# -- plots ----------------------------------------------------------------------------------

GRAPHS = {"train_loss": "Training loss", "val_loss": "Test loss",
          "train_acc": "Training accuracy (%)", "val_acc": "Test accuracy (%)"}


def legend_labels(params: Sequence[dict[str, str]]) -> list[str]:
    """One label per run, made of the parameters that vary between the runs."""
    keys = varying(params, {"data.root"})
    short = {k: SEED_COLUMNS.get(k, k.split(".")[-1]) for k in keys}
    return [", ".join(f"{short[k]}={fmt(p.get(k))}" for k in keys) or "trial" for p in params]


def colours(n: int) -> list[Any]:
    """n colours, none repeated: matplotlib's 10 up to 10 curves, tab20 up to 20, then a ramp."""
    from matplotlib import colormaps
    if n <= 10:
        return [f"C{i}" for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["turbo"](i / (n - 1)) for i in range(n)]


def _draw(ax: Any, key: str, curves: Sequence[tuple[str, Sequence[dict[str, Any]]]]) -> None:
    for (label, history), colour in zip(curves, colours(len(curves))):
        ax.plot([m["epoch"] for m in history], [m[key] for m in history], marker=".", label=label,
                color=colour)
    from matplotlib.ticker import MaxNLocator
    ax.set(title=GRAPHS[key], xlabel="epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.grid(alpha=0.3)


def curve_figures(curves: Sequence[tuple[str, Sequence[dict[str, Any]]]]) -> dict[str, Figure]:
    """The seed's four comparison graphs: one figure per metric, one line per (label, history)."""
    from matplotlib.figure import Figure
    figures = {}
    for key in GRAPHS:
        figures[key] = Figure(figsize=(8, 5), layout="constrained")
        ax = figures[key].add_subplot()
        _draw(ax, key, curves)
        if curves:
            ax.legend(fontsize="small")
    return figures


def _to_data(ax: Any, values: Sequence[float]) -> None:
    """Keep the y axis to the data's range (a wide interval band must not set it)."""
    finite = [v for v in values if math.isfinite(v)]
    if finite:
        low, high = min(finite), max(finite)
        pad = (high - low) * 0.08 or max(abs(high) * 0.01, 0.01)
        ax.set_ylim(low - pad, high + pad)


def band_figures(groups: Sequence[tuple[str, Sequence[Sequence[dict[str, Any]]]]]
                 ) -> dict[str, Figure]:
    """The four graphs for configurations repeated over seeds: per configuration (label, its
    trials' histories) the mean curve, each seed's values as points, and, with 2 or more seeds
    and 2 or more epochs, its 95% interval as a band. The y axis follows the data, not the bands."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from tunekit.stats import summarize
    figures = {}
    palette = colours(len(groups))
    for key in GRAPHS:
        fig = figures[key] = Figure(figsize=(8, 5), layout="constrained")
        ax = fig.add_subplot()
        shown: list[float] = []
        bounds = ACCURACY if key.endswith("acc") else (0.0, math.inf)
        for (label, histories), colour in zip(groups, palette):
            points = {}
            for h in histories:
                for m in h:
                    if math.isfinite(m.get(key, math.nan)):
                        points.setdefault(m["epoch"], []).append(m[key])
            epochs = sorted(points)
            at = [summarize(points[e], bounds) for e in epochs]
            n = max((s.n for s in at), default=0)
            ax.plot(epochs, [s.mean for s in at], marker="o" if len(epochs) == 1 else ".",
                    color=colour, label=f"{label} (n={n})")
            seeds = [(e, v) for e in epochs for v in points[e]]
            ax.scatter([e for e, _ in seeds], [v for _, v in seeds], s=9, color=colour, alpha=0.5,
                       linewidths=0)
            shown += [v for _, v in seeds]
            if n > 1 and len(epochs) > 1:
                ax.fill_between(epochs, [s.low if s.low is not None else s.mean for s in at],
                                [s.high if s.high is not None else s.mean for s in at],
                                color=colour, alpha=0.2, linewidth=0)
        single = all(len({m["epoch"] for h in hs for m in h}) <= 1 for _, hs in groups)
        ax.set(title=GRAPHS[key] + (" — each seed and the mean" if single else
                                    " — mean over seeds, 95% band, each seed"), xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _to_data(ax, shown)
        ax.grid(alpha=0.3)
        if groups:
            ax.legend(fontsize="small")
    return figures


def seeds_figure(rows: Sequence[ResultRow]) -> Figure:
    """Max val_acc per configuration: each seed as a point beside the mean and its interval."""
    from matplotlib.figure import Figure
    measured = [r for r in rows if r.accs]
    fig = Figure(figsize=(8, 1.2 + 0.45 * max(len(measured), 1)), layout="constrained")
    ax = fig.add_subplot()
    for y, (r, colour) in enumerate(zip(measured, colours(len(measured)))):
        s = r.summary
        if s is not None and s.low is not None:
            ax.plot([s.low, s.high], [y, y], color=colour, linewidth=2, alpha=0.6)
        ax.plot([r.mean], [y], marker="|", markersize=16, color=colour)
        ax.scatter(r.accs, [y + 0.18] * len(r.accs), s=16, color=colour)
    ax.set_yticks(range(len(measured)), [r.label for r in measured], fontsize="small")
    ax.invert_yaxis()  # best on top, as in the table
    ax.set(title="Max val_acc: each seed (dots), the mean (|) and its 95% interval",
           xlabel="max val_acc (%)")
    _to_data_x(ax, [a for r in measured for a in r.accs])
    ax.grid(alpha=0.3, axis="x")
    return fig


def _to_data_x(ax: Any, values: Sequence[float]) -> None:
    if values:
        low, high = min(values), max(values)
        pad = (high - low) * 0.15 or 0.05
        ax.set_xlim(low - pad, high + pad)


def curves_figure(curves: Sequence[tuple[str, Sequence[dict[str, Any]]]]) -> Figure:
    """The four graphs as panels of one figure (a single trial's artifact)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 8), layout="constrained")
    for i, key in enumerate(GRAPHS):
        _draw(fig.add_subplot(2, 2, i + 1), key, curves)
    return fig


def misclassified_figure(images: Any, labels: Any, preds: Any, title: str = "",
                         count: int = 25) -> Figure:
    """A 5×5 grid of misclassified digits, each titled 'predicted (true actual)', in type that
    stays readable when the grid is shown at a page's width."""
    from matplotlib.figure import Figure
    images = images.numpy() if hasattr(images, "numpy") else images
    fig = Figure(figsize=(7, 8), layout="constrained")
    fig.suptitle(title, fontsize=12)
    for i in range(min(count, len(images))):
        ax = fig.add_subplot(5, 5, i + 1)
        ax.imshow(images[i], cmap="gray_r")
        ax.set_title(f"{int(preds[i])} (true {int(labels[i])})", fontsize=12)
        ax.axis("off")
    return fig
