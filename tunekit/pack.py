"""Packed training: K trials of the same shape trained as one fused network (horizontal fusion,
as in HFTA), K = 1 being an ordinary trial.

For this CNN the fusion is exact: the members' Conv3×3 and 1×1 head become one convolution with
`groups=K` over their kernels side by side, BatchNorm over K·C channels is each member's own
BatchNorm, GroupNorm(g) becomes GroupNorm(K·g) and LayerNorm = GroupNorm(K); ReLU and pooling act
per channel, and each member's dropout mask comes from its own generator. Each member keeps its
own `Net` (its parameters are the leaves its optimizer steps), so what a member learns, and its
exported weights, are its alone.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tunekit.model import Dropout, Net


class Packed(nn.Module):
    """The members' nets run as one: input N×K×28×28 (member k's images in channel k), output
    N×K×10 log-probabilities (member k's in [:, k])."""

    def __init__(self, nets: Sequence[Net]):
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.k = len(nets)
        # BatchNorm running statistics: one fused buffer per layer, which each member's buffers
        # view, so the fused update is every member's own update.
        self._stats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for i, layer in enumerate(nets[0].features):
            if isinstance(layer, nn.BatchNorm2d):
                c = layer.num_features
                fused = [torch.cat([getattr(n.features[i], name) for n in nets])
                         for name in ("running_mean", "running_var")]
                for k, n in enumerate(nets):
                    for name, buffer in zip(("running_mean", "running_var"), fused):
                        n.features[i]._buffers[name] = buffer[k * c:(k + 1) * c]
                self._stats[i] = (fused[0], fused[1])

    def _cat(self, i: int, name: str) -> torch.Tensor:
        return cat([getattr(n.features[i], name) for n in self.nets])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, k = x, self.k
        for i, layer in enumerate(self.nets[0].features):
            if isinstance(layer, nn.Conv2d):
                h = F.conv2d(h, self._cat(i, "weight"), padding=layer.padding, groups=k)
            elif isinstance(layer, nn.BatchNorm2d):
                mean, var = self._stats[i]
                h = F.batch_norm(h, mean, var, self._cat(i, "weight"), self._cat(i, "bias"),
                                 self.training, layer.momentum, layer.eps)
                if self.training:
                    for n in self.nets:
                        n.features[i].num_batches_tracked += 1
            elif isinstance(layer, nn.GroupNorm):
                h = F.group_norm(h, layer.num_groups * k, self._cat(i, "weight"),
                                 self._cat(i, "bias"), layer.eps)
            elif isinstance(layer, Dropout):
                if self.training and layer.p:
                    shape = torch.Size((h.shape[0], h.shape[1] // k, *h.shape[2:]))
                    h = h * cat([n.features[i].mask(shape, h) for n in self.nets], 1)
            else:  # ReLU, MaxPool2d: per channel, as they are
                h = layer(h)
        h = F.adaptive_avg_pool2d(h, 1)
        h = F.conv2d(h, cat([n.head[1].weight for n in self.nets]), groups=k)
        return F.log_softmax(h.view(h.shape[0], k, -1), dim=-1)


def cat(tensors: Sequence[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """torch.cat, without the copy for a pack of one (an ordinary trial pays nothing for packing)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(list(tensors), dim)


def member_state(net: Net) -> dict[str, Any]:
    """A member's weights as a plain `Net` state dict (its own tensors, not views of the pack's)."""
    return {name: value.detach().clone() for name, value in net.state_dict().items()}
