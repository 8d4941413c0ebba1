"""A pack fused layer by layer, as HFTA's ops: the op map `FUSED` from a torch layer type to its
fused twin over K members, whose activations lie side by side in the channels (N×(K·C)×H×W);
`Fused` runs a model that is a chain of such layers as one network. Exact: each member computes
what it would alone (a convolution over K members is one with K times the groups, BatchNorm over
K·C channels is each member's own, GroupNorm(g) becomes GroupNorm(K·g); ReLU and pooling act per
channel; each member's dropout mask is drawn from its own key). Adding a layer type is one entry
of the map."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from tunekit import counter
from tunekit.models.seed_cnn import Dropout
from tunekit.pack import Stack

FusedOp = Callable[["Fused", int, nn.Module, torch.Tensor, "Masks"], torch.Tensor]
Masks = dict[int, torch.Tensor]  # a dropout layer's index -> its mask for this batch


def _conv(pack: Fused, i: int, layer: nn.Module, h: torch.Tensor, masks: Masks) -> torch.Tensor:
    conv = cast(nn.Conv2d, layer)  # K members' convolution: one with K times the groups
    w, name = pack.leaves, pack.names[i]
    bias = w.get(f"{name}.bias")
    padding = cast("str | tuple[int, ...]", conv.padding)
    return F.conv2d(
        h, w[f"{name}.weight"], bias, conv.stride, padding, conv.dilation, conv.groups * pack.k
    )


def _batch_norm(
    pack: Fused, i: int, layer: nn.Module, h: torch.Tensor, masks: Masks
) -> torch.Tensor:
    bn, w, name = cast(nn.BatchNorm2d, layer), pack.leaves, pack.names[i]
    return F.batch_norm(  # over K·C channels: each member's own BatchNorm
        h,
        pack.buffers[f"{name}.running_mean"],
        pack.buffers[f"{name}.running_var"],
        w[f"{name}.weight"],
        w[f"{name}.bias"],
        pack.training,
        bn.momentum or 0.0,  # never None in a pack (`fusable`)
        bn.eps,
    )


def _group_norm(
    pack: Fused, i: int, layer: nn.Module, h: torch.Tensor, masks: Masks
) -> torch.Tensor:
    gn, w, name = cast(nn.GroupNorm, layer), pack.leaves, pack.names[i]
    return F.group_norm(  # GroupNorm(g) of K members: GroupNorm(K·g)
        h, gn.num_groups * pack.k, w[f"{name}.weight"], w[f"{name}.bias"], gn.eps
    )


def _dropout(pack: Fused, i: int, layer: nn.Module, h: torch.Tensor, masks: Masks) -> torch.Tensor:
    mask = masks.get(i)  # each member's mask from its own key (`Fused.draw_masks`)
    return h if mask is None else (h.view(h.shape[0], pack.k, -1) * mask).view(h.shape)


def _as_is(pack: Fused, i: int, layer: nn.Module, h: torch.Tensor, masks: Masks) -> torch.Tensor:
    return layer(h)  # acts per channel (or per image's flat members side by side): as it is


FUSED: dict[type[nn.Module], FusedOp] = {
    nn.Conv2d: _conv,
    nn.BatchNorm2d: _batch_norm,
    nn.GroupNorm: _group_norm,
    Dropout: _dropout,
    nn.ReLU: _as_is,
    nn.MaxPool2d: _as_is,
    nn.AvgPool2d: _as_is,
    nn.AdaptiveAvgPool2d: _as_is,
    nn.Flatten: _as_is,
}  # and a last nn.LogSoftmax(dim=1), taken per member (`Fused.forward`)


def _chain(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """A model's layers in the order its forward runs them, if it is a chain of them: nested
    nn.Sequential (whose own forward is their chain, not overridden) down to the layers."""
    if not _is_chain(model):
        return [("", model)]
    out = []
    for name, child in model.named_children():
        for sub, layer in _chain(child):
            out.append((f"{name}.{sub}" if sub else name, layer))
    return out


def _is_chain(model: nn.Module) -> bool:
    """An nn.Sequential that runs its layers in order: its forward is nn.Sequential's own."""
    return isinstance(model, nn.Sequential) and type(model).forward is nn.Sequential.forward


def fusable(model: nn.Module) -> str | None:
    """Why `Fused` cannot pack `model`, or None: a chain of layers (nn.Sequential) each in the
    op map `FUSED` (exact type), a log_softmax last if at all, flattened only at the end."""
    if not _is_chain(model):
        return f"{type(model).__name__} is not a chain of layers (nn.Sequential's own forward)"
    layers = _chain(model)
    for j, (name, layer) in enumerate(layers):
        last = j == len(layers) - 1
        if isinstance(layer, nn.LogSoftmax) and last and layer.dim in (1, -1):
            continue
        if type(layer) not in FUSED:
            return f"layer {name!r} ({type(layer).__name__}) has no fused op"
        if isinstance(layer, nn.BatchNorm2d) and (
            layer.momentum is None or not layer.track_running_stats
        ):
            return f"layer {name!r}: a pack takes BatchNorm with running stats and a momentum"
        if isinstance(layer, nn.Flatten) and not all(
            isinstance(rest, (nn.Flatten, nn.LogSoftmax)) for _, rest in layers[j + 1 :]
        ):
            return f"layer {name!r}: a pack flattens only at the end"
    return None


class Fused(Stack):
    """K models of one chain of layers (`fusable`), trained as one: each layer fused over the
    members by its type (`FUSED`), so a forward pass is one kernel per layer whatever K is.
    Input N×K×C×H×W (member k's images in [:, k]), output N×K×classes log-probabilities (a
    model's logits, or its chain before a last LogSoftmax, go through log_softmax per member).
    Exact: each member computes what it would alone."""

    def __init__(
        self,
        models: Sequence[nn.Module],
        image_shape: Sequence[int],
        device: torch.device | str = "cpu",
    ):
        super().__init__(models, device)
        chain = _chain(self.template)
        self.names = [name for name, _ in chain]
        self.layers = [layer for _, layer in chain]
        if isinstance(self.layers[-1], nn.LogSoftmax):  # taken per member in `forward`
            self.layers, self.names = self.layers[:-1], self.names[:-1]
        self.ops = [FUSED[type(layer)] for layer in self.layers]
        self.dropped = _dropout_sizes(self.layers, image_shape)  # layer -> hashes per image
        drops = {cast(Dropout, self.layers[i]).p for i in self.dropped}
        if len(drops) > 1:
            raise ValueError(f"a pack draws one dropout rate for every layer, got {sorted(drops)}")
        self.p = drops.pop() if drops else 0.0
        self.threshold, self.scale = Dropout(self.p).threshold, 1 / (1 - self.p)
        # per hash of one image, over the dropout layers in order: its layer's P and S, its place
        sizes = torch.tensor(list(self.dropped.values()), dtype=torch.int32)
        starts = sizes.cumsum(0, dtype=torch.int32) - sizes
        self._per = sizes.repeat_interleave(sizes).to(device)
        self._before = starts.repeat_interleave(sizes).to(device)
        self._at = torch.arange(len(self._per), dtype=torch.int32, device=device) - self._before

    def forward(self, x: torch.Tensor, dropout_keys: torch.Tensor | None = None) -> torch.Tensor:
        """The K members' log-probabilities for `x` (N×K×C×H×W) and, in training, each member's
        dropout key."""
        masks = self.draw_masks(x.shape[0], dropout_keys) if self.training else {}
        h = x.flatten(1, 2)
        for i, (op, layer) in enumerate(zip(self.ops, self.layers)):
            h = op(self, i, layer, h, masks)
        return F.log_softmax(h.view(h.shape[0], self.k, -1), dim=-1)  # of logits or the chain's

    def draw_masks(self, n: int, keys: torch.Tensor | None) -> Masks:
        """Every dropout layer's mask for a batch of n (0, or 1 / (1 - p) where an element is
        kept, as nn.Dropout scales), N×K×(C·H·W) slices of one draw.

        Element 2j or 2j+1 of image b in dropout layer l has the counter n·S_l + b·P_l + j (P_l
        hashes per image there, two 16-bit halves per hash; S_l the hashes per image of the
        layers before, so the layers' counters follow each other): all layers' bits are one
        hash, N×K×ΣP, and each member's bits depend on its key and the counter alone. An element
        is kept when its 16 bits are at or above the layer's threshold (p exact to 1/65536).
        """
        if keys is None or not self.dropped:
            return {}
        image = torch.arange(n, dtype=torch.int32, device=keys.device).view(n, 1, 1)
        counters = image * self._per + (self._at + n * self._before)  # N×1×ΣP
        keep = counter.bits(keys, counters).view(torch.int16) >= self.threshold  # N×K×2ΣP
        scaled = keep.to(self.params.dtype) * self.scale  # 1 / (1 - p) where kept
        masks, start = {}, 0
        for i, per_image in self.dropped.items():
            masks[i] = scaled[:, :, 2 * start : 2 * (start + per_image)]
            start += per_image
        return masks


def _dropout_sizes(layers: Sequence[nn.Module], image_shape: Sequence[int]) -> dict[int, int]:
    """Each dropout layer that drops (p > 0) of a chain, by index: the 32-bit hashes one image
    takes there (half its elements), for images of `image_shape` (C×H×W)."""
    found: dict[int, int] = {}
    h = torch.zeros(1, *image_shape)
    with torch.no_grad():
        for i, layer in enumerate(layers):
            if isinstance(layer, Dropout):
                if layer.p:
                    if h[0].numel() % 2:
                        raise ValueError(
                            f"dropout over {h[0].numel()} elements an image: a pack draws "
                            "them in pairs (an even count)"
                        )
                    found[i] = h[0].numel() // 2
                continue
            if not isinstance(layer, (nn.BatchNorm2d, nn.GroupNorm)):  # norms keep the shape
                h = layer(h)
    return found
