"""CIFAR-10 in its python format: `<root>/cifar-10-batches-py/` with `data_batch_1` .. `_5` and
`test_batch` (pickled dicts of `data`, uint8 N×3072, and `labels`), as its site ships it. A root
that holds only the archive (`cifar-10-python.tar.gz`) is extracted once into tunekit's cache."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import torch

from tunekit.datasets.idx import cache_dir, locked
from tunekit.datasets.registry import Augment, Dataset, register
from tunekit.errors import DataError

FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
TEST = ["test_batch"]
MEAN = (0.4914, 0.4822, 0.4465)  # of the training pixels, per channel, in [0, 1]
STD = (0.2470, 0.2435, 0.2616)


def folder(root: Path, download: bool) -> Path:
    """The folder that holds the batches: under root, extracted from its archive, or
    downloaded (with torchvision) when `download` is on."""
    here = root / FOLDER
    if all((here / n).is_file() for n in TRAIN + TEST):
        return here
    if (root / ARCHIVE).is_file():
        key = hashlib.sha1(str((root / ARCHIVE).resolve()).encode()).hexdigest()[:12]
        cached = cache_dir() / "extracted" / key
        with locked(cached / ".lock"):
            if not (cached / FOLDER / TEST[0]).is_file():
                tmp = cached / f"tmp{os.getpid()}"
                with tarfile.open(root / ARCHIVE) as tar:
                    tar.extractall(tmp, filter="data")
                shutil.rmtree(cached / FOLDER, ignore_errors=True)
                os.replace(tmp / FOLDER, cached / FOLDER)
                shutil.rmtree(tmp, ignore_errors=True)
        return cached / FOLDER
    reason = "data.download is off"
    if download:
        try:
            from torchvision import datasets

            with locked(root / ".cifar10.lock"):
                datasets.CIFAR10(str(root), train=True, download=True)
            return here
        except Exception as e:  # any network or integrity failure: say what was expected where
            reason = f"download failed ({type(e).__name__}: {e})"
    raise DataError(
        f"cifar10 files not found in {here} (nor {ARCHIVE} in {root}) and {reason}. "
        f"Expected: {', '.join(TRAIN + TEST)}. Point data.root or $TUNEKIT_DATA_DIR "
        f"at the folder that holds {FOLDER}/."
    )


def _batches(where: Path, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for name in names:
        try:
            with open(where / name, "rb") as f:
                batch = pickle.load(f, encoding="latin1")
            data = np.asarray(batch["data"], dtype=np.uint8)
            images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
            labels.append(torch.tensor(batch["labels"], dtype=torch.long))
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError) as e:
            raise DataError(
                f"cifar10 file {where / name} cannot be read ({type(e).__name__}: {e})"
            ) from None
    return torch.cat(images), torch.cat(labels)


def read(
    root: Path, download: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train images (uint8 N×3×32×32), labels, test images, labels."""
    where = folder(root, download)
    (train_x, train_y), (test_x, test_y) = _batches(where, TRAIN), _batches(where, TEST)
    return train_x, train_y, test_x, test_y


register(
    Dataset(
        "cifar10", read, (3, 32, 32), 10, MEAN, STD, Augment(crop=4, flip=True)
    )  # random crop (pad 4) and horizontal flip, as CIFAR training usually is
)
