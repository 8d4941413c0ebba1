"""Datasets as uint8 image tensors: a built-in one by name (`registry`: one file each, as
`mnist.py`, `cifar10.py`), or your own callable by import path. Everything is read
into memory: data larger than memory is out of scope.

`load` is what training uses (cached per process); `check` is what the driver calls before any
trial, so that missing or unreadable files end the sweep with the key named and nothing started.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from tunekit import imports
from tunekit.datasets import registry
from tunekit.errors import DataError, Problem, SpecError
from tunekit.spec import DataSpec


@dataclass(frozen=True)
class Images:
    """A dataset in memory: images uint8 N×C×H×W, labels int64 in 0..classes-1, and the mean and
    std of the training pixels per channel (in [0, 1])."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """One image's shape, C×H×W."""
        return tuple(self.train_images.shape[1:])


def data_root(spec: DataSpec) -> Path:
    """The spec's root, else $TUNEKIT_DATA_DIR, else ./data."""
    return Path(spec.root or os.environ.get("TUNEKIT_DATA_DIR") or "data").expanduser()


def load(spec: DataSpec) -> Images:
    """The dataset a spec names, on the CPU (the first `subset` training images if set)."""
    if spec.import_:
        images = _yours(spec.import_, json.dumps(spec.args, sort_keys=True))
    else:
        images = _built_in(spec.dataset, data_root(spec).resolve(), spec.download)
    if spec.subset is not None:
        if spec.subset > len(images.train_labels):
            raise SpecError(
                [
                    Problem(
                        "data.subset",
                        f"{spec.subset} is more than the "
                        f"{len(images.train_labels)} training images",
                    )
                ]
            )
        images = Images(
            images.train_images[: spec.subset],
            images.train_labels[: spec.subset],
            images.test_images,
            images.test_labels,
            images.mean,
            images.std,
            images.classes,
        )
    return images


def check(spec: DataSpec) -> Images:
    """`load`, with whatever goes wrong as a SpecError naming the key: missing or unreadable
    files (data.root), your loader's failures (data.import, data.args), a subset too large."""
    key = "data.import" if spec.import_ else "data.dataset"
    try:
        return load(spec)
    except DataError as e:
        raise SpecError(
            [Problem("data.root" if not spec.import_ else key, " ".join(str(e).split()))]
        ) from None


@lru_cache(maxsize=4)
def _built_in(dataset: str, root: Path, download: bool) -> Images:
    entry = registry.get(dataset)
    train_x, train_y, test_x, test_y = entry.read(root, download)
    return Images(train_x, train_y, test_x, test_y, entry.mean, entry.std, entry.classes)


@lru_cache(maxsize=4)
def _yours(target: str, args: str) -> Images:
    """Your callable's tensors, checked: uint8 images N×H×W or N×C×H×W, integer labels."""
    fn = imports.resolve(target, "data.import")
    kwargs: dict[str, Any] = json.loads(args)
    imports.check_args(fn, kwargs, "data.args")
    try:
        out = fn(**kwargs)
    except Exception as e:  # its own code: say where, not a traceback
        raise SpecError(
            [Problem("data.import", f"{target} raised {type(e).__name__}: {e}")]
        ) from None
    if not (
        isinstance(out, (tuple, list))
        and len(out) == 4
        and all(isinstance(t, torch.Tensor) for t in out)
    ):
        raise SpecError(
            [
                Problem(
                    "data.import",
                    f"{target} returned {type(out).__name__}; it "
                    "should return four tensors: train_images, "
                    "train_labels, test_images, test_labels",
                )
            ]
        )
    parts = []
    for name, images, labels in (("train", out[0], out[1]), ("test", out[2], out[3])):
        if images.dtype != torch.uint8 or images.dim() not in (3, 4):
            raise SpecError(
                [
                    Problem(
                        "data.import",
                        f"{name} images are {images.dtype} of shape "
                        f"{tuple(images.shape)}; give uint8 N×H×W or "
                        f"N×C×H×W (pixels 0-255)",
                    )
                ]
            )
        if labels.dtype.is_floating_point or labels.shape != images.shape[:1]:
            raise SpecError(
                [
                    Problem(
                        "data.import",
                        f"{name} labels are {labels.dtype} of shape "
                        f"{tuple(labels.shape)}; give one integer "
                        f"label per image",
                    )
                ]
            )
        parts += [images if images.dim() == 4 else images.unsqueeze(1), labels.long()]
    if parts[0].shape[1:] != parts[2].shape[1:]:
        raise SpecError(
            [
                Problem(
                    "data.import",
                    f"train images are {tuple(parts[0].shape[1:])} "
                    f"but test images {tuple(parts[2].shape[1:])}",
                )
            ]
        )
    labels = torch.cat([parts[1], parts[3]])
    if len(labels) == 0 or labels.min() < 0:
        raise SpecError([Problem("data.import", "labels must be 0, 1, 2, ... (none negative)")])
    pixels = parts[0].float().div(255).transpose(0, 1).reshape(parts[0].shape[1], -1)
    mean = tuple(pixels.mean(1).tolist())
    std = tuple(max(s, 1e-6) for s in pixels.std(1).tolist())
    return Images(parts[0], parts[1], parts[2], parts[3], mean, std, int(labels.max()) + 1)
