"""Datasets in the IDX format (MNIST and its kin): files read with torchvision's dataset classes.
Each dataset is its own file (`mnist.py`, ...) that gives its class to `reader`.

Those read the extracted files of `<root>/<Class>/raw/`; when a folder holds only the `.gz`
archives (a read-only shared copy, say), they are extracted once into tunekit's cache, under a
file lock so that trials starting together do not race.
"""

from __future__ import annotations

import fcntl
import functools
import gzip
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from tunekit.errors import DataError


def cache_dir() -> Path:
    return Path(os.environ.get("TUNEKIT_CACHE_DIR") or Path.home() / ".cache" / "tunekit")


@contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _file_names(cls: Any) -> list[str]:
    """The extracted IDX file names a torchvision MNIST-style class reads."""
    return [Path(url).name.removesuffix(".gz") for url, _md5 in cls.resources]


def _has(raw: Path, names: list[str], suffix: str = "") -> bool:
    return all((raw / (n + suffix)).is_file() for n in names)


def reader(dataset: str, cls: Any) -> Callable[[Path, bool], tuple[torch.Tensor, ...]]:
    """The reader of an IDX dataset that torchvision's MNIST-style class `cls` reads."""
    return functools.partial(read, dataset, cls)


def prepare(dataset: str, cls: Any, root: Path, download: bool = True) -> Path:
    """A root from which torchvision's class reads `dataset`; extracts or downloads as needed."""
    names = _file_names(cls)
    raw = root / cls.__name__ / "raw"
    if _has(raw, names):
        return root
    if _has(raw, names, ".gz"):
        key = hashlib.sha1(str(raw.resolve()).encode()).hexdigest()[:12]
        cached = cache_dir() / "extracted" / key
        target = cached / cls.__name__ / "raw"
        with locked(cached / ".lock"):
            for name in names:
                if not (target / name).is_file():
                    tmp = target / f"{name}.tmp{os.getpid()}"
                    target.mkdir(parents=True, exist_ok=True)
                    with gzip.open(raw / f"{name}.gz", "rb") as src, open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    os.replace(tmp, target / name)  # atomic: readers never see half a file
        return cached
    expected = ", ".join(f"{n}[.gz]" for n in names)
    if download:
        top = root.absolute()
        created = next(
            (p for p in (*reversed(top.parents), top, top / cls.__name__, raw) if not p.exists()),
            None,
        )  # the first folder the download would make
        lock = root / f".{cls.__name__}.lock"
        try:
            with locked(lock):
                for train in (True, False):
                    cls(str(root), train=train, download=True)
            return root
        except Exception as e:  # any network or integrity failure: say what was expected where
            reason = f"download failed ({type(e).__name__}: {e})"
            if created is not None:  # leave nothing behind: the folders made for it, its lock
                shutil.rmtree(created, ignore_errors=True)
            lock.unlink(missing_ok=True)
    else:
        reason = "data.download is off"
    raise DataError(
        f"{dataset} files not found in {raw} and {reason}.\n"
        f"Expected: {expected}.\nPoint data.root or $TUNEKIT_DATA_DIR at the folder "
        f"that holds {cls.__name__}/raw/."
    )


def read(dataset: str, cls: Any, root: Path, download: bool) -> tuple[torch.Tensor, ...]:
    """Train images (uint8 N×1×28×28), labels, test images, labels of an MNIST-style dataset."""
    ready = str(prepare(dataset, cls, root, download))
    out: list[torch.Tensor] = []
    for train in (True, False):
        try:
            ds = cls(ready, train=train, download=False)
        except (OSError, ValueError, RuntimeError, AssertionError) as e:  # cut short, not IDX
            raise DataError(
                f"{dataset} files in {Path(ready) / cls.__name__ / 'raw'}"
                f" cannot be read ({type(e).__name__}: {e})"
            ) from None
        out += [ds.data.unsqueeze(1).contiguous(), ds.targets.long()]
    return tuple(out)
