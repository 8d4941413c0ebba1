"""The README's examples and numbers are true: its commands (and those of the pages under docs/)
name real specs that validate, and its figures about the shipped studies are the studies' own."""

from __future__ import annotations

import re
import shlex

import pytest
from conftest import REPO
from typer.testing import CliRunner

from tunekit.cli import app
from tunekit.plan import load_plan

README = (REPO / "README.md").read_text()
DOCS = sorted((REPO / "docs").glob("*.md"))
RESULTS = (REPO / "docs" / "results.md").read_text()  # the published study, moved from the README
EXPERIMENTS = REPO / "experiments"


def commands(text: str) -> list[list[str]]:
    """Every `tunekit ...` line in a page's bash blocks, as arguments."""
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    found = []
    for line in lines:
        for part in line.split("&&"):
            words = shlex.split(part)
            if words and words[0] == "tunekit":
                found.append(words[1:])
    return found


@pytest.mark.parametrize(
    "page", ["README.md", *(f"docs/{f.name}" for f in DOCS)], ids=lambda page: page
)
def test_readme_commands_name_specs_that_validate(page: str) -> None:
    seen = 0
    for args in commands((REPO / page).read_text()):
        specs = [a for a in args if a.endswith(".yaml")]
        if not specs or args[0] not in ("validate", "sweep", "train"):
            continue
        sets = [a for i, a in enumerate(args) if i and args[i - 1] == "--set"]
        result = CliRunner().invoke(
            app, ["validate", str(REPO / specs[0]), *[x for s in sets for x in ("--set", s)]]
        )
        assert result.exit_code == 0, (args, result.output)
        if "--trial" in args:
            trial = int(args[args.index("--trial") + 1])
            assert trial < load_plan(REPO / specs[0]).size, args
        seen += 1
    assert seen >= (8 if page == "README.md" else 0)


@pytest.mark.parametrize(
    "name,size",
    [
        ("smoke", 3),
        ("assignment6", 42),
        ("assignment6_as_run", 36),
        ("norm_grid", 48),
        ("norm_batch", 18),
        ("tpe", 20),
    ],
)
def test_readme_sizes_of_the_shipped_studies(name: str, size: int) -> None:
    assert load_plan(EXPERIMENTS / f"{name}.yaml").size == size
    mention = re.search(rf"`experiments/{name}.yaml` \(([^)]*)\)", README)
    assert mention and str(size) in mention.group(1), name


def test_readme_smoke_description_matches_the_spec() -> None:
    spec = load_plan(EXPERIMENTS / "smoke.yaml").spec
    assert f"first {spec.data.subset:,} MNIST training images" in README
    assert f"1 epoch on {spec.data.subset:,} images" in README and spec.train.epochs == 1


def test_readme_published_table_is_the_assignment_cases() -> None:
    table = RESULTS[RESULTS.index("| norm | L1 | L2 | batch |") :].split("\n\n")[0].splitlines()[2:]
    rows = set()
    for line in table:
        norm, l1, l2, batches, _ = [c.strip() for c in line.strip("|").split("|")]
        rows |= {(norm, float(l1), float(l2), int(b)) for b in batches.split(" / ")}
    cases = {
        (c["model.args.norm"], c["train.l1"], c["train.l2"], c["train.batch_size"])
        for c in load_plan(EXPERIMENTS / "assignment6.yaml").spec.search.cases
    }
    assert len(rows) == len(cases) == 14
    as_run = {
        (c["model.args.norm"], c["train.batch_size"])
        for c in load_plan(EXPERIMENTS / "assignment6_as_run.yaml").spec.search.cases
    }
    assert as_run == {(norm, batch) for norm, _, _, batch in cases}  # the same rows, unlabelled
    for norm, l1, l2, batch in cases:
        assert any(
            r[0] == norm
            and r[3] == batch
            and r[1] == pytest.approx(l1, rel=1e-3)
            and r[2] == pytest.approx(l2, rel=1e-3)
            for r in rows
        ), (norm, l1, l2, batch)
