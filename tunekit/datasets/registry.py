"""The registry of built-in datasets: each is one file in `tunekit/datasets/` that registers
itself: its reader, image shape, classes, pixel statistics and default augmentations. Adding a
dataset is adding that file; nothing else names it.

The spec validates `data.dataset` against it and takes the augmentation defaults from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunekit.registry import Registry

if TYPE_CHECKING:
    import torch

# A reader: (root folder, whether it may download) -> train images uint8 N×C×H×W (or N×H×W),
# train labels, test images, test labels; a DataError when the files are missing or unreadable
Reader = Callable[[Path, bool], tuple["torch.Tensor", ...]]


@dataclass(frozen=True)
class Augment:
    """Default augmentations of a dataset's training images (the spec may set each)."""

    rotation: float = 0.0  # ± degrees
    crop: int = 0  # pad by this many pixels and crop back
    flip: bool = False  # horizontal flip of half the images

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Dataset:
    """A built-in dataset: its name in specs, how to read it, and what its images are."""

    name: str
    read: Reader
    shape: tuple[int, int, int]  # one image, C×H×W
    classes: int
    mean: tuple[float, ...]  # of the training pixels per channel, in [0, 1]
    std: tuple[float, ...]
    augment: Augment = Augment()


DATASETS: Registry[Dataset] = Registry("tunekit.datasets", "built-in dataset")


def register(entry: Dataset) -> Dataset:
    """Register a built-in dataset from its own file: `register(Dataset("mnist", ...))`."""
    return DATASETS.add(entry.name, entry)


def datasets() -> dict[str, Dataset]:
    """Every built-in dataset by name."""
    return DATASETS.all()


def get(name: str) -> Dataset:
    """The built-in dataset `name`; a ValueError listing the valid names if there is none."""
    return DATASETS.get(name)
