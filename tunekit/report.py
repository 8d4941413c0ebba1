"""Everything tunekit shows a person: tables, progress and summaries (rich)."""

from __future__ import annotations

import csv
import io
import json
import statistics
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from matplotlib.figure import Figure

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from tunekit.spec import ExperimentSpec, Trial
from tunekit.train import EpochMetrics, FitResult

if TYPE_CHECKING:
    from tunekit.sweep import TrialState

# Not a terminal (CI, a log file): wide lines rather than tables folded at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True)


def varying(params: Sequence[dict[str, Any]], ignore: set[str] = frozenset()) -> list[str]:
    """The keys whose value differs between the dicts, in the order they first appear."""
    keys = dict.fromkeys(k for p in params for k in p if k not in ignore)
    return [k for k in keys if len({repr(p.get(k)) for p in params}) > 1]


def fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def trials_table(name: str, trials: Sequence[Trial]) -> Table:
    cols = varying([t.params for t in trials])
    table = Table(title=f"{name}: {len(trials)} trial(s)", title_justify="left")
    table.add_column("trial", justify="right")
    for c in cols:
        table.add_column(c)
    table.add_column("epochs", justify="right")
    for t in trials:
        table.add_row(str(t.index), *(fmt(t.params.get(c, "")) for c in cols),
                      str(t.config.train.epochs))
    return table


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


def resources_line(spec: ExperimentSpec, trials: int) -> str:
    r = spec.resources
    gpus = "auto (0.25 if the cluster has GPUs, else 0)" if r.gpus_per_trial is None \
        else fmt(r.gpus_per_trial)
    cap = spec.sweep.max_concurrent or "as many as the cluster's CPUs/GPUs allow"
    return (f"{trials} trial(s) × {spec.train.epochs} epoch(s); each trial takes {r.cpus_per_trial} "
            f"CPU(s) ({r.cpus_per_trial} torch thread(s)) and {gpus} GPU; at once: {cap}")


class SweepView:
    """The live view of a running sweep: counts, each running trial's epoch and val_acc, the best
    so far; a line is printed as each trial ends. Implements sweep.Listener."""

    def __init__(self, name: str, total: int, epochs: int):
        self.name, self.total, self.epochs = name, total, epochs
        self.trials: dict[str, TrialState] = {}
        self.live = Live(self._render(), console=console, refresh_per_second=4, transient=True)

    def __enter__(self) -> SweepView:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()

    def trial_started(self, trial: TrialState) -> None:
        self.trials[trial.trial_id] = trial
        self.live.update(self._render())

    def epoch_done(self, trial: TrialState, metrics: dict[str, Any]) -> None:
        self.trials[trial.trial_id] = trial
        self.live.update(self._render())

    def trial_ended(self, trial: TrialState) -> None:
        self.trials[trial.trial_id] = trial
        setting = ", ".join(f"{k}={fmt(v)}" for k, v in trial.params.items())
        if trial.status == "failed":
            self.live.console.print(f"[red]✗ {trial.trial_id}[/] {setting}: {trial.error}",
                                    highlight=False, soft_wrap=True)
        else:
            best = trial.best
            acc = (f"max val_acc {best['val_acc']:.2f}% (epoch {best['epoch']})" if best
                   else "finished in an earlier session")
            self.live.console.print(f"[green]✓ {trial.trial_id}[/] {setting}: {acc}",
                                    highlight=False, soft_wrap=True)
        self.live.update(self._render())

    def _render(self) -> Group:
        by = {s: [t for t in self.trials.values() if t.status == s]
              for s in ("running", "done", "failed")}
        best = max((t.best for t in self.trials.values() if t.best), default=None,
                   key=lambda m: m["val_acc"])
        title = (f"{self.name}: {len(by['done'])} done · {len(by['running'])} running · "
                 f"{len(by['failed'])} failed · {self.total} in all"
                 + (f" · best val_acc {best['val_acc']:.2f}%" if best else ""))
        table = Table(box=None)
        for col in ("trial", "setting", "epoch", "val_acc"):
            table.add_column(col)
        for t in by["running"]:
            last = t.history[-1] if t.history else None
            table.add_row(t.trial_id, ", ".join(f"{k}={fmt(v)}" for k, v in t.params.items()),
                          f"{last['epoch'] if last else 0}/{self.epochs}",
                          f"{last['val_acc']:.2f}%" if last else "")
        return Group(Text(title), table)


def failures(trials: Sequence[TrialState]) -> list[str]:
    return [f"{t.trial_id}: {t.error}" for t in trials if t.status == "failed"]


# -- results rebuilt from MLflow ----------------------------------------------------------------

SEED_COLUMNS = {"model.norm": "Norm", "train.l1": "L1", "train.l2": "L2",
                "train.batch_size": "Batch"}
IGNORED = {"train.seed", "data.root"}  # never a reason to tell two configurations apart


@dataclass
class ResultRow:
    """One configuration: its trials (several when repeated with other seeds)."""
    setting: dict[str, str]  # column -> value: the seed's four, then other params that vary
    accs: list[float]
    best_epochs: list[int]
    statuses: list[str]
    run_ids: list[str]
    errors: list[str]

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
        return {**self.setting, "max_val_acc": self.mean, "std": self.std, "n": len(self.run_ids),
                "accs": self.accs, "best_epochs": self.best_epochs, "status": self.status,
                "run_ids": self.run_ids, "errors": self.errors}


def result_rows(runs: Sequence[Any]) -> list[ResultRow]:
    """Group runs (track.RunRecord) by everything but the seed; best mean max val_acc first."""
    others = varying([r.params for r in runs], IGNORED | set(SEED_COLUMNS))
    columns = list(SEED_COLUMNS) + others
    groups: dict[tuple, ResultRow] = {}
    for r in runs:
        key = tuple(r.params.get(k, "") for k in columns)
        row = groups.setdefault(key, ResultRow(
            {SEED_COLUMNS.get(k, k): r.params.get(k, "") for k in columns}, [], [], [], [], []))
        if r.max_val_acc is not None:
            row.accs.append(r.max_val_acc)
            row.best_epochs.append(r.best_epoch)
        row.statuses.append(r.status)
        row.run_ids.append(r.run_id)
        if r.error:
            row.errors.append(r.error)
    return sorted(groups.values(), key=lambda g: (g.mean is None, -(g.mean or 0)))


def _acc(row: ResultRow) -> str:
    if row.mean is None:
        return "-"
    return f"{row.mean:.2f}" if len(row.accs) == 1 else f"{row.mean:.2f} ± {row.std:.2f}"


def _cells(row: ResultRow) -> list[str]:
    epochs = ", ".join(map(str, row.best_epochs)) or "-"
    status = row.status + (f": {row.errors[0]}" if row.errors else "")
    return [*row.setting.values(), _acc(row), str(len(row.run_ids)), epochs, status,
            " ".join(r[:12] for r in row.run_ids)]


def results_table(title: str, rows: Sequence[ResultRow], fmt: str = "table") -> Table | str:
    """The seed's table (Norm | L1 | L2 | Batch | Max Val Acc ...) as rich, markdown, csv or json."""
    head = [*(rows[0].setting if rows else SEED_COLUMNS.values()), "Max Val Acc", "n",
            "best epoch", "status", "MLflow run id"]
    if fmt == "json":
        return json.dumps([r.as_dict() for r in rows], indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow([*head[:-1], "std", "run ids"])
        for r in rows:
            cells = _cells(r)
            writer.writerow([*cells[:len(head) - 1], f"{r.std:.4f}", " ".join(r.run_ids)])
        return out.getvalue()
    if fmt == "markdown":
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |"
                  for r in rows]
        return "\n".join(lines) + "\n"
    table = Table(title=title, title_justify="left")
    for h in head:
        table.add_column(h, justify="right" if h in ("Max Val Acc", "n") else "left")
    for r in rows:
        table.add_row(*_cells(r))
    return table


# -- plots ----------------------------------------------------------------------------------

GRAPHS = {"train_loss": "Training loss", "val_loss": "Test loss",
          "train_acc": "Training accuracy (%)", "val_acc": "Test accuracy (%)"}


def legend_labels(params: Sequence[dict[str, str]]) -> list[str]:
    """One label per run, made of the parameters that vary between the runs."""
    keys = varying(params, {"data.root"})
    short = {k: SEED_COLUMNS.get(k, k.split(".")[-1]) for k in keys}
    return [", ".join(f"{short[k]}={p.get(k)}" for k in keys) or "trial" for p in params]


def _draw(ax: Any, key: str, curves: Sequence[tuple[str, Sequence[dict[str, Any]]]]) -> None:
    for label, history in curves:
        ax.plot([m["epoch"] for m in history], [m[key] for m in history], marker=".", label=label)
    ax.set(title=GRAPHS[key], xlabel="epoch")
    ax.grid(alpha=0.3)


def curve_figures(curves: Sequence[tuple[str, Sequence[dict[str, Any]]]]) -> dict[str, Figure]:
    """The seed's four comparison graphs: one figure per metric, one line per (label, history)."""
    figures = {}
    for key in GRAPHS:
        figures[key] = Figure(figsize=(8, 5), layout="constrained")
        ax = figures[key].add_subplot()
        _draw(ax, key, curves)
        if curves:
            ax.legend(fontsize="small")
    return figures


def curves_figure(curves: Sequence[tuple[str, Sequence[dict[str, Any]]]]) -> Figure:
    """The four graphs as panels of one figure (a single trial's artifact)."""
    fig = Figure(figsize=(11, 8), layout="constrained")
    for i, key in enumerate(GRAPHS):
        _draw(fig.add_subplot(2, 2, i + 1), key, curves)
    return fig


def misclassified_figure(images: Any, labels: Any, preds: Any, title: str = "",
                         count: int = 25) -> Figure:
    """A 5×5 grid of misclassified digits, each titled 'predicted / actual'."""
    images = images.numpy() if hasattr(images, "numpy") else images
    fig = Figure(figsize=(7, 7.6), layout="constrained")
    fig.suptitle(title)
    for i in range(min(count, len(images))):
        ax = fig.add_subplot(5, 5, i + 1)
        ax.imshow(images[i], cmap="gray_r")
        ax.set_title(f"pred {int(preds[i])} / true {int(labels[i])}", fontsize=8)
        ax.axis("off")
    return fig
