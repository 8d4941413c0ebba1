"""`tunekit report` and `tunekit plot`, rebuilt from MLflow after a real sweep with repeats."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import pytest
from conftest import REPO, make_mnist
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from tunekit import figures, report
from tunekit.cli import app

REPO_SPECS = REPO / "experiments"

pytestmark = pytest.mark.ray

SPEC = """\
name: repeats
train: {epochs: 2, batch_size: 32, scheduler: {name: none}}
search:
  grid: {model.args.norm: [BN, GN]}
  repeats: 2
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A finished sweep (2 norms × 2 seeds) and its env; cwd holds mlflow.db and runs/."""
    cwd = tmp_path_factory.mktemp("sweep")
    env = {
        **os.environ,
        "TUNEKIT_DATA_DIR": str(make_mnist(cwd / "data")),
        "TUNEKIT_CACHE_DIR": str(cwd / "cache"),
    }
    (cwd / "spec.yaml").write_text(SPEC)
    out = subprocess.run(
        [sys.executable, "-m", "tunekit", "sweep", "spec.yaml"],
        cwd=cwd,
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return cwd, env


def tk(swept: tuple[Path, dict], *args: str) -> SimpleNamespace:
    """Run a tunekit command in this process (report and plot start no Ray)."""
    cwd = swept[0]
    args = tuple(
        str(cwd / a) if a in ("spec.yaml", "figs", "one", "two") or a.startswith("study_") else a
        for a in args
    )
    result = CliRunner().invoke(app, [*args, "--tracking-uri", f"sqlite:///{cwd / 'mlflow.db'}"])
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


def trial_runs(cwd: Path) -> list:
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    exp = client.get_experiment_by_name("repeats")
    return [
        r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags
    ]


def test_report_groups_repeats_with_mean_std_and_n(swept) -> None:
    out = tk(swept, "report", "spec.yaml", "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    runs = trial_runs(swept[0])
    assert len(runs) == 4 and len(rows) == 2
    for row in rows:
        mine = [r for r in runs if r.data.params["model.args.norm"] == row["norm"]]
        accs = sorted(r.data.metrics["max_val_acc"] for r in mine)
        assert row["n"] == 2 and sorted(row["accs"]) == pytest.approx(accs)
        assert row["max_val_acc"] == pytest.approx(sum(accs) / 2)
        assert row["std"] == pytest.approx(abs(accs[0] - accs[1]) / 2**0.5)
        assert sorted(row["run_ids"]) == sorted(r.info.run_id for r in mine)
        assert row["status"] == "done"
    assert rows[0]["max_val_acc"] >= rows[1]["max_val_acc"]  # best first


def test_report_formats_agree(swept) -> None:
    rows = json.loads(tk(swept, "report", "repeats", "-f", "json").stdout)
    markdown = tk(swept, "report", "spec.yaml", "-f", "markdown").stdout.splitlines()
    # one column per parameter that varies in the plan (the norm), then the results
    assert markdown[0] == (
        "| norm | trial | Max Val Acc [95% CI] | seeds | n | "
        "vs best | best epoch | status | MLflow run id |"
    )
    table = tk(swept, "report", "spec.yaml").stdout
    for line, row in zip(markdown[2 : 2 + len(rows)], rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == row["norm"] and cells[4] == "2"
        assert cells[3] == " ".join(f"{a:.2f}" for a in row["accs"])  # each seed's value
        assert cells[1] == ", ".join(map(str, row["trials"]))
        low, high = row["ci95"]
        assert cells[2].removesuffix("†") == f"{row['max_val_acc']:.2f} [{low:.2f}, {high:.2f}]"
        assert (
            cells[5] == "best"
            if row is rows[0]
            else cells[5]
            in (
                f"not distinguishable at n = 2 (p={row['p_vs_best_holm']:.2g}; a gap of about "
                f"{row['gap_told_apart']:.2f} would be)",
                f"worse (p={row['p_vs_best_holm']:.2g})",
            )
        )
        table_line = next(t for t in table.splitlines() if f" {row['norm']} " in t)
        assert cells[2] in table_line and row["run_ids"][0][:12] in table_line
    assert "n = 2 seeds per configuration" in table  # the statistics, in sentences
    parsed = list(csv.DictReader(io.StringIO(tk(swept, "report", "spec.yaml", "-f", "csv").stdout)))
    assert [(r["norm"], float(r["max_val_acc"]), float(r["ci95_low"])) for r in parsed] == [
        (r["norm"], r["max_val_acc"], r["ci95"][0]) for r in rows
    ]  # full precision


@pytest.mark.parametrize("format,doc", [("html", "report.html"), ("markdown", "report.md")])
def test_study_report_on_a_real_sweep(swept, format: str, doc: str) -> None:
    cwd = swept[0]
    out = tk(swept, "report", "spec.yaml", "-f", format, "--out", f"study_{format}")
    assert out.returncode == 0, out.stdout + out.stderr
    folder = cwd / f"study_{format}"
    text = (folder / doc).read_text()
    links = (
        re.findall(r'src="([^"]+)"', text)
        if format == "html"
        else re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    )
    assert len(links) == 1 + 4 + 2  # seeds, the four graphs, a grid of digits per configuration
    trials = list(csv.DictReader((folder / "trials.csv").open()))
    assert len(trials) == 4 and {t["used"] for t in trials} == {"yes"}
    assert "/tmp" not in text and str(cwd) not in text  # no machine-local path
    for link in links:
        assert (folder / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(folder / link).shape[0] > 100
    # the numbers in the report are MLflow's
    runs = trial_runs(cwd)
    for norm in ("BN", "GN"):
        accs = [
            r.data.metrics["max_val_acc"] for r in runs if r.data.params["model.args.norm"] == norm
        ]
        assert f"{sum(accs) / len(accs):.2f} [" in text
    assert "n = 2 seeds per configuration" in text and "grid: {model.args.norm: [BN, GN]}" in text
    for package in ("torch", "ray", "mlflow", "tunekit commit", "lock"):
        assert package in text
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    parent = runs[0].data.tags["mlflow.parentRunId"]
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert f"report/{doc}" in logged and "report/val_acc.png" in logged


def test_the_environment_says_whether_the_versions_are_the_lock_s(tmp_path: Path) -> None:
    import importlib.metadata

    from tunekit.environment import LOCK, lock_match

    torch_version = importlib.metadata.version("torch").split("+")[0]
    lock = tmp_path / "constraints.txt"
    lock.write_text(f"# via uv\ntorch=={torch_version}\n    # via tunekit\nno-such-pkg==1.0\n")
    assert lock_match(lock) == "matches constraints.txt (1 of its 2 pins installed)"
    lock.write_text(f"torch=={torch_version}\nscipy==0.0.1\n")
    assert lock_match(lock).startswith("differs from constraints.txt in 1 package(s): scipy ")
    assert "(lock 0.0.1)" in lock_match(lock)
    assert lock_match(tmp_path / "none.txt").startswith("not compared: no none.txt")
    if os.environ.get("TUNEKIT_LOCKED"):  # .ci/run installed through the lock: it must match
        assert lock_match(LOCK).startswith("matches constraints.txt"), lock_match(LOCK)


def test_plots_stay_readable_with_many_curves_one_epoch_and_wild_intervals() -> None:
    from matplotlib.colors import to_hex

    def history(acc: float) -> list[dict]:
        return [{"epoch": 1, "val_acc": acc, "train_acc": acc, "val_loss": 0.1, "train_loss": 0.1}]

    groups = [(f"config {i}", [history(50.0 + i), history(58.0 + i)]) for i in range(12)]
    fig = figures.band_figures(groups)["val_acc"]
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if line.get_label().startswith("config")]
    assert len({to_hex(line.get_color()) for line in lines}) == 12  # no colour twice
    assert all(len(line.get_xdata()) == 1 for line in lines)  # one epoch: points, no band
    assert not ax.collections or all(type(c).__name__ == "PathCollection" for c in ax.collections)
    low, high = ax.get_ylim()  # 2 seeds, 1 df: the t interval spans ±50 points; the axis not
    assert 45 < low < 50 and 69 < high < 75, (low, high)
    assert len(figures.colours(30)) == len({to_hex(c) for c in figures.colours(30)}) == 30


def test_report_of_an_unknown_experiment(swept) -> None:
    out = tk(swept, "report", "no-such-study")
    assert out.returncode == 2 and "no sweep of 'no-such-study'" in out.stderr


def test_plot_draws_the_stored_curves(swept) -> None:
    cwd = swept[0]
    out = tk(swept, "plot", "spec.yaml", "--out", "figs")
    assert out.returncode == 0, out.stderr
    figs = cwd / "figs"
    for name in ("train_loss", "val_loss", "train_acc", "val_acc"):
        image = matplotlib.image.imread(figs / f"{name}.png")
        assert image.ndim == 3 and image.shape[0] > 100
    runs = trial_runs(cwd)
    assert len(list(figs.glob("misclassified_*.png"))) == len(runs)
    curves = {c["trial"]: c for c in json.loads((figs / "curves.json").read_text())}
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    for r in runs:
        curve = curves[int(r.data.tags["tunekit.trial"])]
        assert curve["label"] == (
            f"norm={r.data.params['model.args.norm']}, seed={r.data.params['train.seed']}"
        )
        stored = sorted(
            (m.step, m.value) for m in client.get_metric_history(r.info.run_id, "val_acc")
        )
        assert [(m["epoch"], m["val_acc"]) for m in curve["history"]] == stored
        assert (figs / f"misclassified_trial_{r.data.tags['tunekit.trial']}.png").is_file()
    # the figure's lines are that data
    drawn = figures.curve_figures([(c["label"], c["history"]) for c in curves.values()])
    lines = drawn["val_acc"].axes[0].lines
    assert [line.get_label() for line in lines] == [c["label"] for c in curves.values()]
    assert [list(line.get_ydata()) for line in lines] == [
        [m["val_acc"] for m in c["history"]] for c in curves.values()
    ]


def test_plot_selected_runs_and_logs_to_the_sweep(swept) -> None:
    cwd = swept[0]
    first = trial_runs(cwd)[0]
    chosen, number = first.info.run_id, first.data.tags["tunekit.trial"]
    out = tk(swept, "plot", "spec.yaml", "--runs", chosen[:10], "--out", "one")
    assert out.returncode == 0, out.stderr
    assert [p.name for p in (cwd / "one").glob("misclassified_*.png")] == [
        f"misclassified_trial_{number}.png"
    ]
    by_number = tk(swept, "plot", "spec.yaml", "--runs", f"{number},3", "--out", "two")
    assert by_number.returncode == 0, by_number.stderr
    assert len(list((cwd / "two").glob("misclassified_*.png"))) == 2 - (number == "3")
    bad = tk(swept, "plot", "spec.yaml", "--runs", "zzzz")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --runs: no trial of this sweep")
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    parent = trial_runs(cwd)[0].data.tags["mlflow.parentRunId"]
    logged = {a.path for a in client.list_artifacts(parent, "plots")}
    assert f"plots/misclassified_trial_{number}.png" in logged


def test_sweep_view_shows_counts_running_trials_and_the_best() -> None:
    from rich.console import Console

    from tunekit.trials import TrialState

    view = report.SweepView("study", total=3, epochs=5)
    a = TrialState(0, {"model.args.norm": "BN"}, "running", [{"epoch": 2, "val_acc": 97.5}])
    b = TrialState(1, {"model.args.norm": "GN"}, "running", [])
    view.trial_started(a)
    view.trial_started(b)
    out = Console(file=io.StringIO(), width=120)
    out.print(view._render())
    text = out.file.getvalue()
    assert (
        "study: 0 done · 2 running · 0 failed · 3 in all · 0.0 min · best val_acc 97.50% "
        "(trial 0)" in text
    )
    assert (
        " 0      model.args.norm=BN  2/5    97.50%" in text
        and " 1      model.args.norm=GN  0/5" in text
    )
    a.status = "failed"
    view.trial_ended(a)
    out.file = io.StringIO()
    out.print(view._render())
    assert "0 done · 1 running · 1 failed" in out.file.getvalue()


def test_sweep_view_s_summary_counts_trials_finished_before_a_resume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rich.console import Console

    from tunekit.cluster import Ask
    from tunekit.trials import TrialState

    out = Console(file=io.StringIO(), width=120, force_terminal=False)
    monkeypatch.setattr(report, "console", out)
    earlier = TrialState(0, {"model.args.norm": "BN"}, "done", [{"epoch": 1, "val_acc": 90.0}])
    now = TrialState(1, {"model.args.norm": "GN"}, "running", [])
    with report.SweepView("study", total=2, epochs=1) as view:
        view.sweep_started("a local Ray", Ask(1, 0.0, "the spec"))  # trial 0 ended before it
        view.trial_started(now)
        now.status = "done"
        view.trial_ended(now)
        view.finished([earlier, now])
    assert "study: 2 done · 0 running · 0 failed · 2 in all" in out.file.getvalue()


def test_sweep_view_on_a_terminal_is_live_and_elsewhere_prints_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rich.console import Console

    from tunekit.trials import TrialState

    trial = TrialState(2, {"model.args.norm": "LN"}, "running", [])
    for terminal in (True, False):
        out = Console(file=io.StringIO(), width=120, force_terminal=terminal)
        monkeypatch.setattr(report, "console", out)
        with report.SweepView("study", total=3, epochs=2, every=0) as view:
            assert (view.live is not None) is terminal
            view.trial_started(trial)
            trial.history = [{"epoch": 1, "val_acc": 91.0, "train_loss": 0.5, "seconds": 1.0}]
            view.epoch_done(trial, trial.history[0])
            trial.status = "done"
            view.trial_ended(trial)
        text = out.file.getvalue()
        assert "trial 2 (model.args.norm=LN): max val_acc 91.00% (epoch 1)" in text
        if not terminal:
            assert "trial 2 (model.args.norm=LN) epoch 1/2: val_acc 91.00%" in text
            assert "study: 1 done · 0 running · 0 failed · 3 in all" in text  # the summary


def test_report_rebuilds_the_statistics_from_a_trials_csv_without_mlflow(
    tmp_path: Path, monkeypatch
) -> None:
    from tunekit.records import RunRecord, read_trials_csv, trials_csv

    monkeypatch.chdir(tmp_path)
    runs = [
        RunRecord(
            f"r{i}",
            i,
            {"model.args.norm": norm, "train.batch_size": str(batch), "train.seed": str(seed)},
            98.0 + 0.1 * i,
            3,
            "done",
            None,
        )
        for i, (norm, batch, seed) in enumerate(
            (n, b, s) for n in ("BN", "GN", "LN") for b in (16, 128) for s in (1, 2, 3)
        )
    ]
    runs[4] = RunRecord("r4", 4, runs[4].params, None, None, "failed", "DataError: gone")
    (tmp_path / "trials.csv").write_text(trials_csv(runs))
    assert read_trials_csv(tmp_path / "trials.csv") == runs  # what was written comes back
    out = CliRunner().invoke(
        app,
        ["report", str(REPO_SPECS / "norm_batch.yaml"), "--trials", "trials.csv", "-f", "markdown"],
    )
    assert out.exit_code == 0, out.output
    assert "GroupNorm does better than BatchNorm at small batch sizes" in out.output
    assert "Left out of every mean and test (1): trial 4 (failed)" in out.output
    assert not (tmp_path / "mlflow.db").exists()
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    out = CliRunner().invoke(app, ["report", "x", "--trials", "bad.csv"])
    assert out.exit_code == 2 and "--trials" in out.output and "not a trials.csv" in out.output
