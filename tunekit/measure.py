"""Measuring the training step on this machine: what `--dry-run` estimates a sweep's time from,
and what `sweep.pack: auto` sizes a GPU pack from (memory per member, and the K where throughput
stops rising)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from tunekit import counter, schedule
from tunekit import data as datamod
from tunekit.opcount import OpCounter
from tunekit.pack import Stack
from tunekit.plan import Plan
from tunekit.spec import TrialConfig
from tunekit.train import build, compiled, evaluate, pick_device, train_step


@dataclass(frozen=True)
class StepTime:
    k: int  # members in the pack timed
    batch: int
    seconds: float  # one training step of the whole pack
    eval_seconds: float  # one evaluation pass over the test set, every member
    steps_per_epoch: int
    device: str
    peak_bytes: int | None  # CUDA: the most memory the step held

    @property
    def images_per_s(self) -> float:
        return self.k * self.batch / self.seconds

    def epoch_seconds(self) -> float:
        return self.steps_per_epoch * self.seconds + self.eval_seconds


def _stepper(configs: Sequence[TrialConfig]) -> tuple[Any, Stack, datamod.Data, torch.device]:
    """A function that runs training step s of `configs` as one pack, and the pack it trains."""
    first = configs[0].train
    device = pick_device(first.device)
    d = datamod.load(configs[0].data, device)
    pack, sgd, seeds = build(configs, d, device)
    n, batch = len(d.train_labels), min(first.batch_size, len(d.train_labels))
    lr, momentum, _ = schedule.table([c.train for c in configs], 1, 1, device)
    draws = datamod.epoch(d, seeds, 1)
    keys = counter.keys(seeds, counter.DROPOUT, 1)
    live = torch.ones(len(configs), dtype=torch.bool, device=device)
    step = compiled(pack, sgd) if first.compile else train_step
    numbers = torch.arange(64, dtype=torch.int32, device=device)  # on the device: no copy a step

    def run(s: int) -> None:
        start = (s * batch) % max(1, n - batch + 1)
        x, y = datamod.train_batch(d, draws, start, batch)  # the batch's gather: part of a step
        step(pack, sgd, x, y, keys, numbers[s % 64], lr[0], momentum[0], live)

    return run, pack, d, device


def launches(configs: Sequence[TrialConfig], warm: int = 2) -> OpCounter:
    """The aten ops of one training step of `configs` as one pack, after `warm` steps."""
    run = _stepper(configs)[0]
    for s in range(warm):
        run(s)
    with OpCounter() as ops:
        run(warm)
    return ops


def time_steps(
    configs: Sequence[TrialConfig], steps: int = 8, warm: int = 2, threads: int | None = None
) -> StepTime:
    """Time `steps` training steps of `configs` as one pack (after `warm` untimed ones), and a
    slice of an evaluation pass scaled to the whole test set."""
    if threads:
        torch.set_num_threads(threads)
    run, pack, d, device = _stepper(configs)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for s in range(warm):
        run(s)
    _sync(device)
    begin = time.perf_counter()
    for s in range(steps):
        run(warm + s)
    _sync(device)
    seconds = (time.perf_counter() - begin) / steps
    first = configs[0].train
    part = min(len(d.test_labels), 2 * first.eval_batch_size)
    small = replace(d, test_images=d.test_images[:part], test_labels=d.test_labels[:part])
    begin = time.perf_counter()
    evaluate(pack, small, first.eval_batch_size)
    eval_seconds = (time.perf_counter() - begin) * len(d.test_labels) / part
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    n, batch = len(d.train_labels), min(first.batch_size, len(d.train_labels))
    return StepTime(
        len(configs), batch, seconds, eval_seconds, len(datamod.steps(n, batch)), device.type, peak
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class PackChoice:
    k: int
    gpu_share: float
    why: str


def choose_pack(
    rates: dict[int, float],
    bytes_per_member: float,
    free_bytes: float,
    total_bytes: float,
    trials: int,
    gain: float = 1.1,
) -> PackChoice:
    """The pack size and GPU share from measurements on one GPU: `rates` (K -> aggregate img/s,
    K rising), the memory one member takes, and the GPU's free and total memory.

    K is the smallest K after which throughput rises less than `gain`× (more members only queue),
    at most what 80% of the free memory holds and at most the trials there are; the share asked of
    Ray is what that pack uses: its memory, or the fraction of the saturating K it fills.
    """
    fits = max(1, int(0.8 * free_bytes // max(bytes_per_member, 1)))
    ks = sorted(rates)
    best = ks[0]
    for a, b in zip(ks, ks[1:]):
        if rates[b] < gain * rates[a]:
            break
        best = b
    k = max(1, min(best, fits, trials))
    busy = k / best  # the fraction of a saturating pack it fills
    memory = k * bytes_per_member / total_bytes
    share = min(1.0, max(busy, memory))
    share = math.ceil(share * 100) / 100
    why = (
        f"measured: throughput stops rising past {best} members "
        f"({rates[best]:,.0f} img/s), {bytes_per_member / 2**20:,.1f} MiB per member, "
        f"{fits:,} fit in 80% of {free_bytes / 2**30:,.1f} GiB free"
    )
    return PackChoice(k, share, why)


def gpu_pack(
    config: TrialConfig, trials: int, ks: Sequence[int] = (1, 4, 16, 64, 256)
) -> PackChoice:
    """`choose_pack` from measurements on this process's GPU: memory per member from packs of 1
    and 2, throughput for each K of `ks` that fits."""
    free, total = torch.cuda.mem_get_info()
    one, two = (time_steps([_seeded(config, s) for s in range(k)], steps=3) for k in (1, 2))
    per_member = max(1, (two.peak_bytes or 0) - (one.peak_bytes or 0))
    rates: dict[int, float] = {}
    for k in ks:
        if k * per_member > 0.8 * free or (rates and k > 4 * trials):
            break
        rates[k] = time_steps([_seeded(config, s) for s in range(k)], steps=5).images_per_s
    return choose_pack(rates, per_member, free, total, trials)


def _seeded(config: TrialConfig, seed: int) -> TrialConfig:
    return config.model_copy(update={"train": config.train.model_copy(update={"seed": seed})})


@dataclass(frozen=True)
class SweepEstimate:
    shapes: list[tuple[StepTime, int]]  # per shape of trial (pack_key): its timing, Ray trials
    at_once: int  # how many Ray trials run at a time on this machine
    epochs: int

    @property
    def units(self) -> int:
        return sum(n for _, n in self.shapes)

    @property
    def seconds(self) -> float:
        work = sum(n * self.epochs * step.epoch_seconds() for step, n in self.shapes)
        longest = max(self.epochs * step.epoch_seconds() for step, _ in self.shapes)
        return max(work / self.at_once, longest)


def estimate(plan: Plan, cpus: int, gpus: int, unpackable: str | None = None) -> SweepEstimate:
    """How long `plan` takes on this machine (`cpus` cores, `gpus` GPUs): a few steps of one
    trial of each shape (in a pack of the size the sweep would use) timed here, times its epochs
    and Ray trials, spread over the trials that fit at once. An upper bound with ASHA, which
    stops some trials early."""
    from tunekit.cluster import AUTO_GPU_SHARE
    from tunekit.packing import decide, pack_key

    s = plan.spec
    trials = [t.config for t in plan.trials] or [plan.trial_base()]
    on_gpu = gpus > 0 and pick_device(trials[0].train.device).type == "cuda"
    size = decide(plan, 1.0 if on_gpu else 0.0, unpackable).size
    groups: dict[str, list[TrialConfig]] = {}
    for c in trials:
        groups.setdefault(pack_key(c), []).append(c)
    shapes = []
    for group in groups.values():
        k = min(size, len(group))
        units = math.ceil(len(group) / k) if plan.trials else plan.size
        timed = [_seeded(group[0], group[0].train.seed + i) for i in range(k)]
        shapes.append((time_steps(timed, threads=s.resources.cpus_per_trial), units))
    units = sum(n for _, n in shapes)
    slots = cpus // s.resources.cpus_per_trial
    if on_gpu:
        share = s.resources.gpus_per_trial or AUTO_GPU_SHARE
        slots = min(slots, int(gpus / min(1.0, share * size)))
    cap = s.sweep.max_concurrent or (2 if plan.adaptive else units)
    return SweepEstimate(shapes, max(1, min(slots, cap, units)), s.train.epochs)
