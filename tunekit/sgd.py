"""One SGD step for every member of a pack: momentum, L2 as weight decay and the L1 gradient, with
each member's lr, momentum, L1, L2 and penalised set held as tensors (as HFTA's fused optimizers).

The update is torch.optim.SGD's (dampening 0, no Nesterov), on the flat stack of `pack.Stack`:

    g = grad + l1 · sign(p) + l2 · p      (l1, l2: 0 for parameters the member does not penalise)
    buf = momentum · buf + g              (buf starts at 0, which is SGD's first step exactly)
    p = p - lr · buf

Every element goes through the same element-wise ops whatever its place in the stack, so a member
moves as it would alone. A member that is no longer live gets lr 0: it stops where it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tunekit.pack import Stack
from tunekit.spec import TrainSpec


class FusedSGD:
    def __init__(self, pack: Stack, trains: Sequence[TrainSpec]):
        device = pack.params.device
        self.owner = pack.owner  # the member of each element
        every = torch.tensor([t.penalize == "all" for t in trains], device=device)
        covered = every[self.owner] | pack.weights()  # penalize: all, or conv kernels only
        l1 = torch.tensor([t.l1 for t in trains], device=device)
        l2 = torch.tensor([t.l2 for t in trains], device=device)
        # per element; None when no member has it (the op is skipped: adding 0 changes nothing)
        self.l1 = torch.where(covered, l1[self.owner], 0.0) if bool((l1 > 0).any()) else None
        self.l2 = torch.where(covered, l2[self.owner], 0.0) if bool((l2 > 0).any()) else None
        self.buf = torch.zeros_like(pack.params)  # momentum buffers, stacked like the weights

    @torch.no_grad()
    def step(
        self,
        params: torch.Tensor,
        grad: torch.Tensor,
        lr: torch.Tensor,
        momentum: torch.Tensor,
        live: torch.Tensor,
    ) -> None:
        """One update of `params` (in place) from `grad`; lr, momentum, live: one per member."""
        if self.l1 is not None:
            grad = grad + self.l1 * params.sign()
        if self.l2 is not None:
            grad = grad + self.l2 * params
        self.buf.mul_(momentum[self.owner]).add_(grad)
        params.sub_(torch.where(live, lr, 0.0)[self.owner] * self.buf)

    def member_state(self, pack: Stack, k: int) -> dict[str, torch.Tensor]:
        """Member k's momentum buffers, by parameter name (CPU tensors of their own)."""
        return {name: slot.of(self.buf, k).cpu().clone() for name, slot in pack.slots.items()}

    def load(self, pack: Stack, k: int, state: dict[str, torch.Tensor]) -> None:
        for name, slot in pack.slots.items():
            slot.of(self.buf, k).copy_(state[name])
