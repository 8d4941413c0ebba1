"""Packed training: K trials of the same shape as one fused network (horizontal fusion, as in
HFTA), K = 1 being an ordinary trial.

The members' weights are stacked: one flat tensor holds, parameter by parameter, the K members'
copies side by side, and the fused layers read it through views, so a forward pass is one kernel
per layer whatever K is, and the optimizer steps every member at once (`sgd.FusedSGD`).

Two ways to fuse, chosen by the model's layers, not by who wrote it:
- `Fused`, for a chain of layers (nn.Sequential) of the types in the op map `FUSED`, as HFTA's:
  a convolution over K members is one with K times the groups, BatchNorm over K·C channels is
  each member's own, GroupNorm(g) becomes GroupNorm(K·g); ReLU and pooling act per channel; each
  member's dropout mask is drawn from its own key (`counter`). Exact, one kernel per layer.
- `Vmapped`, for any other model whose layers stack: torch.func over the stacked weights.
A member's weights come out as a plain state dict (`member_state`) or as a model whose tensors
are views of the stack (`member_net`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Sequence, cast

import torch
import torch.nn.functional as F
from torch import nn

from tunekit import counter
from tunekit.models.seed_cnn import Dropout


@dataclass(frozen=True)
class Slot:
    """Where one parameter of the Net lives in the flat stack: K copies from `offset` on."""

    name: str  # its name in a Net's state dict
    shape: tuple[int, ...]  # one member's shape
    offset: int
    numel: int  # one member's element count

    def of(self, flat: torch.Tensor, k: int) -> torch.Tensor:
        """Member k's copy, a view of `flat`."""
        start = self.offset + k * self.numel
        return flat[start : start + self.numel].view(self.shape)

    def fused(self, flat: torch.Tensor, k: int) -> torch.Tensor:
        """All K copies as one tensor of K·shape[0] rows, a view of `flat`."""
        return flat[self.offset : self.offset + k * self.numel].view(
            k * self.shape[0], *self.shape[1:]
        )


class Stack:
    """K models of one shape as one stack of weights: every parameter's K copies side by side in
    one flat tensor (`params`, what the optimizer steps), read through views; floating buffers
    (BatchNorm's statistics) likewise. What a pack of any model shares; the forward is the
    subclass's."""

    def __init__(self, models: Sequence[nn.Module], device: torch.device | str = "cpu"):
        self.k, self.template = len(models), models[0]
        self.slots: dict[str, Slot] = {}
        size = 0
        for name, p in self.template.named_parameters():
            self.slots[name] = Slot(name, tuple(p.shape), size, p.numel())
            size += self.k * p.numel()
        self.params = torch.empty(size, device=device)  # the trained tensor: every member's
        # what autograd differentiates: each parameter's K copies, a view of `params` (one grad
        # per parameter, no zero-filled slices of the whole stack in the backward pass)
        self.leaves = {
            name: slot.fused(self.params, self.k).requires_grad_()
            for name, slot in self.slots.items()
        }
        self.buffer_shapes = {
            name: tuple(b.shape)
            for name, b in self.template.named_buffers()
            if b.is_floating_point()
        }
        self.buffers = {
            name: torch.empty(self.k * math.prod(shape), device=device)
            for name, shape in self.buffer_shapes.items()
        }  # BN statistics
        self.batches_tracked = 0  # BatchNorm's training steps (for a model's state dict)
        self.training = True
        for k, model in enumerate(models):
            self.load(k, model.state_dict())

    @property
    def owner(self) -> torch.Tensor:
        """The member each element of `params` belongs to (int64, same length)."""
        parts = [
            torch.arange(self.k, device=self.params.device).repeat_interleave(s.numel)
            for s in self.slots.values()
        ]
        return torch.cat(parts)

    def weights(self) -> torch.Tensor:
        """Elements of `params` that are conv kernels or linear weights, not norms' scales or
        biases (penalize: weights): a bool mask."""
        return torch.cat(
            [
                torch.full((self.k * s.numel,), len(s.shape) >= 2, device=self.params.device)
                for s in self.slots.values()
            ]
        )

    # --- one member in and out

    def load(self, k: int, state: dict[str, torch.Tensor]) -> None:
        """Put a plain model's state dict into member k's place."""
        with torch.no_grad():
            for name, slot in self.slots.items():
                slot.of(self.params, k).copy_(state[name])
            for name, buffer in self.buffers.items():
                n = buffer.numel() // self.k
                buffer[k * n : (k + 1) * n].copy_(state[name].reshape(-1))
        tracked = [v for name, v in state.items() if name.endswith("num_batches_tracked")]
        if tracked:
            self.batches_tracked = int(tracked[0])

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's weights as a plain model's state dict of CPU tensors of its own."""
        out = {}
        for name, value in self.template.state_dict().items():
            if name in self.slots:
                out[name] = self.slots[name].of(self.params, k).cpu().clone()
            elif name in self.buffers:
                n = self.buffers[name].numel() // self.k
                out[name] = (
                    self.buffers[name][k * n : (k + 1) * n]
                    .view(self.buffer_shapes[name])
                    .cpu()
                    .clone()
                )
            else:
                out[name] = torch.tensor(self.batches_tracked)
        return out

    def member_net(self, k: int) -> nn.Module:
        """Member k as a model whose parameters and BN statistics are views of the stack: what
        training changes in the pack, the model sees."""
        net = copy.deepcopy(self.template)
        for name, slot in self.slots.items():
            module, _, attr = name.rpartition(".")
            net.get_submodule(module)._parameters[attr] = nn.Parameter(
                slot.of(self.params, k), requires_grad=False
            )
        for name, buffer in self.buffers.items():
            module, _, attr = name.rpartition(".")
            n = buffer.numel() // self.k
            net.get_submodule(module)._buffers[attr] = buffer[k * n : (k + 1) * n].view(
                self.buffer_shapes[name]
            )
        return net

    def forward(self, x: torch.Tensor, dropout_keys: torch.Tensor | None = None) -> torch.Tensor:
        """The K members' log-probabilities N×K×classes for images `x` N×K×C×H×W (member k's in
        [:, k]) and, in training, each member's dropout key."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, dropout_keys: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward(x, dropout_keys)

    def train(self, mode: bool = True) -> Stack:
        self.training = mode
        return self

    def eval(self) -> Stack:
        return self.train(False)


# --- fused layers, by layer type (HFTA's op map): each maps the K members' activations side by
# side in the channels (N×(K·C)×H×W) as each member's own layer would map its own

FusedOp = Callable[["Fused", int, nn.Module, torch.Tensor], torch.Tensor]


def _conv(pack: Fused, i: int, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    conv = cast(nn.Conv2d, layer)  # K members' convolution: one with K times the groups
    w, name = pack.leaves, pack.names[i]
    bias = w.get(f"{name}.bias")
    padding = cast("str | tuple[int, ...]", conv.padding)
    return F.conv2d(
        h, w[f"{name}.weight"], bias, conv.stride, padding, conv.dilation, conv.groups * pack.k
    )


def _batch_norm(pack: Fused, i: int, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
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


def _group_norm(pack: Fused, i: int, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    gn, w, name = cast(nn.GroupNorm, layer), pack.leaves, pack.names[i]
    return F.group_norm(  # GroupNorm(g) of K members: GroupNorm(K·g)
        h, gn.num_groups * pack.k, w[f"{name}.weight"], w[f"{name}.bias"], gn.eps
    )


def _dropout(pack: Fused, i: int, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    mask = pack.masks.get(i)  # each member's mask from its own key (`Fused.draw_masks`)
    return h if mask is None else (h.view(h.shape[0], pack.k, -1) * mask).view(h.shape)


def _as_is(pack: Fused, i: int, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
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
    nn.Sequential (whose forward is their chain) down to layers that hold no others."""
    if not isinstance(model, nn.Sequential):
        return [("", model)]
    out = []
    for name, child in model.named_children():
        for sub, layer in _chain(child):
            out.append((f"{name}.{sub}" if sub else name, layer))
    return out


def fusable(model: nn.Module) -> str | None:
    """Why `Fused` cannot pack `model`, or None: a chain of layers (nn.Sequential) each in the
    op map `FUSED` (exact type), a log_softmax last if at all, flattened only at the end."""
    if not isinstance(model, nn.Sequential):
        return f"{type(model).__name__} is not a chain of layers (nn.Sequential)"
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
        self.masks: dict[int, torch.Tensor] = {}

    def forward(self, x: torch.Tensor, dropout_keys: torch.Tensor | None = None) -> torch.Tensor:
        """The K members' log-probabilities for `x` (N×K×C×H×W) and, in training, each member's
        dropout key."""
        self.masks = self.draw_masks(x.shape[0], dropout_keys) if self.training else {}
        h = x.flatten(1, 2)
        for i, (op, layer) in enumerate(zip(self.ops, self.layers)):
            h = op(self, i, layer, h)
        return F.log_softmax(h.view(h.shape[0], self.k, -1), dim=-1)  # of logits or the chain's

    def draw_masks(self, n: int, keys: torch.Tensor | None) -> dict[int, torch.Tensor]:
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


# --- your own model: stacked by torch.func

# Layers a pack of your own model may hold: with weights, those whose vmapped forward is each
# member's own (a convolution over K members is a grouped one, a linear layer a batched matmul);
# without, any that draws no random numbers. Dropout (p > 0) draws per member what a pack
# cannot draw as each member would alone, so a model with it trains in packs of 1.
STACKABLE = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)
#   (BatchNorm1d is not: vmapped, its gradients round apart from a lone model's)


class Vmapped(Stack):
    """K of your own models of one shape, trained as one: `torch.func.functional_call` over the
    stacked weights, vmapped over the members (one kernel per layer whatever K is). Input
    N×K×C×H×W, output N×K×classes log-probabilities (a model's logits go through log_softmax).
    A pack of 1 may draw random numbers (dropout) from torch's generator, which the trainer
    seeds per epoch; a larger pack may not (`packable`)."""

    def __init__(
        self,
        models: Sequence[nn.Module],
        device: torch.device | str = "cpu",
        log_probs: bool = False,
    ):
        super().__init__(models, device)
        self.template = copy.deepcopy(self.template).to(device)  # its structure, int buffers
        self.log_probs = log_probs
        self.randomness = "different" if self.k == 1 else "error"

    def forward(self, x: torch.Tensor, dropout_keys: torch.Tensor | None = None) -> torch.Tensor:
        k = self.k
        params = {name: self.leaves[name].view(k, *slot.shape) for name, slot in self.slots.items()}
        buffers = {name: b.view(k, *self.buffer_shapes[name]) for name, b in self.buffers.items()}
        self.template.train(self.training)
        out = torch.func.vmap(self._member, in_dims=(0, 0, 1), randomness=self.randomness)(
            params, buffers, x
        ).transpose(0, 1)  # N×K×classes
        return out if self.log_probs else F.log_softmax(out, dim=-1)

    def _member(
        self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        return torch.func.functional_call(self.template, (params, buffers), (x,))


def packable(model: nn.Module, image_shape: Sequence[int]) -> str | None:
    """Why a pack of `model` would not be its members alone, or None if it would be: every
    layer with weights one that stacks exactly, no layer that draws random numbers, and a pack
    of two that trains a step on a dummy batch."""
    for name, m in model.named_modules():
        kind = type(m).__name__
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return (
                f"layer {name!r} ({kind}, p={m.p}) draws random numbers per member, which a "
                f"pack cannot draw as each member does alone"
            )
        own = [*m.parameters(recurse=False), *m.buffers(recurse=False)]
        if own and not isinstance(m, STACKABLE):
            return (
                f"layer {name or 'the model'!r} ({kind}) has weights of a kind tunekit does "
                f"not stack (it stacks {', '.join(c.__name__ for c in STACKABLE)})"
            )
    try:
        pack = Vmapped([copy.deepcopy(model), copy.deepcopy(model)])
        out = pack(torch.zeros(2, 2, *image_shape))
        torch.autograd.grad(out.sum(), list(pack.leaves.values()), allow_unused=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        return f"its forward does not run vmapped over a pack ({type(e).__name__}: {first})"
    return None
