"""The built-in `seed_cnn`: the published CNN (7,288 parameters on MNIST), its args and the one
factory its norm layers come from. It takes its input channels and classes from the dataset."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, ValidationInfo, field_validator
from torch import nn

from tunekit.models.registry import register
from tunekit.spec.base import Strict

CHANNELS = (8, 8, 8, 16, 16, 16)  # output channels of the six conv blocks
POOL_AFTER = (1, 3, 5)  # a 2×2 max-pool follows blocks 2, 4 and 6


class Args(Strict):
    """model.args of seed_cnn (sweep them as model.args.norm, ...)."""

    norm: Literal["BN", "GN", "LN"] = "GN"  # BatchNorm2d | GroupNorm(groups) | GroupNorm(1)
    groups: PositiveInt = 4  # GN only: GroupNorm groups; must divide every channel count
    dropout: float = Field(0.069, ge=0, lt=1)  # drop probability after each conv block

    @field_validator("groups")
    @classmethod
    def _groups_divide_channels(cls, groups: int, info: ValidationInfo) -> int:
        if info.data.get("norm") == "GN" and any(c % groups for c in CHANNELS):
            valid = [g for g in range(1, min(CHANNELS) + 1) if all(c % g == 0 for c in CHANNELS)]
            raise ValueError(
                f"GroupNorm groups={groups} does not divide every layer's channel "
                f"count {sorted(set(CHANNELS))}; valid: {valid}"
            )
        return groups


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
    from that member's key instead (`fused.Fused`): 16 random bits per element, dropped below
    `threshold`, so p is exact to 1/65536."""

    @property
    def threshold(self) -> int:
        """int16 values below this are dropped (a fraction p of them)."""
        return -(2**15) + round(self.p * 2**16)


class Net(nn.Sequential):
    """The published model: six blocks Conv3×3 (no bias) → ReLU → Norm, with Dropout after the
    norm of blocks 1–5 and a 2×2 max-pool after blocks 2, 4 and 6; block 6 pools first and then
    drops out. Then global average pooling, a 1×1 conv head without bias, and log_softmax. A chain
    of layers (nn.Sequential's own forward: `features`, then `head`), so a pack of it is fused
    layer by layer (`fused.Fused`)."""

    def __init__(
        self,
        norm: str = "GN",
        groups: int = 4,
        dropout: float = 0.069,
        in_channels: int = 1,
        classes: int = 10,
    ):
        blocks: list[nn.Module] = []
        c_in = in_channels
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
        super().__init__()
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(c_in, classes, 1, bias=False),
            nn.Flatten(1),
            nn.LogSoftmax(dim=1),
        )


@register("seed_cnn", Args, output="log_probs")
def build(args: Args, shape: tuple[int, ...], classes: int) -> nn.Module:
    return Net(args.norm, args.groups, args.dropout, in_channels=shape[0], classes=classes)
