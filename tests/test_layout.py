"""The house's layering, read from the imports of tunekit's modules (transitively, function-level
imports included): display code is a leaf, the trainer knows nothing of Ray, MLflow or the plan."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tunekit"
DISPLAY = {"tunekit.report", "tunekit.figures", "tunekit.study"}
DISPLAY_LIBRARIES = {"rich", "matplotlib"}


def imports() -> dict[str, set[str]]:
    """Module -> every module it imports (tunekit's by full name, others by top package)."""
    found: dict[str, set[str]] = {}
    for f in PACKAGE.rglob("*.py"):
        name = ".".join(f.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(
            ".__init__"
        )
        deps: set[str] = set()
        for node in _runtime_nodes(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                deps.add(node.module)  # the package's __init__ runs too
                deps |= {
                    f"{node.module}.{a.name}" for a in node.names if _is_module(node.module, a.name)
                }
        found[name] = {d if d.startswith("tunekit") else d.split(".")[0] for d in deps}
    return found


def _is_module(package: str, name: str) -> bool:
    path = PACKAGE.parent / package.replace(".", "/") / name
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node that runs: `if TYPE_CHECKING:` blocks (type hints only) and a module's
    `__getattr__` (names it loads on first use, as tunekit's own `tunekit.run`) left out."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            todo += node.orelse
            continue
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            continue
        todo += ast.iter_child_nodes(node)
    return out


def reach(
    graph: dict[str, set[str]], module: str, avoiding: frozenset[str] = frozenset()
) -> set[str]:
    """What `module` imports, directly or not; what it reaches through `avoiding` left out."""
    seen, todo = set(), [module]
    while todo:
        for dep in graph.get(todo.pop(), ()):
            if dep not in seen and dep not in avoiding:
                seen.add(dep)
                todo.append(dep)
    return seen


GRAPH = imports()


@pytest.mark.parametrize(
    "module",
    [
        "track",
        "ui",
        "sweep",
        "train",
        "trainable",
        "trials",
        "results",
        "pack",
        "plan",
        "spec",
        "stats",
    ],
)
def test_no_display_code_below_the_cli(module: str) -> None:
    reached = reach(GRAPH, f"tunekit.{module}")
    assert not reached & (DISPLAY | DISPLAY_LIBRARIES), sorted(
        reached & (DISPLAY | DISPLAY_LIBRARIES)
    )


def test_the_trainer_knows_no_ray_mlflow_or_plan() -> None:
    reached = reach(GRAPH, "tunekit.train")
    assert not reached & {
        "ray",
        "mlflow",
        "tunekit.plan",
        "tunekit.sweep",
        "tunekit.trainable",
        "tunekit.track",
    }, sorted(reached)


# Code that trains, tracks or joins Ray: the CLI reaches it only through `api`.
HEAVY = {
    "ray",
    "mlflow",
    "tunekit.train",
    "tunekit.trainable",
    "tunekit.checks",
    "tunekit.measure",
    "tunekit.sweep",
    "tunekit.cluster",
    "tunekit.storage",
    "tunekit.track",
    "tunekit.recorded",
    "tunekit.ui",
}


def test_the_cli_reaches_training_tracking_and_ray_only_through_the_api() -> None:
    assert "tunekit.api" in GRAPH["tunekit.cli"]
    reached = reach(GRAPH, "tunekit.cli", avoiding=frozenset({"tunekit.api"}))
    assert not reached & HEAVY, sorted(reached & HEAVY)


def test_only_track_talks_to_mlflow_and_only_the_driver_side_to_ray() -> None:
    assert {m for m, deps in GRAPH.items() if "mlflow" in deps} == {"tunekit.track"}
    ray_users = {m for m, deps in GRAPH.items() if "ray" in deps}
    assert ray_users <= {
        "tunekit.cluster",
        "tunekit.sweep",
        "tunekit.trainable",
        "tunekit.storage",
    }, sorted(ray_users)


def test_the_trial_vocabulary_has_no_ray_and_pulls_in_no_torch() -> None:
    assert not reach(GRAPH, "tunekit.trials") & {"ray", "torch", "mlflow"}
