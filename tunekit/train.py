"""Training: `fit_pack(configs, report)` trains K trials of one shape as one fused network and
`fit(config, report)` one trial, a pack of one.

Plain functions of validated `TrialConfig`s: no Ray, no MLflow. Whoever calls them decides what
`report` does with each epoch's metrics and state (print them, hand them to Ray Tune, ...).

A training step (`train_step`) costs the same number of kernel launches whatever K is: one fused
forward and backward, one loss and accuracy for all members, one optimizer update over the stack
of weights, one gather and one rotation for the batch, and the dropout masks from counter-based
keys. It has no host sync, and compiles whole (`train.compile`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tunekit import counter, schedule
from tunekit import data as datamod
from tunekit.errors import DivergedError, TunekitError
from tunekit.fused import Fused, fusable
from tunekit.metrics import EpochMetrics
from tunekit.models import building as models
from tunekit.pack import Stack, Vmapped
from tunekit.packing import PER_MEMBER, pack_key
from tunekit.sgd import FusedSGD
from tunekit.spec import TrialConfig

MAX_WRONG = 100  # misclassified test images kept per trial (for the grid of wrong digits)


@dataclass(frozen=True)
class Misclassified:
    """The first (by test-set position) test images the best epoch's model got wrong, on CPU."""

    indices: torch.Tensor  # positions in the test set, at most MAX_WRONG
    images: torch.Tensor  # uint8, N×C×H×W
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
PackReport = Callable[[list[EpochMetrics | None], dict[str, Any]], None]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def int32(seed: int) -> int:
    """A seed as the int32 the counter-based draws take (its low 32 bits)."""
    return ((seed & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000


def train_step(
    pack: Stack,
    sgd: FusedSGD,
    x: torch.Tensor,
    y: torch.Tensor,
    dropout_keys: torch.Tensor,
    step: torch.Tensor,
    lr: torch.Tensor,
    momentum: torch.Tensor,
    live: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step of every member on images x (N×K×H×W) and labels y (N×K); returns each
    member's mean loss and the images it got right. lr, momentum, live: one per member."""
    n, k = y.shape
    out = pack(x, counter.step_keys(dropout_keys, step))
    nll = F.nll_loss(out.reshape(n * k, -1), y.reshape(-1), reduction="none")
    loss = nll.view(n, k).t().contiguous().mean(1)  # each member's row: its own sum order
    right = (out.detach().argmax(2) == y).sum(0)
    grads = torch.autograd.grad(torch.where(live, loss, 0.0).sum(), list(pack.leaves.values()))
    sgd.step(pack.params, torch.cat([g.reshape(-1) for g in grads]), lr, momentum, live)
    return loss.detach(), right


def compiled(pack: Stack, sgd: FusedSGD, backend: str = "inductor") -> Callable[..., Any]:
    """`train_step` under torch.compile, whole (fullgraph); on CUDA as a CUDA graph, the tensors
    it updates in place marked static so the graph replays on them. Two shapes at most: the
    full batch and the epoch's last, smaller one."""
    torch._dynamo.config.trace_autograd_ops = True  # else autograd.grad breaks the graph
    if pack.params.is_cuda:
        for t in (pack.params, sgd.buf, *pack.buffers.values()):
            torch._dynamo.mark_static_address(t)
        return torch.compile(
            train_step, fullgraph=True, dynamic=False, backend=backend, mode="reduce-overhead"
        )
    return torch.compile(train_step, fullgraph=True, dynamic=False, backend=backend)


@torch.no_grad()
def evaluate(
    pack: Stack, d: datamod.Data, batch_size: int
) -> list[tuple[float, float, torch.Tensor, torch.Tensor]]:
    """Per member: (mean loss, accuracy %, indices of wrong test images, their predictions)."""
    pack.eval()
    k = pack.k
    loss, preds = torch.zeros(k, device=d.test_labels.device), []
    for x, y in datamod.test_batches(d, batch_size):
        out = pack(x.unsqueeze(1).expand(-1, k, *x.shape[1:]))  # every member sees the same images
        nll = F.nll_loss(out.reshape(-1, out.shape[-1]), y.repeat_interleave(k), reduction="none")
        loss += nll.view(-1, k).t().contiguous().sum(1)
        preds.append(out.argmax(2))
    pred = torch.cat(preds)
    n, found = len(d.test_labels), []
    losses = (loss / n).tolist()
    for m in range(k):  # after the epoch: each member's own list of wrong images
        wrong = (pred[:, m] != d.test_labels).nonzero().flatten()
        found.append((losses[m], 100.0 * (n - len(wrong)) / n, wrong, pred[wrong, m]))
    return found


class _Member:
    """What one trial of a pack has learnt so far: its history, best epoch and fate."""

    def __init__(self, config: TrialConfig):
        self.config = config
        self.history: list[EpochMetrics] = []
        self.best: dict[str, Any] = {"epoch": 0, "acc": -1.0}
        self.failed: str | None = None  # why it stopped training (its loss diverged)

    def state(self, pack: Stack, sgd: FusedSGD, k: int, device: torch.device) -> dict[str, Any]:
        """What `restore` takes to carry on after this epoch. Every random draw is a function of
        the seed, epoch and step (`counter`), so no generator state is needed; CPU tensors."""
        return {
            "model": pack.member_state(k),
            "momentum": sgd.member_state(pack, k),
            "device": device.type,
            "history": [m.as_dict() for m in self.history],
            "best": self.best,
            "failed": self.failed,
        }

    def restore(self, state: dict[str, Any], pack: Stack, sgd: FusedSGD, k: int) -> None:
        if "momentum" not in state:
            raise TunekitError(
                "this checkpoint was written by an earlier tunekit, whose trainer "
                "drew its random numbers otherwise: start over with --restart"
            )
        pack.load(k, state["model"])
        sgd.load(pack, k, state["momentum"])
        self.history = [EpochMetrics(**m) for m in state["history"]]
        self.best, self.failed = state["best"], state.get("failed")

    def check_loss(self, train_loss: float, epoch: int, lr: float) -> None:
        """Fail this member if its training loss left the finite numbers this epoch."""
        if not self.failed and not math.isfinite(train_loss):
            t = self.config.train
            self.failed = (
                f"training loss became {train_loss} in epoch {epoch} (lr "
                f"{lr:g}, l1 {t.l1:g}, l2 {t.l2:g})"
            )

    def record(
        self,
        metrics: EpochMetrics,
        pack: Stack,
        k: int,
        d: datamod.Data,
        found: tuple[float, float, torch.Tensor, torch.Tensor],
    ) -> EpochMetrics:
        """Add an epoch's metrics; keep member k's weights and wrong test images if it is the
        best epoch so far."""
        self.history.append(metrics)
        if metrics.val_acc > self.best["acc"]:
            wrong, wrong_pred = found[2], found[3]
            keep = wrong[:MAX_WRONG]
            self.best = {
                "epoch": metrics.epoch,
                "acc": metrics.val_acc,
                "model": pack.member_state(k),
                "wrong": {
                    "indices": keep.cpu(),
                    "images": d.test_images[keep].cpu(),
                    "labels": d.test_labels[keep].cpu(),
                    "preds": wrong_pred[:MAX_WRONG].cpu(),
                    "total": len(wrong),
                },
            }
        return metrics

    def result(self) -> FitResult | DivergedError:
        if self.failed:
            return DivergedError(self.failed)
        return FitResult(
            self.history,
            self.best["epoch"],
            self.best["acc"],
            self.best["model"],
            Misclassified(**self.best["wrong"]),
        )


def build(
    configs: Sequence[TrialConfig], d: datamod.Data, device: torch.device
) -> tuple[Stack, FusedSGD, torch.Tensor]:
    """A pack of `configs` for the images of `d` (its shape and classes) on `device`: the
    fused network (each member's initial weights as it draws them alone; fused layer by layer
    where the model is a chain of layers the op map knows, else stacked by torch.func), its
    optimizer, and the members' seeds as the counter-based draws take them."""
    nets = []
    for c in configs:
        torch.manual_seed(c.train.seed)
        nets.append(models.build(c.model, d.shape, d.classes))
    pack: Stack = (
        Fused(nets, d.shape, device)
        if fusable(nets[0]) is None
        else Vmapped(nets, device, log_probs=configs[0].model.log_probs)
    )
    seeds = torch.tensor([int32(c.train.seed) for c in configs], dtype=torch.int32, device=device)
    return pack, FusedSGD(pack, [c.train for c in configs]), seeds


def _train_epoch(
    pack: Stack,
    sgd: FusedSGD,
    d: datamod.Data,
    seeds: torch.Tensor,
    epoch: int,
    batches: list[tuple[int, int]],
    step: Callable[..., Any],
    lr: torch.Tensor,
    momentum: torch.Tensor,
    live: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One epoch of training steps of every member: the sum of each member's batch losses
    weighted by batch size, its images right, and the seconds it took (after the device's work)."""
    pack.train()
    draws = datamod.epoch(d, seeds, epoch)
    if isinstance(pack, Vmapped):  # a lone model's own dropout: torch's generator, per epoch
        torch.manual_seed(int(counter.keys(seeds[:1], counter.DROPOUT, epoch)))
    dropout_keys = counter.keys(seeds, counter.DROPOUT, epoch)
    start = time.perf_counter()
    loss_sum = torch.zeros(pack.k, device=seeds.device)
    correct = torch.zeros(pack.k, dtype=torch.long, device=seeds.device)
    step_ids = torch.arange(len(batches), dtype=torch.int32, device=seeds.device)
    for s, (begin, size) in enumerate(batches):
        x, y = datamod.train_batch(d, draws, begin, size)
        loss, right = step(pack, sgd, x, y, dropout_keys, step_ids[s], lr[s], momentum[s], live)
        loss_sum += loss * size
        correct += right
    pack.batches_tracked += len(batches)
    loss_sum.tolist()  # waits for the device: time after it
    return loss_sum, correct, time.perf_counter() - start


def rehearse(configs: Sequence[TrialConfig], images: int = 2) -> None:
    """One training step and one evaluation of `configs` as the pack they will train in, on the
    CPU, on the first `images` training and test images of their data as a trial draws them
    (augmented, normalised): what the driver runs before any trial, so that whatever would fail
    in every trial fails here first. Raises what the trial would."""
    d = datamod.load(configs[0].data, "cpu")
    pack, sgd, seeds = build(configs, d, torch.device("cpu"))
    k = len(configs)
    lr, momentum, _ = schedule.table([c.train for c in configs], 1, 1, "cpu")
    x, y = datamod.train_batch(d, datamod.epoch(d, seeds, 1), 0, min(images, len(d.train_labels)))
    keys, live = counter.keys(seeds, counter.DROPOUT, 1), torch.ones(k, dtype=torch.bool)
    train_step(pack, sgd, x, y, keys, torch.tensor(0, dtype=torch.int32), lr[0], momentum[0], live)
    pack.eval()(d.normalize(d.test_images[:images]).unsqueeze(1).expand(-1, k, *d.shape))


def _start(
    configs: Sequence[TrialConfig], device: torch.device, resume: dict[str, Any] | None
) -> tuple[datamod.Data, Stack, FusedSGD, torch.Tensor, list[_Member]]:
    """A pack's data on `device`, its network, optimizer and seeds, and its members, resumed from
    `resume` where given."""
    if len({pack_key(c) for c in configs}) != 1:
        raise ValueError(
            "a pack's trials must share data, model and every training setting but "
            + ", ".join(PER_MEMBER)
        )
    d = datamod.load(configs[0].data, device)
    pack, sgd, seeds = build(configs, d, device)
    members = [_Member(c) for c in configs]
    for k, state in enumerate((resume or {}).get("members", [])):
        members[k].restore(state, pack, sgd, k)
    return d, pack, sgd, seeds, members


def fit_pack(
    configs: Sequence[TrialConfig],
    report: PackReport | None = None,
    *,
    threads: int | None = None,
    resume: dict[str, Any] | None = None,
) -> list[FitResult | DivergedError]:
    """Train trials that share a shape (`spec.pack_key`) as one fused network; per member, its
    result, or the DivergedError that stopped it while the others trained on.

    After every epoch, `report(metrics, state)` is called with each member's metrics (None once it
    has failed); `state` is what `resume` takes to carry on after that epoch. Each member is the
    trial it would be alone: its own initial weights, batch order, rotations, dropout masks, lr
    schedule, momentum, L1, L2 and optimizer state; resumed, it continues exactly.
    """
    first, trains = configs[0].train, [c.train for c in configs]
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(first.device)
    d, pack, sgd, seeds, members = _start(configs, device, resume)
    live = torch.tensor([not m.failed for m in members], device=device)
    batches = datamod.steps(len(d.train_labels), first.batch_size)
    step = compiled(pack, sgd) if first.compile else train_step
    n = len(d.train_labels)
    for epoch in range(len(members[0].history) + 1, first.epochs + 1):
        lr, momentum, lrs = schedule.table(trains, epoch, len(batches), device)
        loss_sum, correct, seconds = _train_epoch(
            pack, sgd, d, seeds, epoch, batches, step, lr, momentum, live
        )
        train_loss, right = (loss_sum / n).tolist(), correct.tolist()  # after the device's work
        for i, m in enumerate(members):
            m.check_loss(train_loss[i], epoch, lrs[i])
        live = torch.tensor([not m.failed for m in members], device=device)
        found = evaluate(pack, d, first.eval_batch_size)
        reported: list[EpochMetrics | None] = [
            None
            if m.failed
            else m.record(
                EpochMetrics(
                    epoch,
                    train_loss[i],
                    100.0 * right[i] / n,
                    *found[i][:2],
                    lrs[i],
                    seconds,
                    n / seconds,
                ),
                pack,
                i,
                d,
                found[i],
            )
            for i, m in enumerate(members)
        ]
        if report:
            report(
                reported,
                {"members": [m.state(pack, sgd, i, device) for i, m in enumerate(members)]},
            )
        if all(m.failed for m in members):
            break
    return [m.result() for m in members]


def fit(
    config: TrialConfig,
    report: Report | None = None,
    *,
    threads: int | None = None,
    resume: dict[str, Any] | None = None,
) -> FitResult:
    """Train one trial (a pack of one) and return its history, best epoch, best weights and
    misclassified digits.

    After every epoch, `report(metrics, state)` is called; `state` is what `resume` takes to carry
    on after that epoch (weights, momentum, history so far). Raises DivergedError when the
    training loss becomes NaN or infinite.
    """

    def one(metrics: list[EpochMetrics | None], state: dict[str, Any]) -> None:
        if report and metrics[0] is not None:
            report(metrics[0], state["members"][0])

    (result,) = fit_pack(
        [config], one, threads=threads, resume={"members": [resume]} if resume else None
    )
    if isinstance(result, DivergedError):
        raise result
    return result
