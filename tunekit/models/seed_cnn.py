"""The built-in `seed_cnn`: the published CNN (7,288 parameters) and the one factory its norm
layers come from."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tunekit.spec.trial import CHANNELS  # output channels of the six conv blocks

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


class Dropout(nn.Dropout):
    """nn.Dropout, as a Net used alone draws it. In training, a pack draws each member's mask
    from that member's key instead (`pack.Packed`): 16 random bits per element, dropped below
    `threshold`, so p is exact to 1/65536."""

    @property
    def threshold(self) -> int:
        """int16 values below this are dropped (a fraction p of them)."""
        return -(2**15) + round(self.p * 2**16)


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
            blocks += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.ReLU(),
                make_norm(norm, c_out, groups),
            ]
            last = i == len(CHANNELS) - 1
            tail = [nn.MaxPool2d(2)] if i in POOL_AFTER else []
            blocks += [*tail, Dropout(dropout)] if last else [Dropout(dropout), *tail]
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c_in, 10, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.head(self.features(x)).flatten(1), dim=1)
