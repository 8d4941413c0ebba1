"""Training: `fit(config, report)` runs one trial and returns its result.

A plain function of a validated `TrialConfig`: no Ray, no MLflow. Whoever calls it decides what
`report` does with each epoch's metrics and state (print them, hand them to Ray Tune, ...).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from tunekit import data as datamod
from tunekit.errors import DivergedError
from tunekit.metrics import METRICS, EpochMetrics  # noqa: F401 (METRICS: for callers)
from tunekit.model import Net
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


def rng_states(gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    """Every random state a trial draws from: its data generator (batch order, rotation angles),
    torch's CPU RNG (initial weights, dropout on the CPU) and, on a GPU, the CUDA RNG (dropout)."""
    states: dict[str, Any] = {"device": device.type, "generator": gen.get_state(),
                              "torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda_rng"] = torch.cuda.get_rng_state(device)
    return states


@torch.no_grad()
def evaluate(model: nn.Module, d: datamod.Data, batch_size: int) -> tuple[float, float, torch.Tensor,
                                                                          torch.Tensor]:
    """(mean loss, accuracy %, indices of wrong test images, their predictions)."""
    model.eval()
    loss, preds = torch.zeros((), device=d.test_labels.device), []
    for x, y in datamod.test_batches(d, batch_size):
        out = model(x)
        loss += F.nll_loss(out, y, reduction="sum")
        preds.append(out.argmax(1))
    pred = torch.cat(preds)
    wrong = (pred != d.test_labels).nonzero().flatten()
    n = len(d.test_labels)
    return loss.item() / n, 100.0 * (n - len(wrong)) / n, wrong, pred[wrong]


def build_optimizer(model: nn.Module, t: TrainSpec) -> torch.optim.Optimizer:
    decayed, exempt = penalized(model, t.penalize)
    groups = [{"params": decayed, "weight_decay": t.l2}]
    if exempt:
        groups.append({"params": exempt, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=t.optimizer.lr, momentum=t.optimizer.momentum)


def fit(config: TrialConfig, report: Report | None = None, *, threads: int | None = None,
        resume: dict[str, Any] | None = None) -> FitResult:
    """Train `config` and return its history, best epoch, best weights and misclassified digits.

    After every epoch, `report(metrics, state)` is called; `state` is what `resume` takes to carry
    on after that epoch (weights, optimizer, scheduler, every RNG state, history so far); resumed
    on the same kind of device, the trial continues exactly as if it had never stopped.
    Raises DivergedError when the training loss becomes NaN or infinite.
    """
    t = config.train
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(t.device)
    torch.manual_seed(t.seed)
    gen = torch.Generator(device=device).manual_seed(t.seed)
    d = datamod.load(config.data, device)
    model = Net(config.model.norm, config.model.groups, config.model.dropout).to(device)
    opt = build_optimizer(model, t)
    batches = datamod.TrainBatches(d, t.batch_size, config.data.rotation, gen)
    sched, per_batch = make_scheduler(t.scheduler, opt, t.epochs, len(batches))
    l1_params = penalized(model, t.penalize)[0] if t.l1 else []

    history: list[EpochMetrics] = []
    best: dict[str, Any] = {"epoch": 0, "acc": -1.0}
    if resume:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        if resume.get("device", "cpu") == device.type:  # every RNG the trial draws from
            gen.set_state(resume["generator"])
            torch.set_rng_state(resume["torch_rng"])
            if device.type == "cuda":
                torch.cuda.set_rng_state(resume["cuda_rng"], device)
        else:  # another kind of device has other RNGs: carry on, reseeded (not bit-exact)
            gen.manual_seed(t.seed + len(resume["history"]))
            torch.manual_seed(t.seed + len(resume["history"]))
        history = [EpochMetrics(**m) for m in resume["history"]]
        best = resume["best"]

    for epoch in range(len(history) + 1, t.epochs + 1):
        model.train()
        lr = opt.param_groups[0]["lr"]
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        n = 0
        for x, y in batches:
            out = model(x)
            loss = F.nll_loss(out, y)
            objective = loss + l1_penalty(l1_params, t.l1) if t.l1 else loss
            opt.zero_grad(set_to_none=True)
            objective.backward()
            opt.step()
            if per_batch:
                sched.step()
            loss_sum += loss.detach() * len(y)
            correct += (out.argmax(1) == y).sum()
            n += len(y)
        if not per_batch:
            sched.step()
        train_loss = loss_sum.item() / n  # .item() waits for the device: time the epoch after it
        seconds = time.perf_counter() - start
        if not math.isfinite(train_loss):
            raise DivergedError(f"training loss became {train_loss} in epoch {epoch} "
                                f"(lr {lr:g}, l1 {t.l1:g}, l2 {t.l2:g})")
        val_loss, val_acc, wrong, wrong_pred = evaluate(model, d, t.eval_batch_size)
        metrics = EpochMetrics(epoch, train_loss, 100.0 * correct.item() / n, val_loss, val_acc,
                               lr, seconds, n / seconds)
        history.append(metrics)
        if val_acc > best["acc"]:
            keep = wrong[:MAX_WRONG]
            best = {"epoch": epoch, "acc": val_acc,
                    "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                    "wrong": {"indices": keep.cpu(), "images": d.test_images[keep].cpu(),
                              "labels": d.test_labels[keep].cpu(),
                              "preds": wrong_pred[:MAX_WRONG].cpu(), "total": len(wrong)}}
        if report:
            report(metrics, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                             "scheduler": sched.state_dict(), **rng_states(gen, device),
                             "history": [m.as_dict() for m in history], "best": best})

    return FitResult(history, best["epoch"], best["acc"], best["model"],
                     Misclassified(**best["wrong"]))
