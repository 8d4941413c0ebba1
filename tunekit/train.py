"""Training: `fit(config, report)` runs one trial and returns its result.

A plain function of a validated `TrialConfig`: no Ray, no MLflow. Whoever calls it decides what
`report` does with each epoch's metrics and state (print them, hand them to Ray Tune, ...).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tunekit import data as datamod
from tunekit.errors import DivergedError
from tunekit.metrics import METRICS, EpochMetrics  # noqa: F401 (METRICS: for callers)
from tunekit.model import Dropout, Net
from tunekit.pack import Packed, cat, member_state
from tunekit.plan import PER_MEMBER, pack_key
from tunekit.spec import SchedulerSpec, TrainSpec, TrialConfig


MAX_WRONG = 100  # misclassified test images kept per trial (for the grid of wrong digits)


@dataclass(frozen=True)
class Misclassified:
    """The first (by test-set position) test images the best epoch's model got wrong, on CPU."""
    indices: torch.Tensor  # positions in the test set, at most MAX_WRONG
    images: torch.Tensor  # uint8, N×28×28
    labels: torch.Tensor
    preds: torch.Tensor
    total: int  # how many test images it got wrong in all


@dataclass(frozen=True)
class FitResult:
    history: list[EpochMetrics]
    best_epoch: int
    max_val_acc: float
    best_state: dict[str, torch.Tensor]  # model weights at the best epoch
    misclassified: Misclassified


Report = Callable[[EpochMetrics, dict[str, Any]], None]


def l1_penalty(params: Iterable[torch.Tensor], l1: float) -> torch.Tensor:
    """l1 · Σ|p| summed over every element of every tensor in `params`."""
    return l1 * torch.stack([p.abs().sum() for p in params]).sum()


def penalized(model: nn.Module, which: str) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(penalized, exempt) parameters. all: every parameter, as the seed did; weights: conv kernels
    only (norm scales/shifts and the head's bias exempt)."""
    params = list(model.parameters())
    if which == "all":
        return params, []
    return [p for p in params if p.ndim == 4], [p for p in params if p.ndim != 4]


def make_scheduler(spec: SchedulerSpec, opt: torch.optim.Optimizer, epochs: int,
                   steps_per_epoch: int) -> tuple[torch.optim.lr_scheduler.LRScheduler, bool]:
    """The lr schedule and whether it steps per batch (True) or per epoch (False)."""
    if spec.name == "onecycle":
        max_lr = spec.max_lr or opt.param_groups[0]["lr"]
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=max_lr, epochs=epochs, steps_per_epoch=steps_per_epoch,
            pct_start=spec.pct_start), True
    if spec.name == "step":
        # The seed's StepLR only started stepping after epoch `start_epoch`: the lr of epoch k+1
        # (k epochs done) is decayed once per `step_size` epochs done beyond `start_epoch`.
        def factor(k: int) -> float:
            return spec.gamma ** (max(0, k - spec.start_epoch) // spec.step_size)
        return torch.optim.lr_scheduler.LambdaLR(opt, factor), False
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0), False


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@torch.no_grad()
def evaluate(model: Packed, d: datamod.Data, batch_size: int) -> list[tuple[float, float,
                                                                            torch.Tensor,
                                                                            torch.Tensor]]:
    """Per member: (mean loss, accuracy %, indices of wrong test images, their predictions)."""
    model.eval()
    k = model.k
    loss, preds = torch.zeros(k, device=d.test_labels.device), []
    for x, y in datamod.test_batches(d, batch_size):
        out = model(x.expand(-1, k, -1, -1))  # every member sees the same test images
        for m in range(k):  # as a trial alone sums them
            loss[m] += F.nll_loss(out[:, m], y, reduction="sum")
        preds.append(out.argmax(2))
    pred = torch.cat(preds)
    n, found = len(d.test_labels), []
    for m in range(k):
        wrong = (pred[:, m] != d.test_labels).nonzero().flatten()
        found.append((loss[m].item() / n, 100.0 * (n - len(wrong)) / n, wrong, pred[wrong, m]))
    return found


def build_optimizer(model: nn.Module, t: TrainSpec) -> torch.optim.Optimizer:
    decayed, exempt = penalized(model, t.penalize)
    groups = [{"params": decayed, "weight_decay": t.l2}]
    if exempt:
        groups.append({"params": exempt, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=t.optimizer.lr, momentum=t.optimizer.momentum)


class _Member:
    """One trial of a pack: its net, RNGs, optimizer, schedule, history and best epoch."""

    def __init__(self, config: TrialConfig, data: datamod.Data, device: torch.device):
        self.config, t = config, config.train
        torch.manual_seed(t.seed)  # the initial weights: as a trial alone draws them
        self.net = Net(config.model.norm, config.model.groups, config.model.dropout)
        # dropout draws on from where the initial weights left torch's RNG, as it would alone
        self.dropout_rng = torch.Generator().set_state(torch.get_rng_state())
        self.cuda_rng = torch.Generator(device).manual_seed(t.seed) \
            if device.type == "cuda" else None
        self.net.to(device)
        for layer in self.net.features:
            if isinstance(layer, Dropout):
                layer.generator = self.cuda_rng or self.dropout_rng
        self.gen = torch.Generator(device=device).manual_seed(t.seed)  # batch order, rotations
        self.batches = datamod.TrainBatches(data, t.batch_size, config.data.rotation, self.gen)
        self.opt = build_optimizer(self.net, t)
        self.sched, self.per_batch = make_scheduler(t.scheduler, self.opt, t.epochs,
                                                    len(self.batches))
        self.l1_params = penalized(self.net, t.penalize)[0] if t.l1 else []
        self.history: list[EpochMetrics] = []
        self.best: dict[str, Any] = {"epoch": 0, "acc": -1.0}
        self.failed: str | None = None  # why it stopped training (its loss diverged)

    def state(self, device: torch.device) -> dict[str, Any]:
        """What `restore` takes to carry on after this epoch: every RNG state included."""
        state = {"model": member_state(self.net), "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict(), "device": device.type,
                 "generator": self.gen.get_state(), "torch_rng": self.dropout_rng.get_state(),
                 "history": [m.as_dict() for m in self.history], "best": self.best,
                 "failed": self.failed}
        if self.cuda_rng is not None:
            state["cuda_rng"] = self.cuda_rng.get_state()
        return state

    def restore(self, state: dict[str, Any], device: torch.device) -> None:
        self.net.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.history = [EpochMetrics(**m) for m in state["history"]]
        self.best, self.failed = state["best"], state.get("failed")
        if state.get("device", "cpu") == device.type:  # every RNG the trial draws from
            self.gen.set_state(state["generator"])
            self.dropout_rng.set_state(state["torch_rng"])
            if self.cuda_rng is not None:
                self.cuda_rng.set_state(state["cuda_rng"])
        else:  # another kind of device has other RNGs: carry on, reseeded (not bit-exact)
            for rng in (self.gen, self.dropout_rng, self.cuda_rng):
                if rng is not None:
                    rng.manual_seed(self.config.train.seed + len(self.history))

    def result(self) -> FitResult | DivergedError:
        if self.failed:
            return DivergedError(self.failed)
        return FitResult(self.history, self.best["epoch"], self.best["acc"], self.best["model"],
                         Misclassified(**self.best["wrong"]))


PackReport = Callable[[list[EpochMetrics | None], dict[str, Any]], None]


def fit_pack(configs: Sequence[TrialConfig], report: PackReport | None = None, *,
             threads: int | None = None,
             resume: dict[str, Any] | None = None) -> list[FitResult | DivergedError]:
    """Train trials that share a shape (`plan.pack_key`) as one fused network; per member, its
    result, or the DivergedError that stopped it while the others trained on.

    After every epoch, `report(metrics, state)` is called with each member's metrics (None once it
    has failed); `state` is what `resume` takes to carry on after that epoch. Each member is the
    trial it would be alone: its own initial weights, batch order, rotations, dropout masks, lr,
    momentum, L1, L2 and optimizer state; resumed on the same kind of device, it continues
    exactly as if it had never stopped.
    """
    keys = {pack_key(c) for c in configs}
    if len(keys) != 1:
        raise ValueError("a pack's trials must share data, model and every training setting but "
                         + ", ".join(PER_MEMBER))
    first = configs[0].train
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(first.device)
    d = datamod.load(configs[0].data, device)
    members = [_Member(c, d, device) for c in configs]
    model = Packed([m.net for m in members])
    if resume:
        for member, state in zip(members, resume["members"]):
            member.restore(state, device)

    for epoch in range(len(members[0].history) + 1, first.epochs + 1):
        model.train()
        live = [m for m in members if not m.failed]
        lrs = [m.opt.param_groups[0]["lr"] for m in members]
        start = time.perf_counter()
        loss_sum = torch.zeros(len(members), device=device)
        correct = torch.zeros(len(members), dtype=torch.long, device=device)
        n = 0
        for batch in zip(*(m.batches for m in members)):
            x = cat([b[0] for b in batch], 1)  # member k's images in channel k
            y = torch.stack([b[1] for b in batch], 1)
            out = model(x)
            losses = [F.nll_loss(out[:, i], y[:, i]) for i in range(len(members))]
            objective = sum(losses[i] + l1_penalty(m.l1_params, m.config.train.l1)
                            if m.config.train.l1 else losses[i]
                            for i, m in enumerate(members) if not m.failed)
            for m in live:
                m.opt.zero_grad(set_to_none=True)
            objective.backward()
            for m in live:
                m.opt.step()
                if m.per_batch:
                    m.sched.step()
            loss_sum += torch.stack(losses).detach() * len(y)
            correct += (out.argmax(2) == y).sum(0)
            n += len(y)
        for m in live:
            if not m.per_batch:
                m.sched.step()
        train_loss = [v / n for v in loss_sum.tolist()]  # waits for the device: time after it
        seconds = time.perf_counter() - start
        for i, m in enumerate(members):
            if not m.failed and not math.isfinite(train_loss[i]):
                t = m.config.train
                m.failed = (f"training loss became {train_loss[i]} in epoch {epoch} (lr "
                            f"{lrs[i]:g}, l1 {t.l1:g}, l2 {t.l2:g})")
        found = evaluate(model, d, first.eval_batch_size)
        reported: list[EpochMetrics | None] = []
        for i, m in enumerate(members):
            if m.failed:
                reported.append(None)
                continue
            val_loss, val_acc, wrong, wrong_pred = found[i]
            metrics = EpochMetrics(epoch, train_loss[i], 100.0 * correct[i].item() / n, val_loss,
                                   val_acc, lrs[i], seconds, n / seconds)
            m.history.append(metrics)
            reported.append(metrics)
            if val_acc > m.best["acc"]:
                keep = wrong[:MAX_WRONG]
                m.best = {"epoch": epoch, "acc": val_acc, "model": member_state(m.net),
                          "wrong": {"indices": keep.cpu(), "images": d.test_images[keep].cpu(),
                                    "labels": d.test_labels[keep].cpu(),
                                    "preds": wrong_pred[:MAX_WRONG].cpu(),
                                    "total": len(wrong)}}
        if report:
            report(reported, {"members": [m.state(device) for m in members]})
        if all(m.failed for m in members):
            break
    return [m.result() for m in members]


def fit(config: TrialConfig, report: Report | None = None, *, threads: int | None = None,
        resume: dict[str, Any] | None = None) -> FitResult:
    """Train one trial (a pack of one) and return its history, best epoch, best weights and
    misclassified digits.

    After every epoch, `report(metrics, state)` is called; `state` is what `resume` takes to carry
    on after that epoch (weights, optimizer, scheduler, every RNG state, history so far).
    Raises DivergedError when the training loss becomes NaN or infinite.
    """
    def one(metrics: list[EpochMetrics | None], state: dict[str, Any]) -> None:
        if report and metrics[0] is not None:
            report(metrics[0], state["members"][0])

    (result,) = fit_pack([config], one, threads=threads,
                         resume={"members": [resume]} if resume else None)
    if isinstance(result, DivergedError):
        raise result
    return result
