"""Packed training: K trials of the same shape as one fused network (horizontal fusion, as in
HFTA), K = 1 being an ordinary trial.

The members' weights are stacked: one flat tensor holds, parameter by parameter, the K members'
copies side by side, and the fused layers read it through views, so a forward pass is one kernel
per layer whatever K is, and the optimizer steps every member at once (`sgd.FusedSGD`).

Two ways to fuse, chosen by the model's layers, not by who wrote it:
- `fused.Fused`, for a chain of layers (nn.Sequential) whose types all have an op in the map
  `fused.FUSED`, as HFTA's: exact, one kernel per layer.
- `Vmapped`, for any other model whose layers stack: torch.func over the stacked weights.
A member's weights come out as a plain state dict (`member_state`) or as a model whose tensors
are views of the stack (`member_net`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


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
        for name, _value in self.template.state_dict().items():
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
