"""Everything tunekit shows a person: tables, progress and summaries (rich)."""

from __future__ import annotations

from typing import Any, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tunekit.spec import Trial
from tunekit.train import EpochMetrics, FitResult

console = Console()
errors = Console(stderr=True)


def varying(trials: Sequence[Trial]) -> list[str]:
    """The field paths whose value differs between trials, in the order they first appear."""
    keys: dict[str, None] = {}
    for t in trials:
        keys.update(dict.fromkeys(t.params))
    return [k for k in keys if len({repr(t.params.get(k)) for t in trials}) > 1]


def fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def trials_table(name: str, trials: Sequence[Trial]) -> Table:
    cols = varying(trials)
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
            f"{len(result.misclassified.indices)} test images wrong at the best epoch")
