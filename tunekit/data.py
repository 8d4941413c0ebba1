"""A dataset on the training device, and its batches: gathered, augmented and normalised there,
for every member of a pack in one op each (the files are read by `datasets`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunekit import counter
from tunekit.datasets import loading as datasets
from tunekit.spec import DataSpec


@dataclass(frozen=True)
class Data(datasets.Images):
    """A dataset (`datasets.Images`) with its tensors on the training device, and how to augment
    its training images."""

    rotation: float = 0.0  # ± degrees
    crop: int = 0  # ± pixels of shift (pad and crop back)
    flip: bool = False  # horizontal, half the images

    def standardize_(self, x: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1], N×C×H×W, standardised per channel in place."""
        if len(self.mean) == 1:
            return x.sub_(self.mean[0]).div_(self.std[0])
        mean = torch.tensor(self.mean, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(-1, 1, 1)
        return x.sub_(mean).div_(std)

    def normalize(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 N×C×H×W → float N×C×H×W, standardised."""
        return self.standardize_(images_u8.float().div_(255))


def load(spec: DataSpec, device: torch.device | str = "cpu") -> Data:
    found = datasets.load(spec)
    return Data(
        found.train_images.to(device),
        found.train_labels.to(device),
        found.test_images.to(device),
        found.test_labels.to(device),
        found.mean,
        found.std,
        found.classes,
        spec.rotation,
        spec.crop,
        spec.flip,
    )


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


def shift_flip(
    x: torch.Tensor,
    degrees: torch.Tensor | None,
    shift: torch.Tensor | None,
    flip: torch.Tensor | None,
) -> torch.Tensor:
    """Rotate, shift by whole pixels and mirror each image of N×C×H×W `x` as its own draws say,
    filling with 0, in one resampling: a shift of (dx, dy) is a random crop of the image padded
    by |dx|, |dy| (nearest-neighbour lands exactly on pixels)."""
    n, _, h, w = x.shape
    rad = (degrees if degrees is not None else torch.zeros(n, device=x.device)) * (math.pi / 180)
    cos, sin = rad.cos(), rad.sin()
    sign = 1 - 2 * flip.to(x.dtype) if flip is not None else torch.ones_like(cos)
    dx, dy = (
        (shift[:, 0] * (2 / w), shift[:, 1] * (2 / h))
        if shift is not None
        else (torch.zeros_like(cos), torch.zeros_like(cos))
    )
    theta = torch.stack(
        [torch.stack([cos * sign, -sin, dx], 1), torch.stack([sin * sign, cos, dy], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def steps(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, size) of each training batch of an epoch: full batches, then the rest (every
    image is trained on; the last batch is smaller when batch_size does not divide n)."""
    return [(i, min(batch_size, n - i)) for i in range(0, n, batch_size)]


@dataclass(frozen=True)
class Epoch:
    """Every member's batch order and augmentation draws for one epoch, drawn from its own keys
    (`counter`), so each is what the member draws alone, whatever its pack-mates."""

    order: torch.Tensor  # [K, n] image indices
    angles: torch.Tensor | None  # [K, n] degrees, None without rotation
    shifts: torch.Tensor | None = None  # [K, n, 2] whole pixels (x, y), None without crop
    flips: torch.Tensor | None = None  # [K, n] bool, None without flip


def epoch(data: Data, seeds: torch.Tensor, number: int) -> Epoch:
    """Epoch `number`'s draws for members with `seeds` (int32, one per member)."""
    n = len(data.train_labels)
    order = counter.permutation(counter.keys(seeds, counter.ORDER, number), n)
    angles = shifts = flips = None
    if data.rotation:
        u = counter.uniform(counter.keys(seeds, counter.ROTATION, number), n)
        angles = (u * 2 - 1) * data.rotation
    if data.crop:
        u = counter.uniform(counter.keys(seeds, counter.CROP, number), 2 * n).view(-1, n, 2)
        shifts = (u * (2 * data.crop + 1)).floor_().clamp_(max=2 * data.crop) - data.crop
    if data.flip:
        flips = counter.uniform(counter.keys(seeds, counter.FLIP, number), n) < 0.5
    return Epoch(order, angles, shifts, flips)


def train_batch(data: Data, e: Epoch, start: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images N×K×C×H×W (member k's in [:, k]: augmented, normalised) and labels N×K of one
    step, for all members in one gather and one resampling."""
    idx = e.order[:, start : start + size]  # [K, N]
    k = idx.shape[0]
    x = data.train_images[idx].view(k * size, *data.train_images.shape[1:]).float().div_(255)
    part = slice(start, start + size)
    if e.shifts is not None or e.flips is not None:
        x = shift_flip(
            x,
            None if e.angles is None else e.angles[:, part].reshape(-1),
            None if e.shifts is None else e.shifts[:, part].reshape(-1, 2),
            None if e.flips is None else e.flips[:, part].reshape(-1),
        )
    elif e.angles is not None:  # the digits' rotation alone, as it always was drawn
        x = rotate(x, e.angles[:, part].reshape(-1))
    x = data.standardize_(x).view(k, size, *x.shape[1:])
    return x.transpose(0, 1).contiguous(), data.train_labels[idx].t().contiguous()


def test_batches(data: Data, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, len(data.test_labels), batch_size):
        yield (
            data.normalize(data.test_images[i : i + batch_size]),
            data.test_labels[i : i + batch_size],
        )
