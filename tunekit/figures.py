"""The figures (matplotlib only): curves per trial or per configuration, seeds beside their mean,
and a grid of misclassified images. Each function takes plain values and returns a Figure; the
caller saves it."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunekit.results import ACCURACY, column_names, varying
from tunekit.text import fmt

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from tunekit.results import ResultRow
    from tunekit.trials import TrialState

GRAPHS = {
    "train_loss": "Training loss",
    "val_loss": "Test loss",
    "train_acc": "Training accuracy (%)",
    "val_acc": "Test accuracy (%)",
}


def legend_labels(params: Sequence[dict[str, str]]) -> list[str]:
    """One label per run, made of the parameters that vary between the runs."""
    keys = varying(params, frozenset({"data.root"}))
    short = column_names(keys)
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
        ax.plot(
            [m["epoch"] for m in history],
            [m[key] for m in history],
            marker=".",
            label=label,
            color=colour,
        )
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


def band_figures(
    groups: Sequence[tuple[str, Sequence[Sequence[dict[str, Any]]]]],
) -> dict[str, Figure]:
    """The four graphs for configurations repeated over seeds: per configuration (label, its
    trials' histories) the mean curve, each seed's values as points, and, with 2 or more seeds
    and 2 or more epochs, its 95% interval as a band. The y axis follows the data, not the bands."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figures = {}
    palette = colours(len(groups))
    for key in GRAPHS:
        fig = figures[key] = Figure(figsize=(8, 5), layout="constrained")
        ax = fig.add_subplot()
        shown: list[float] = []
        bounds = ACCURACY if key.endswith("acc") else (0.0, math.inf)
        for (label, histories), colour in zip(groups, palette):
            shown += _band(ax, key, label, histories, colour, bounds)
        single = all(len({m["epoch"] for h in hs for m in h}) <= 1 for _, hs in groups)
        ax.set(
            title=GRAPHS[key]
            + (
                " — each seed and the mean" if single else " — mean over seeds, 95% band, each seed"
            ),
            xlabel="epoch",
        )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _to_data(ax, shown)
        ax.grid(alpha=0.3)
        if groups:
            ax.legend(fontsize="small")
    return figures


def _band(
    ax: Any,
    key: str,
    label: str,
    histories: Sequence[Sequence[dict[str, Any]]],
    colour: Any,
    bounds: tuple[float, float],
) -> list[float]:
    """One configuration's mean curve of `key`, each seed's values as points and, with 2 or
    more seeds and epochs, its 95% band, on `ax`; the values shown."""
    from tunekit.stats import summarize

    points: dict[int, list[float]] = {}
    for h in histories:
        for m in h:
            if math.isfinite(m.get(key, math.nan)):
                points.setdefault(m["epoch"], []).append(m[key])
    epochs = sorted(points)
    at = [summarize(points[e], bounds) for e in epochs]
    n = max((s.n for s in at), default=0)
    ax.plot(
        epochs,
        [s.mean for s in at],
        marker="o" if len(epochs) == 1 else ".",
        color=colour,
        label=f"{label} (n={n})",
    )
    seeds = [(e, v) for e in epochs for v in points[e]]
    ax.scatter(
        [e for e, _ in seeds], [v for _, v in seeds], s=9, color=colour, alpha=0.5, linewidths=0
    )
    if n > 1 and len(epochs) > 1:
        ax.fill_between(
            epochs,
            [s.low if s.low is not None else s.mean for s in at],
            [s.high if s.high is not None else s.mean for s in at],
            color=colour,
            alpha=0.2,
            linewidth=0,
        )
    return [v for _, v in seeds]


def seeds_figure(rows: Sequence[ResultRow]) -> Figure:
    """Max val_acc per configuration: each seed as a point beside the mean and its interval."""
    from matplotlib.figure import Figure

    measured = [r for r in rows if r.accs]
    fig = Figure(figsize=(8, 1.2 + 0.45 * max(len(measured), 1)), layout="constrained")
    ax = fig.add_subplot()
    for y, (r, colour) in enumerate(zip(measured, colours(len(measured)))):
        s = r.summary
        if s is not None and s.low is not None and s.high is not None:
            ax.plot([s.low, s.high], [y, y], color=colour, linewidth=2, alpha=0.6)
        ax.plot([statistics.fmean(r.accs)], [y], marker="|", markersize=16, color=colour)
        ax.scatter(r.accs, [y + 0.18] * len(r.accs), s=16, color=colour)
    ax.set_yticks(range(len(measured)), [r.label for r in measured], fontsize="small")
    ax.invert_yaxis()  # best on top, as in the table
    ax.set(
        title="Max val_acc: each seed (dots), the mean (|) and its 95% interval",
        xlabel="max val_acc (%)",
    )
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


def misclassified_figure(
    images: Any, labels: Any, preds: Any, title: str = "", count: int = 25
) -> Figure:
    """A 5×5 grid of misclassified images (uint8 N×C×H×W, or N×H×W), each titled 'predicted
    (true actual)', in type that stays readable when the grid is shown at a page's width; grey
    images dark on white, colour images as they are."""
    from matplotlib.figure import Figure

    images = images.numpy() if hasattr(images, "numpy") else images
    if images.ndim == 4:  # N×C×H×W -> N×H×W (grey) or N×H×W×C (colour)
        images = images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1)
    fig = Figure(figsize=(7, 8), layout="constrained")
    fig.suptitle(title, fontsize=12)
    for i in range(min(count, len(images))):
        ax = fig.add_subplot(5, 5, i + 1)
        ax.imshow(images[i], cmap="gray_r" if images[i].ndim == 2 else None)
        ax.set_title(f"{int(preds[i])} (true {int(labels[i])})", fontsize=12)
        ax.axis("off")
    return fig


def trial_figures(trial: TrialState, folder: Path) -> None:
    """A finished trial's curves.png and misclassified.png (its best epoch's wrong images), for
    its MLflow run (with the best state from its checkpoint)."""
    best = trial.best_state
    assert best is not None  # the tracker draws only a trial that has one
    curves_figure([(trial.label, trial.history)]).savefig(folder / "curves.png")
    wrong = best["wrong"]
    misclassified_figure(
        wrong["images"],
        wrong["labels"],
        wrong["preds"],
        title=f"best epoch {best['epoch']}: {wrong['total']} wrong",
    ).savefig(folder / "misclassified.png")
