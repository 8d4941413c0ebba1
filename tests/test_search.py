"""Search methods as a registry: each one file of tunekit/search/, found by name, and a new one
added as one file validates, plans and sweeps with nothing else edited."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO

from tunekit import search
from tunekit.search.grid import Grid

PACKAGE = REPO / "tunekit"

FIRST = '''
"""First: the first grid point only, on each of its seeds: a quick look before the whole grid."""

from tunekit.search.grid import Grid


class First(Grid):
    def size(self, spec):
        return spec.search.repeats

    def points(self, spec):
        return super().points(spec)[: spec.search.repeats]


METHOD = First()
'''


def test_the_methods_are_the_package_s_files_and_an_unknown_one_lists_them() -> None:
    assert search.names() == ["grid", "tpe"]
    assert isinstance(search.lookup("grid"), Grid) and search.lookup("tpe").adaptive
    with pytest.raises(ValueError, match="Input should be 'grid' or 'tpe'"):
        search.lookup("bayes")


def _differences(a: Path, b: Path) -> list[str]:
    """Files that differ between two trees, or are in one only (caches left out)."""
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
    out = [f"{a.name}/{f}" for f in cmp.left_only + cmp.right_only + cmp.diff_files]
    return out + [d for sub in cmp.common_dirs for d in _differences(a / sub, b / sub)]


@pytest.mark.ray
def test_a_method_added_as_one_file_validates_and_sweeps(tmp_path: Path, tiny_data: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(PACKAGE, copy / "tunekit", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "tunekit" / "search" / "first.py").write_text(textwrap.dedent(FIRST))
    assert _differences(PACKAGE, copy / "tunekit") == ["search/first.py"]
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(copy), "TUNEKIT_DATA_DIR": str(tiny_data)}
    env.pop("MLFLOW_TRACKING_URI", None)  # MLflow's store in the work folder

    def tunekit(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tunekit", *args, "--set", "data.subset=256"],
            cwd=work, env=env, text=True, capture_output=True, timeout=300,
        )  # fmt: skip

    smoke = (REPO / "experiments" / "smoke.yaml").read_text()
    for method in ("frist", "first"):  # the smoke spec's grid over three norms, by `method`
        (work / f"{method}.yaml").write_text(
            smoke.replace("search:\n", f"search:\n  method: {method}\n", 1)
        )
    wrong = tunekit("validate", "frist.yaml")
    assert wrong.returncode == 2 and "Input should be 'first', 'grid' or 'tpe'" in wrong.stderr
    shown = tunekit("validate", "first.yaml")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "smoke: 1 trial(s)" in shown.stdout and "1 trial(s), valid." in shown.stdout
    out = tunekit("sweep", "first.yaml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "trial 0 (model.args.norm=BN) epoch 1/1: val_acc" in out.stdout
    assert [p.name for p in (work / "runs" / "smoke").glob("trial_*")] == ["trial_0000"]
