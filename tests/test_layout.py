"""The house's layering, read from the imports of tunekit's modules (transitively, function-level
imports included): display code is a leaf, the trainer knows nothing of Ray, MLflow or the plan."""

from __future__ import annotations

import ast
import re
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
    search_methods = {m for m in ray_users if m.startswith("tunekit.search.")}  # in functions,
    assert ray_users - search_methods <= {  # where a sweep calls them: `tunekit.search`
        "tunekit.cluster",
        "tunekit.sweep",
        "tunekit.relay",
        "tunekit.trainable",
        "tunekit.storage",
    }, sorted(ray_users)


def test_reading_a_spec_and_planning_import_no_search_method() -> None:
    """A method's module is imported by name when a spec names it (`search.lookup`), never
    statically: its Ray and Optuna stay out of the spec and the plan."""
    for module in ("tunekit.spec", "tunekit.plan"):
        assert not {m for m in reach(GRAPH, module) if m.startswith("tunekit.search.")}


def test_the_trial_vocabulary_has_no_ray_and_pulls_in_no_torch() -> None:
    assert not reach(GRAPH, "tunekit.trials") & {"ray", "torch", "mlflow"}


MAX_LINES = 400  # a module a newcomer reads in one sitting
MAX_FUNCTION = 60  # lines of code (its docstring aside); longer only with the reason said in a
#                    comment `# long: ...` in its body


def test_no_module_is_over_about_400_lines() -> None:
    long = {
        str(f.relative_to(PACKAGE.parent)): n
        for f in PACKAGE.rglob("*.py")
        if (n := len(f.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


def test_no_function_is_over_about_60_lines_without_a_reason() -> None:
    long = []
    for f in PACKAGE.rglob("*.py"):
        lines = f.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = lines[node.lineno - 1 : node.end_lineno]
                doc = node.body[0]  # its docstring, if it has one, is not counted
                said = (
                    doc.end_lineno - doc.lineno + 1
                    if isinstance(doc, ast.Expr)
                    and isinstance(doc.value, ast.Constant)
                    and doc.end_lineno is not None
                    else 0
                )
                if len(body) - said > MAX_FUNCTION and not any("# long:" in s for s in body):
                    long.append(f"{f.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}")
    assert not long, long


def test_no_private_name_crosses_modules() -> None:
    """A `_name` is its module's own: no tunekit module imports one from another, or reaches one
    through another module's name."""
    modules = {".".join(m.split(".")[1:]) for m in GRAPH} | {m.split(".")[-1] for m in GRAPH}
    crossing = []
    for f in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tunekit"):
                crossing += [f"{f.name}: {a.name}" for a in node.names if a.name.startswith("_")]
            elif (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id in modules
            ):
                crossing.append(f"{f.name}:{node.lineno} {node.value.id}.{node.attr}")
    assert not crossing, crossing


# -- the Ray trial's wire format: spelled in tunekit/wire.py only --------------------------------

WIRE_KEYS = {"trial", "pack"}
WIRE_FOLDER = re.compile(r"(trial|pack)\)?_(?![a-z])")  # trial_0003, pack_%04d, (trial|pack)_
RAY_FACING = ["sweep", "relay", "trainable", "plan", "report", "cluster", "measure"] + [
    f"search/{f.stem}" for f in (PACKAGE / "search").glob("*.py")
]
BUILDS_CONFIGS = {"sweep", "relay", "trainable"}  # plan.json and table rows are no Ray configs


def _wire_spellings(module: str, tree: ast.AST) -> list[str]:
    """Where a module spells the wire format: 'trial'/'pack' as a key looked up, tested for or
    (where Ray configs are built) written; a folder name; an f'm{...}' member key."""
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef))
        and n.body
        and isinstance(n.body[0], ast.Expr)
    }
    keys: list[ast.AST] = []
    found = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Subscript):
            keys.append(n.slice)
        elif isinstance(n, ast.Compare) and any(isinstance(o, (ast.In, ast.NotIn)) for o in n.ops):
            for side in (n.left, *n.comparators):
                keys += side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
        elif isinstance(n, ast.Call) and getattr(n.func, "attr", None) in ("get", "pop"):
            keys += n.args[:1]
        elif isinstance(n, ast.Dict) and module in BUILDS_CONFIGS:
            keys += [k for k in n.keys if k is not None]
        elif isinstance(n, ast.JoinedStr):
            for a, b in zip(n.values, n.values[1:]):
                if getattr(a, "value", None) == "m" and isinstance(b, ast.FormattedValue):
                    found.append(f"line {n.lineno}: an f'm{{...}}' member key")
        if (
            isinstance(n, ast.Constant)
            and isinstance(n.value, str)
            and id(n) not in docstrings
            and WIRE_FOLDER.search(n.value)
        ):
            found.append(f"line {n.lineno}: {n.value!r}")
    found += [
        f"line {k.lineno}: {k.value!r} as a key"
        for k in keys
        if isinstance(k, ast.Constant) and k.value in WIRE_KEYS
    ]
    return found


@pytest.mark.parametrize("module", RAY_FACING)
def test_only_the_codec_spells_the_wire_format(module: str) -> None:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    assert not _wire_spellings(module, tree), _wire_spellings(module, tree)


def test_the_wire_check_finds_what_it_looks_for() -> None:
    spelt = """
def f(config, result, i):
    '''trial_0003: a docstring may say it'''
    n = config["trial"] if "pack" not in config else config.get("pack")[0]
    return f"trial_{n:04d}", result[f"m{i}"], {"pack": [n]}
"""
    assert len(_wire_spellings("sweep", ast.parse(spelt))) == 6
    assert len(_wire_spellings("report", ast.parse(spelt))) == 5  # its dicts are table rows
