"""The seed CNN (~7.3k parameters) and the one factory its norm layers come from."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tunekit.spec import CHANNELS  # output channels of the six conv blocks

POOL_AFTER = (1, 3, 5)  # a 2×2 max-pool follows blocks 2, 4 and 6


def make_norm(kind: str, channels: int, groups: int = 4) -> nn.Module:
    """BN = BatchNorm2d, GN = GroupNorm(groups), LN = GroupNorm(1): LayerNorm over (C, H, W)."""
    if kind == "BN":
        return nn.BatchNorm2d(channels)
    if kind == "GN":
        return nn.GroupNorm(groups, channels)
    if kind == "LN":
        return nn.GroupNorm(1, channels)
    raise ValueError(f"unknown norm {kind!r}; valid: 'BN', 'GN', 'LN'")


class Dropout(nn.Module):
    """Element-wise dropout, as nn.Dropout, with a cheaper mask on CPU and a generator of its own.

    On CPU, torch's Bernoulli sampler draws one 64-bit random number per element and costs a third
    of a training step here; this draws one per four elements and compares 16-bit slices of it
    with p (exact to 1/65536). On other devices the mask is torch's Bernoulli draw. Masks come
    from `generator` (None: torch's default), so each trial of a pack draws its own.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self._threshold = -(2**15) + round(p * 2**16)  # int16 slices below this are dropped
        self.generator: torch.Generator | None = None

    def mask(self, shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
        """The kept elements of a tensor of `shape`, scaled by 1 / (1 - p)."""
        n = shape.numel()
        if like.device.type == "cpu":
            bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(
                -(2**63), None, generator=self.generator)
            keep = bits.view(torch.int16)[:n].view(shape) >= self._threshold
        else:
            keep = torch.empty(shape, device=like.device).bernoulli_(
                1 - self.p, generator=self.generator)
        return keep.to(like.dtype) * (1 / (1 - self.p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * self.mask(x.shape, x)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Net(nn.Module):
    """The published model (7,288 parameters): six blocks Conv3×3 (no bias) → ReLU → Norm, with
    Dropout after the norm of blocks 1–5 and a 2×2 max-pool after blocks 2, 4 and 6; block 6 pools
    first and then drops out. Then global average pooling, a 1×1 conv head without bias, and
    log_softmax."""

    def __init__(self, norm: str = "GN", groups: int = 4, dropout: float = 0.069):
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = 1
        for i, c_out in enumerate(CHANNELS):
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.ReLU(),
                       make_norm(norm, c_out, groups)]
            last = i == len(CHANNELS) - 1
            tail = [nn.MaxPool2d(2)] if i in POOL_AFTER else []
            blocks += [*tail, Dropout(dropout)] if last else [Dropout(dropout), *tail]
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c_in, 10, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.head(self.features(x)).flatten(1), dim=1)
