"""Datasets as uint8 tensors on the training device; batching and augmentation done there too.

Files are read with torchvision's dataset classes. Those read the extracted IDX files of
`<root>/<Class>/raw/`; when a folder holds only the `.gz` archives (a read-only shared copy, say),
they are extracted once into tunekit's cache, under a file lock so that trials starting together
do not race.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import math
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torchvision import datasets

from tunekit import counter
from tunekit.errors import DataError
from tunekit.spec import DataSpec

CLASSES = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST,
           "kmnist": datasets.KMNIST}
STATS = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2860, 0.3530),
         "kmnist": (0.1918, 0.3483)}  # mean and std of the training pixels, in [0, 1]


def data_root(spec: DataSpec) -> Path:
    """The spec's root, else $TUNEKIT_DATA_DIR, else ./data."""
    return Path(spec.root or os.environ.get("TUNEKIT_DATA_DIR") or "data").expanduser()


def cache_dir() -> Path:
    return Path(os.environ.get("TUNEKIT_CACHE_DIR") or Path.home() / ".cache" / "tunekit")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _file_names(cls: type) -> list[str]:
    """The extracted IDX file names a torchvision MNIST-style class reads."""
    return [Path(url).name.removesuffix(".gz") for url, _md5 in cls.resources]


def _has(raw: Path, names: list[str], suffix: str = "") -> bool:
    return all((raw / (n + suffix)).is_file() for n in names)


def prepare(dataset: str, root: Path, download: bool = True) -> Path:
    """A root from which torchvision's class reads `dataset`; extracts or downloads as needed."""
    cls = CLASSES[dataset]
    names = _file_names(cls)
    raw = root / cls.__name__ / "raw"
    if _has(raw, names):
        return root
    if _has(raw, names, ".gz"):
        key = hashlib.sha1(str(raw.resolve()).encode()).hexdigest()[:12]
        cached = cache_dir() / "extracted" / key
        target = cached / cls.__name__ / "raw"
        with _locked(cached / ".lock"):
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
        created = next((p for p in (*reversed(top.parents), top, top / cls.__name__, raw)
                        if not p.exists()), None)  # the first folder the download would make
        lock = root / f".{cls.__name__}.lock"
        try:
            with _locked(lock):
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
    raise DataError(f"{dataset} files not found in {raw} and {reason}.\n"
                    f"Expected: {expected}.\nPoint data.root or $TUNEKIT_DATA_DIR at the folder "
                    f"that holds {cls.__name__}/raw/.")


@lru_cache(maxsize=4)
def _load(dataset: str, root: Path, download: bool, train: bool) -> tuple[torch.Tensor, ...]:
    ds = CLASSES[dataset](str(prepare(dataset, root, download)), train=train, download=False)
    return ds.data.contiguous(), ds.targets.long()


@dataclass(frozen=True)
class Data:
    """Train and test images (uint8, N×28×28) and labels (int64), all on one device."""
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: float
    std: float

    def normalize(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 N×H×W → float N×1×H×W, standardised."""
        return images_u8.unsqueeze(1).float().div_(255).sub_(self.mean).div_(self.std)


def load(spec: DataSpec, device: torch.device | str = "cpu") -> Data:
    root, dl = data_root(spec), spec.download
    train_x, train_y = _load(spec.dataset, root, dl, True)
    test_x, test_y = _load(spec.dataset, root, dl, False)
    if spec.subset is not None:
        train_x, train_y = train_x[: spec.subset], train_y[: spec.subset]
    return Data(train_x.to(device), train_y.to(device), test_x.to(device), test_y.to(device),
                *STATS[spec.dataset])


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image of N×C×H×W `x` by its own angle about the centre, filling with 0.

    Nearest-neighbour, as torchvision's RandomRotation by default (and the seed): bilinear
    blurs the strokes and cost ~0.5% test accuracy after one epoch here.
    """
    rad = degrees * (math.pi / 180)
    cos, sin, zero = rad.cos(), rad.sin(), torch.zeros_like(rad)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def steps(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, size) of each training batch of an epoch: full batches, then the rest (every
    image is trained on; the last batch is smaller when batch_size does not divide n)."""
    return [(i, min(batch_size, n - i)) for i in range(0, n, batch_size)]


@dataclass(frozen=True)
class Epoch:
    """Every member's batch order and rotation angles for one epoch, drawn from its own keys
    (`counter`), so each is what the member draws alone, whatever its pack-mates."""
    order: torch.Tensor  # [K, n] image indices
    angles: torch.Tensor | None  # [K, n] degrees, None without rotation


def epoch(data: Data, seeds: torch.Tensor, number: int, rotation: float) -> Epoch:
    """Epoch `number`'s draws for members with `seeds` (int32, one per member)."""
    n = len(data.train_labels)
    order = counter.permutation(counter.keys(seeds, counter.ORDER, number), n)
    angles = None
    if rotation:
        u = counter.uniform(counter.keys(seeds, counter.ROTATION, number), n)
        angles = (u * 2 - 1) * rotation
    return Epoch(order, angles)


def train_batch(data: Data, e: Epoch, start: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images N×K×H×W (member k's in channel k: augmented, normalised) and labels N×K of one
    step, for all members in one gather and one rotation."""
    idx = e.order[:, start:start + size]  # [K, N]
    k = idx.shape[0]
    x = data.train_images[idx].view(k * size, 1, *data.train_images.shape[1:]).float().div_(255)
    if e.angles is not None:
        x = rotate(x, e.angles[:, start:start + size].reshape(-1))
    x = x.sub_(data.mean).div_(data.std).view(k, size, *x.shape[2:])
    return x.transpose(0, 1).contiguous(), data.train_labels[idx].t().contiguous()


def test_batches(data: Data, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, len(data.test_labels), batch_size):
        yield data.normalize(data.test_images[i:i + batch_size]), data.test_labels[i:i + batch_size]
