"""Sweep overhead and CPU packing on this machine, through `tunekit.sweep.run` on a real local Ray.

1. The smoke sweep (experiments/smoke.yaml, real MNIST): its wall time against the sum of its
   trials' own time (Ray's time_total_s: data loading, training and evaluation), and from those
   the Ray overhead per trial = (wall × concurrent trials − Σ trial time) / trials.
2. Aggregate training images/s of two concurrent one-thread trials (cpus_per_trial 1) against one
   two-thread trial at a time (cpus_per_trial 2, max_concurrent 1): GN, batch 64, the last of two
   epochs on the first N training images.

    TUNEKIT_DATA_DIR=../shared/data python benchmarks/sweep.py [--images 12000]

Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
import time
from pathlib import Path

from tunekit import cluster, storage, sweep, trials
from tunekit.plan import Plan, load_plan, make_plan
from tunekit.spec import ExperimentSpec

REPO = Path(__file__).resolve().parents[1]


def timed(plan: Plan) -> tuple[float, list[trials.TrialState], list[float]]:
    """Wall seconds of the sweep, its trials, and each trial's own seconds as Ray measured them."""
    totals: list[float] = []
    storage.check(plan)
    storage.record(plan)
    start = time.perf_counter()
    trials = sweep.run(plan)
    wall = time.perf_counter() - start
    for t in trials:
        rows = list(csv.DictReader(open(Path(t.path) / "progress.csv")))
        totals.append(float(rows[-1]["time_total_s"]))
    return wall, trials, totals


def makespan(durations: list[float], slots: int) -> float:
    """Wall time of running `durations` longest-first on `slots` parallel slots."""
    ends = [0.0] * slots
    for d in sorted(durations, reverse=True):
        ends[ends.index(min(ends))] += d
    return max(ends)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=12000, help="training images per packing trial")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    results = tempfile.mkdtemp(prefix="tunekit-bench-")
    cluster.start_ray(None)

    smoke = load_plan(REPO / "experiments" / "smoke.yaml", {"sweep.storage": results}).spec
    wall, trials, totals = timed(make_plan(smoke))
    slots = min(cores // smoke.resources.cpus_per_trial, len(trials))
    ideal = makespan(totals, slots)
    overhead = (wall - ideal) * slots / len(trials)
    print(
        f"smoke sweep: {len(trials)} trials, {slots} at a time on {cores} cores "
        f"(Ray already started)"
    )
    print(f"  wall time          : {wall:7.1f} s")
    print(f"  Σ trial time       : {sum(totals):7.1f} s  ({', '.join(f'{t:.1f}' for t in totals)})")
    print(f"  same trials packed : {ideal:7.1f} s  on {slots} slots with no overhead")
    print(f"  overhead per trial : {overhead:7.1f} s  (wall − packed) × {slots} / {len(trials)}")

    rates = {}
    for cpus, cap in ((1, None), (2, 1)):
        spec = ExperimentSpec.model_validate(
            {
                "name": f"packing-{cpus}cpu",
                "data": {"subset": args.images},
                "train": {"epochs": 2, "batch_size": 64, "scheduler": {"name": "none"}},
                "search": {"grid": {"train.seed": [1, 2]}},
                "resources": {"cpus_per_trial": cpus, "gpus_per_trial": 0},
                "sweep": {"storage": results, "max_concurrent": cap},
            }
        )
        _, trials, _ = timed(make_plan(spec))
        per_trial = [t.history[-1]["images_per_s"] for t in trials]
        rates[cpus] = sum(per_trial) if cpus == 1 else statistics.mean(per_trial)
        print(
            f"{cpus} thread(s) per trial: "
            + ", ".join(f"{r:,.0f}" for r in per_trial)
            + " img/s per trial"
        )
    print(
        f"aggregate img/s: 2 × 1-thread trials at once {rates[1]:,.0f}; "
        f"1 × 2-thread trial at a time {rates[2]:,.0f}; ratio {rates[1] / rates[2]:.2f}x"
    )


if __name__ == "__main__":
    main()
