"""A registry of built-in entries (models, datasets), each added by a file of its own package
when that file is imported (as timm's `register_model`): the package's files are imported the
first time the registry is read, so a new file is a new entry and nothing else names it."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name, added by the files of `package`."""

    def __init__(self, package: str, kind: str) -> None:
        self.package, self.kind = package, kind  # kind: what an entry is, for messages
        self.entries: dict[str, T] = {}
        self.loaded = False

    def add(self, name: str, entry: T) -> T:
        if name in self.entries:
            raise ValueError(f"two {self.kind}s are named {name!r}")
        self.entries[name] = entry
        return entry

    def all(self) -> dict[str, T]:
        """Every entry by name, each file of the package imported once."""
        if not self.loaded:
            for found in pkgutil.iter_modules(importlib.import_module(self.package).__path__):
                importlib.import_module(f"{self.package}.{found.name}")
            self.loaded = True
        return self.entries

    def get(self, name: str) -> T:
        """The entry `name`; a ValueError listing the valid names if there is none."""
        found = self.all()
        if name not in found:
            raise ValueError(f"no {self.kind} {name!r}; valid: {', '.join(sorted(found))}")
        return found[name]
