"""Counting the aten ops a piece of work runs: on a GPU each non-view op is a kernel launch, so
this is how a training step's host cost is measured on any machine (tests, benchmarks/pack.py)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

SYNCS = ("item", "nonzero", "_local_scalar_dense", "equal", "is_nonzero", "tolist")


class OpCounter(TorchDispatchMode):
    """`with OpCounter() as ops: ...` counts every aten op dispatched inside; `ops.launches` the
    ones that are not views (a view launches nothing), `ops.syncs` those that wait for the
    device."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.views = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__
        self.ops[name] += 1
        if func.is_view:
            self.views += 1
        return func(*args, **(kwargs or {}))

    @property
    def launches(self) -> int:
        return sum(self.ops.values()) - self.views

    @property
    def syncs(self) -> dict[str, int]:
        return {name: n for name, n in self.ops.items() if name in SYNCS}


def count(fn: Any, *args: Any, **kwargs: Any) -> OpCounter:
    """The ops of one call of `fn`."""
    with OpCounter() as ops:
        fn(*args, **kwargs)
    return ops
