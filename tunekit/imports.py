"""Your own code, named in a spec by import path ("package.module:callable"): found, checked
against the args the spec gives it, and, where it lives in a folder rather than installed,
shipped to Ray's workers (`runtime_env` py_modules).

Import paths resolve as Python's own imports do, after the spec's folder and the current folder
(`search_here`): a module beside the spec is found without installing it.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tunekit.errors import Problem, SpecError


def search_here(*folders: Path | str) -> None:
    """Let import paths find modules in these folders (the spec's, the current one), after any
    installed module of the same name."""
    for folder in folders:
        path = str(Path(folder).resolve())
        if path not in sys.path:
            sys.path.append(path)


def resolve(target: str, key: str) -> Callable[..., Any]:
    """The callable at "module:attr"; a SpecError on `key` if the module or attribute is missing,
    or the module fails to import."""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise SpecError(
                [
                    Problem(
                        key,
                        f"no module named {e.name!r} (looked in the spec's "
                        f"folder, the current folder and the installed "
                        f"packages)",
                    )
                ]
            ) from None
        raise SpecError([Problem(key, f"{module_name} failed to import: {e}")]) from None
    except Exception as e:  # its own code raised on import
        raise SpecError(
            [Problem(key, f"{module_name} failed to import: {type(e).__name__}: {e}")]
        ) from None
    found: Any = module
    for part in attr.split("."):
        if not hasattr(found, part):
            names = [
                n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))
            ]
            raise SpecError(
                [
                    Problem(
                        key,
                        f"module {module_name} has no {attr!r} (it has: "
                        f"{', '.join(names) or 'nothing callable'})",
                    )
                ]
            )
        found = getattr(found, part)
    if not callable(found):
        raise SpecError([Problem(key, f"{target} is not callable")])
    return found


def check_args(fn: Callable[..., Any], args: Mapping[str, Any], key: str) -> None:
    """A SpecError on `key` (e.g. model.args) if `fn` cannot take these keyword args."""
    try:
        inspect.signature(fn).bind(**args)
    except TypeError as e:
        raise SpecError(
            [
                Problem(
                    key,
                    f"{getattr(fn, '__qualname__', fn)}"
                    f"{_signature(fn)} does not take these args: {e}",
                )
            ]
        ) from None
    except ValueError:  # no signature to read (a builtin): the call will tell
        pass


def _signature(fn: Callable[..., Any]) -> str:
    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return "(...)"


def to_ship(targets: list[str]) -> list[str]:
    """The files or package folders of the modules these import paths name that no installed
    distribution provides: what Ray's workers need sent (`py_modules`). Installed modules are
    left alone (the workers have them, or the sweep fails there with their name)."""
    import importlib.metadata

    installed = importlib.metadata.packages_distributions()
    out: list[str] = []
    for target in targets:
        top = target.partition(":")[0].split(".")[0]
        if top in installed or top in sys.stdlib_module_names:
            continue
        module = sys.modules.get(top) or importlib.import_module(top)
        where = module.__path__[0] if hasattr(module, "__path__") else module.__file__
        if where and where not in out:
            out.append(where)
    return out
