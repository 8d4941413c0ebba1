"""The study report: one document (markdown or HTML) with everything a reader needs.

The results table with 95% intervals, the statistics in plain sentences, the four graphs with the
mean curve and an interval band per configuration, a grid of misclassified digits per
configuration, the spec, and the environment the sweep ran in. The figures are PNG files beside
the document, linked relatively, so the folder reads the same in a browser and on a code-hosting
site. Nothing here talks to MLflow: the caller hands in what it read.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Study:
    """What the report shows, as read from MLflow by the caller."""

    name: str
    sweep_run: str
    tracking_uri: str
    rows: Sequence[Any]  # results.ResultRow, best first
    histories: dict[str, list[dict[str, Any]]]  # MLflow run id -> per-epoch metrics
    wrong: dict[str, dict[str, Any]]  # MLflow run id -> misclassified images (track)
    spec_text: str
    environment: dict[str, str]
    records: Sequence[Any] = ()  # records.RunRecord of every trial: trials.csv
    claims: Sequence[Any] = ()  # spec.Claim: each tested in the report
    sampled: Sequence[str] = ()  # a TPE or random search's parameters: their importance


def write(study: Study, folder: Path, format: str) -> list[Path]:
    """Write the report (report.md or report.html) and its figures into `folder`."""
    from tunekit import figures, findings, results

    folder.mkdir(parents=True, exist_ok=True)
    measured = [r for r in study.rows if r.accs]
    groups = [
        (r.label, [study.histories[i] for i in r.run_ids if study.histories.get(i)])
        for r in measured
    ]
    files = []
    for key, fig in figures.band_figures(groups).items():
        files.append(folder / f"{key}.png")
        fig.savefig(files[-1], dpi=90)
    files.append(folder / "max_val_acc.png")  # each seed beside each mean
    figures.seeds_figure(study.rows).savefig(files[-1], dpi=90)
    grids = []
    for n, r in enumerate(measured, 1):
        best = max(
            r.run_ids,
            key=lambda i: max((m["val_acc"] for m in study.histories.get(i, [])), default=-1.0),
        )
        wrong = study.wrong.get(best)
        if wrong is not None:
            files.append(folder / f"misclassified_{n}.png")
            figures.misclassified_figure(
                wrong["images"],
                wrong["labels"],
                wrong["preds"],
                title=f"{r.label}: best seed, {wrong['total']} wrong",
            ).savefig(files[-1], dpi=80)
            grids.append((r.label, files[-1].name))
    table = results.results_table(study.rows, "markdown")
    sentences = findings.findings(study.rows, study.claims, study.sampled)
    found = results.importance(study.rows, study.sampled) if study.sampled else None
    if found:
        files.append(folder / "importance.json")
        files[-1].write_text(
            json.dumps(
                {
                    "method": "optuna fANOVA over configurations' seed "
                    "means (a model-based estimate)",
                    "importance": found,
                },
                indent=1,
            )
        )
    if study.records:  # every value the statistics used, one row per trial
        files.append(folder / "trials.csv")
        from tunekit.records import trials_csv

        files[-1].write_text(trials_csv(study.records))
    graphs = [
        ("Max val_acc per configuration, each seed", "max_val_acc.png"),
        *((figures.GRAPHS[k], f"{k}.png") for k in figures.GRAPHS),
    ]
    doc = folder / f"report.{'md' if format == 'markdown' else 'html'}"
    render = _markdown if format == "markdown" else _html
    doc.write_text(render(study, table, sentences, graphs, grids))
    return [doc, *files]


def _store(uri: str) -> str:
    """The tracking store without this machine's folders (a committed report names none)."""
    if uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri:
        return f"{uri.split(':', 1)[0] if '://' in uri else 'file'} store {Path(uri).name}"
    return uri


def _header(study: Study) -> str:
    per_trial = " Every trial's values: [trials.csv](trials.csv)." if study.records else ""
    return (
        f"Sweep run `{study.sweep_run}` in MLflow ({_store(study.tracking_uri)}); report "
        f"written {time.strftime('%Y-%m-%d %H:%M %Z')}.{per_trial}"
    )


def _markdown(
    study: Study,
    table: str,
    sentences: list[str],
    graphs: list[tuple[str, str]],
    grids: list[tuple[str, str]],
) -> str:
    out = [
        f"# {study.name}: study report",
        "",
        _header(study),
        "",
        "## Results",
        "",
        "Max val_acc is the best test accuracy of each trial over its epochs, averaged over "
        "seeds, with its 95% interval.",
        "",
        table,
        "## What the statistics say",
        "",
    ]
    out += [f"- {s}" for s in sentences] + ["", "## Curves", ""]
    out += [f"![{title}]({file})" for title, file in graphs] + ["", "## Misclassified digits", ""]
    out += [f"**{label}**\n\n![{label}]({file})\n" for label, file in grids]
    out += [
        "## The spec",
        "",
        "```yaml",
        study.spec_text.rstrip(),
        "```",
        "",
        "## Environment",
        "",
        "| | |",
        "|---|---|",
    ]
    out += [f"| {k} | {v} |" for k, v in study.environment.items()]
    return "\n".join(out) + "\n"


def _html(
    study: Study,
    table: str,
    sentences: list[str],
    graphs: list[tuple[str, str]],
    grids: list[tuple[str, str]],
) -> str:
    e = html.escape
    lines = [line for line in table.strip().splitlines() if not line.startswith("|---")]
    cells = [
        [c.strip().replace("\\|", "|") for c in line.strip("|").split(" | ")] for line in lines
    ]
    head = "".join(f"<th>{e(c)}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in cells[1:])
    figures = "".join(
        f'<figure><img src="{e(f)}" alt="{e(t)}"><figcaption>{e(t)}</figcaption></figure>'
        for t, f in graphs
    )
    wrong = "".join(
        f'<figure><img src="{e(f)}" alt="{e(label)}"><figcaption>{e(label)}</figcaption></figure>'
        for label, f in grids
    )
    env = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in study.environment.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(study.name)}: study report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; line-height: 1.45; }}
table {{ border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; }}
th {{ background: #f3f3f3; }}
figure {{ display: inline-block; margin: 0.5rem; }} img {{ max-width: 34rem; }}
pre {{ background: #f6f6f6; padding: 1rem; overflow-x: auto; }}
</style></head><body>
<h1>{e(study.name)}: study report</h1>
<p>{e(_header(study).replace("`", "").replace("[trials.csv](trials.csv)", "trials.csv"))}</p>
<h2>Results</h2>
<p>Max val_acc is the best test accuracy of each trial over its epochs, averaged over seeds, with
its 95% interval.</p>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<h2>What the statistics say</h2>
<ul>{"".join(f"<li>{e(s)}</li>" for s in sentences)}</ul>
<h2>Curves</h2>
{figures}
<h2>Misclassified digits</h2>
{wrong}
<h2>The spec</h2>
<pre>{e(study.spec_text)}</pre>
<h2>Environment</h2>
<table>{env}</table>
</body></html>
"""
