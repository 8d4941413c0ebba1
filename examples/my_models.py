"""Models of your own for tunekit: a callable (a function or a class) whose keyword args the spec
gives under `model.args` and may sweep as `model.args.NAME`. Each returns an nn.Module that maps
images N×C×H×W to N×classes logits. `fashion_mnist.yaml` beside this file sweeps WideCNN."""

from __future__ import annotations

import torch
from torch import nn


def mlp(hidden: int = 128, image_pixels: int = 28 * 28, classes: int = 10) -> nn.Module:
    """One hidden layer. No dropout, so tunekit can pack it (train several trials as one)."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(image_pixels, hidden), nn.ReLU(), nn.Linear(hidden, classes)
    )


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BN: BatchNorm2d; GN: GroupNorm(4); LN: GroupNorm(1). Anything else is an error, never a
    silent Identity."""
    layers = {
        "BN": lambda: nn.BatchNorm2d(channels),
        "GN": lambda: nn.GroupNorm(4, channels),
        "LN": lambda: nn.GroupNorm(1, channels),
    }
    if kind not in layers:
        raise ValueError(f"norm must be one of {sorted(layers)}, got {kind!r}")
    return layers[kind]()


class WideCNN(nn.Module):
    """Two conv blocks of `width` and 2·`width` channels, each Conv3×3 → norm → ReLU → 2×2 max
    pool, then global average pooling and a linear head."""

    def __init__(self, width: int = 16, norm: str = "BN", channels: int = 1, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1, bias=False),
            norm_layer(norm, width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            norm_layer(norm, 2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
