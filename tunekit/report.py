"""What tunekit shows a person on a terminal (rich): the plan, progress, the live view of a
sweep, the results table and how a sweep ended. A leaf: only the CLI imports it."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from tunekit import results, wire
from tunekit.findings import findings
from tunekit.packing import AUTO_PACK
from tunekit.results import ResultRow, varying
from tunekit.text import fmt
from tunekit.trials import Status

if TYPE_CHECKING:
    from tunekit.cluster import Ask
    from tunekit.measure import SweepEstimate
    from tunekit.plan import Plan
    from tunekit.spec import Claim, ExperimentSpec
    from tunekit.train import EpochMetrics, FitResult
    from tunekit.trials import TrialState

# Not a terminal (CI, a log file): wide lines rather than tables folded at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True)

SHOWN_TRIALS = 60  # a plan larger than this is summarised by validate and --dry-run


def plan_table(plan: Plan) -> Group:
    """The plan as validate and --dry-run show it: every trial, or a summary of a large plan."""
    s = plan.spec
    if plan.adaptive:
        r = s.search.repeats
        goal = (
            "val_acc at the last epoch"
            if r == 1
            else f"the mean of its {r} seeds' max val_acc ({s.search.budget} proposals × {r} "
            f"seeds, each proposal's seeds one pack)"
        )
        space = Table(
            title=f"{s.name}: TPE search, budget {plan.size} trial(s), maximising {goal}",
            title_justify="left",
        )
        for col in ("field", "distribution"):
            space.add_column(col)
        for path, d in s.search.sample.items():
            space.add_row(path, f"{d.kind} {' '.join(fmt(v) for v in getattr(d, d.kind))}")
        return Group(
            space,
            Text(
                f"trials are numbered 0..{plan.size - 1} as TPE proposes them; "
                f"{s.sweep.max_concurrent or 2} at once"
            ),
        )
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
        table.add_row(
            str(t.index), *(fmt(t.params.get(c, "")) for c in cols), str(t.config.train.epochs)
        )
    parts: list[Any] = [table]
    if len(shown) < len(trials):
        axes = [f"{k}: {len(v)} value(s)" for k, v in s.search.grid.items()]
        axes += [f"cases: {len(s.search.cases)}"] * bool(s.search.cases)
        axes += [f"samples: {s.search.num_samples}"] * (s.search.num_samples > 1)
        axes += [f"repeats: {s.search.repeats}"] * (s.search.repeats > 1)
        parts.append(
            Text(
                f"{len(trials) - len(shown)} trial(s) not shown; the plan is "
                f"{' × '.join(axes)}. `--format json` lists every trial."
            )
        )
    return Group(*parts)


def print_error(message: str) -> None:
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


class EpochProgress:
    """A progress bar over a trial's epochs that prints one line of metrics per epoch."""

    def __init__(self, title: str, epochs: int):
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("epochs"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
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
            f"{m.seconds:5.1f}s  {m.images_per_s:,.0f} img/s",
            highlight=False,
        )
        self.progress.advance(self.task)


def fit_summary(result: FitResult) -> str:
    total = sum(m.seconds for m in result.history)
    speed = sum(m.images_per_s * m.seconds for m in result.history) / total
    return (
        f"max val_acc {result.max_val_acc:.2f}% at epoch {result.best_epoch}/"
        f"{len(result.history)} · trained {total:.0f}s at {speed:,.0f} img/s · "
        f"{result.misclassified.total} test images wrong at the best epoch"
    )


def resources_line(spec: ExperimentSpec, trials: int, asks: str) -> str:
    cap = spec.sweep.max_concurrent or "as many as the cluster's CPUs/GPUs allow"
    pack = {
        "auto": f"packs: auto (1 on CPUs; where trials get a GPU, sized on the driver's GPU, "
        f"else up to {AUTO_PACK} trials per pack)",
        1: "no packs",
    }.get(
        spec.sweep.pack,
        f"packs of up to {spec.sweep.pack} trials of one shape, each pack one Ray trial",
    )
    return (
        f"{trials} trial(s) × {spec.train.epochs} epoch(s); each trial asks for {asks}; "
        f"{spec.resources.cpus_per_trial} torch thread(s) per trial; {pack}; at once: {cap}"
    )


def estimate_line(est: SweepEstimate) -> str:
    """`measure.SweepEstimate` in words: the time, and what it was measured from."""
    steps = [step for step, _ in est.shapes]

    def span(values: list[float], fmt: str) -> str:
        low, high = format(min(values), fmt), format(max(values), fmt)
        return low if low == high else f"{low}–{high}"

    return (
        f"estimate: about {_duration(est.seconds)} on this machine ({est.units} Ray "
        f"trial(s) of {est.epochs} epoch(s), {est.at_once} at a time; timed here on "
        f"{steps[0].device}, a few steps of each of {len(steps)} trial shape(s): "
        f"{span([s.seconds * 1000 for s in steps], ',.1f')} ms per step of "
        f"{span([s.k * s.batch for s in steps], ',')} images, "
        f"{span([s.images_per_s for s in steps], ',.0f')} img/s)"
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class SweepView:
    """A running sweep as a person follows it. Implements trials.Listener.

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
        self.live = (
            Live(self._render(), console=console, refresh_per_second=4, transient=True)
            if console.is_terminal
            else None
        )
        self.shown = False

    def __enter__(self) -> SweepView:
        return self  # it shows itself when the sweep starts: nothing if it is refused first

    def __exit__(self, *exc: object) -> None:
        if not self.shown:
            return
        if self.live:
            self.live.stop()
        else:
            self._say(self._summary())

    def _say(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        (self.live.console if self.live else console).print(
            line if self.live else f"{stamp} {line}", highlight=False, soft_wrap=True
        )

    def _update(self, trial: TrialState) -> None:
        self.trials[trial.index] = trial
        if self.live:
            self.live.update(self._render())
        elif time.monotonic() - self.last_summary >= self.every:
            self.last_summary = time.monotonic()
            self._say(self._summary())

    def sweep_started(self, joined: str, asks: Ask) -> None:
        self.shown = True
        if self.live:
            self.live.start()
        else:
            self._say(f"{self.name}: {self.total} trial(s) of {self.epochs} epoch(s)")
        self.asks = f"each trial asks for {asks}"
        self._say(f"{self.name} runs on {joined}; {self.asks}")
        if asks.warning:
            self._say(f"WARNING: {asks.warning}")

    def trial_started(self, trial: TrialState) -> None:
        self._update(trial)

    def trial_retried(self, trial: TrialState) -> None:
        done = trial.history[-1]["epoch"] if trial.history else 0
        reason = (trial.error or "").splitlines()[0] if trial.error else "no reason recorded"
        self._say(
            f"{'[yellow]↻[/]' if self.live else 'retrying:'} trial {trial.index} "
            f"({trial.label}) failed after epoch {done} ({reason}); retry {trial.retries}, "
            "from its last checkpoint"
        )
        self._update(trial)

    def epoch_done(self, trial: TrialState, metrics: dict[str, Any]) -> None:
        if trial.warning and trial.index not in self.warned:
            self.warned.add(trial.index)
            self._say(
                f"{'[bold yellow]! ' if self.live else 'WARNING: '}trial {trial.index} "
                f"({trial.label}): {trial.warning}{'[/]' if self.live else ''}"
            )
        if not self.live:
            self._say(
                f"trial {trial.index} ({trial.label}) epoch {metrics['epoch']}/{self.epochs}"
                f": val_acc {metrics['val_acc']:.2f}%, train loss "
                f"{metrics['train_loss']:.4f}, {metrics['seconds']:.1f}s"
            )
        self._update(trial)

    def trial_ended(self, trial: TrialState) -> None:
        if trial.status in (Status.FAILED, Status.INVALID):
            mark = "[red]✗[/]" if self.live else f"{trial.status}:"
            self._say(f"{mark} trial {trial.index} ({trial.label}): {trial.error}")
        else:
            best = trial.best
            acc = (
                f"max val_acc {best['val_acc']:.2f}% (epoch {best['epoch']})"
                if best
                else "finished in an earlier session"
            )
            mark = (
                ("[green]✓[/]" if trial.status == Status.DONE else "[yellow]■[/]")
                if self.live
                else f"{trial.status}:"
            )
            self._say(f"{mark} trial {trial.index} ({trial.label}): {acc}")
        self._update(trial)

    def finished(self, states: Sequence[TrialState]) -> None:
        """Take the sweep's final states for the closing summary: a resumed sweep's trials that
        finished before the resume too, which Ray Tune restores without an event."""
        self.trials.update({t.index: t for t in states})

    def _counts(self) -> dict[str, list[TrialState]]:
        return {
            s: [t for t in self.trials.values() if t.status == s]
            for s in (Status.RUNNING, Status.DONE, Status.STOPPED, Status.FAILED, Status.INVALID)
        }

    def _summary(self) -> str:
        by = self._counts()
        best = max(
            ((t, b) for t in self.trials.values() if (b := t.best) is not None),
            default=None,
            key=lambda pair: pair[1]["val_acc"],
        )
        minutes = (time.monotonic() - self.started) / 60
        stopped = f"{len(by['stopped'])} stopped early · " if by["stopped"] else ""
        invalid = f"{len(by['invalid'])} invalid · " if by["invalid"] else ""
        return (
            f"{self.name}: {len(by['done'])} done · {stopped}{len(by['running'])} running · "
            f"{len(by['failed'])} failed · {invalid}{self.total} in all · "
            f"{minutes:.1f} min"
            + (f" · best val_acc {best[1]['val_acc']:.2f}% (trial {best[0].index})" if best else "")
        )

    def _render(self) -> Group:
        table = Table(box=None)
        for col in ("trial", "setting", "epoch", "val_acc", "on"):
            table.add_column(col)
        for t in self._counts()["running"]:
            last = t.history[-1] if t.history else None
            table.add_row(
                str(t.index),
                t.label,
                f"{last['epoch'] if last else 0}/{self.epochs}",
                f"{last['val_acc']:.2f}%" if last else "",
                t.on,
            )
        return Group(Text(self._summary()), Text(self.asks, style="dim"), table)


def sweep_outcome(
    name: str,
    rows: Sequence[ResultRow],
    states: Sequence[TrialState],
    planned: int,
    interrupted: bool,
    resume_command: str,
    path: str,
    claims: Sequence[Claim] = (),
    sampled: Sequence[str] = (),
) -> int:
    """Print how a sweep ended (results, statistics, what failed, how to carry on); its exit
    code: 130 interrupted, 1 a trial failed, else 0 (invalid TPE proposals are not failures)."""
    console.print(results_table(f"{name}: max val_acc per configuration", rows))
    for line in findings(rows, claims, sampled):
        console.print(line, highlight=False, soft_wrap=True)
    failed = [t for t in states if t.status == Status.FAILED]
    invalid = [t for t in states if t.status == Status.INVALID]
    unfinished = (
        interrupted or len(states) < planned or any(t.status == Status.UNFINISHED for t in states)
    )
    if unfinished:
        console.print(
            f"[yellow]interrupted:[/] continue with: {resume_command}",
            highlight=False,
            soft_wrap=True,
        )
    if invalid:  # a proposal's seeds are invalid together: count proposals
        proposals = {t.proposal if t.proposal is not None else t.index for t in invalid}
        seeds = len(invalid) // len(proposals)
        console.print(
            f"[yellow]{len(proposals)} of {planned // seeds} TPE proposal(s) broke a "
            "spec rule and were not trained[/] (see the table)",
            highlight=False,
        )
    warned = [t for t in states if t.warning]
    if warned:  # a GPU paid for and unused, or a GPU node trained on its CPU
        console.print(
            f"[yellow]{len(warned)} trial(s) did not train where their resources say"
            f"[/], e.g. trial {warned[0].index}: {warned[0].warning}",
            highlight=False,
            soft_wrap=True,
        )
    if failed:
        console.print(f"[red]{len(failed)} of {planned} trial(s) failed:[/]", highlight=False)
        folder = path.partition("?")[0]  # a URI's options are not part of its files' paths
        for t in failed:  # a pack member's Ray folder is its pack's
            where = t.path.rstrip("/").rsplit("/", 1)[-1] if t.path else wire.folder(t.index, False)
            in_pack = (wire.from_folder(where) or (False, 0))[0]
            alone = not (
                in_pack  # a diverged member raised nothing
                and (t.error or "").startswith("DivergedError")
            )
            console.print(
                f"  trial {t.index} ({t.label}): {t.error}"
                + (f"\n    traceback: {folder}/{where}/error.txt" if alone else ""),
                highlight=False,
                soft_wrap=True,
            )
    return 130 if unfinished else 1 if failed else 0


def results_table(title: str, rows: Sequence[ResultRow], format: str = "table") -> Table | str:
    """The results table as a rich Table, or as text in another format (`results`)."""
    if format != "table":
        return results.results_table(rows, format)
    table = Table(title=title, title_justify="left")
    for h in results.header(rows):
        table.add_column(h, justify="right" if h in ("n",) else "left")
    for cells in results.table_cells(rows):
        table.add_row(*cells)
    return table
