"""The seed CNN: parameter count, shapes and norm layers for every variant; the dropout mask."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tunekit.models.seed_cnn import Dropout, Net, make_norm


@pytest.mark.parametrize("norm", ["BN", "GN", "LN"])
def test_parameter_count_and_output(norm: str) -> None:
    torch.manual_seed(0)
    net = Net(norm)
    # the published count: 6 bias-free 3×3 convs (6,984) + a bias-free 1×1 head (160) + a scale
    # and shift per channel of the six norms (2 × 72 = 144)
    assert sum(p.numel() for p in net.parameters()) == 7288
    out = net(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, 10)
    assert torch.allclose(out.exp().sum(1), torch.ones(5), atol=1e-5)  # log-probabilities


@pytest.mark.parametrize(
    "norm,cls,groups",
    [("BN", nn.BatchNorm2d, None), ("GN", nn.GroupNorm, 4), ("LN", nn.GroupNorm, 1)],
)
def test_norm_factory(norm: str, cls: type, groups: int | None) -> None:
    layer = make_norm(norm, 16, groups=4)
    assert type(layer) is cls and getattr(layer, "num_groups", None) == groups
    norms = [m for m in Net(norm).modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
    assert len(norms) == 6 and all(type(m) is cls for m in norms)


def test_factory_rejects_unknown_norm_instead_of_skipping_it() -> None:
    with pytest.raises(ValueError, match="'BN', 'GN', 'LN'"):
        make_norm("XN", 8)


@pytest.mark.parametrize(
    "norm,layer", [("BN", "BatchNorm2d"), ("GN", "GroupNorm"), ("LN", "GroupNorm")]
)
def test_architecture_order(norm: str, layer: str) -> None:
    kinds = [type(m).__name__ for m in Net(norm).features]
    block = ["Conv2d", "ReLU", layer]
    # blocks 1-5 drop out after the norm (before a pool); block 6 pools first, then drops out
    assert kinds == (block + ["Dropout"]) * 2 + ["MaxPool2d"] + (block + ["Dropout"]) * 2 + [
        "MaxPool2d"
    ] + block + ["Dropout"] + block + ["MaxPool2d", "Dropout"]
    head = [type(m).__name__ for m in Net(norm).head]
    assert (
        head == ["AdaptiveAvgPool2d", "Conv2d", "Flatten", "LogSoftmax"]
        and Net(norm).head[1].bias is None
    )
    convs = [m for m in Net("GN").features if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (1, 8),
        (8, 8),
        (8, 8),
        (8, 16),
        (16, 16),
        (16, 16),
    ]
    assert all(c.bias is None and c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)


def test_dropout_threshold_drops_p_of_16_bit_values() -> None:
    drop = Dropout(0.069)
    values = torch.arange(-(2**15), 2**15)  # every int16 once
    assert abs((values < drop.threshold).float().mean().item() - 0.069) < 1 / 2**16
    assert Dropout(0.0).threshold == -(2**15)  # p = 0 drops nothing


def test_dropout_gradient_and_eval_mode() -> None:
    drop = Dropout(0.5).train()
    x = torch.randn(1000, requires_grad=True)
    y = drop(x)
    y.sum().backward()
    kept = y != 0
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 2.0))
    assert torch.all(x.grad[~kept] == 0)
    drop.eval()
    assert torch.equal(drop(x), x)
