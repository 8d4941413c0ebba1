"""GPU throughput, in aggregate training images/s: one trial alone, four trials sharing the GPU
(0.25 GPU each, as a sweep with the automatic share runs them), and packs of 16, 64 and 256
trials as one fused network, eager and compiled (torch.compile, captured as a CUDA graph).

A trial is `train.fit` (GN, batch 64, data resident on the device). Every figure counts training
passes alone (the test pass after each epoch excluded): one trial's or one pack's is its last
epoch's. The four sharing run at once as Ray tasks asking 0.25 GPU
each; each records when its last training pass began and ended, and their aggregate is the
images all of them trained inside the wall-clock window where those passes overlap, not a sum of
rates that need not overlap in time. Also prints the memory a pack member takes.

    python benchmarks/gpu.py [--images 60000] [--epochs 2] [--packs 16,64,256] [--json FILE]

`--device cpu` with small sizes checks the script on a machine without a GPU (no GPU figures).
Needs the MNIST files: data.root, or $TUNEKIT_DATA_DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import ray
import torch

from tunekit.spec import TrialConfig
from tunekit.train import fit, fit_pack


def config(images: int, epochs: int, device: str, seed: int, compile: bool = False) -> TrialConfig:
    return TrialConfig.model_validate(
        {
            "data": {"subset": images},
            "model": {"args": {"norm": "GN"}},
            "train": {
                "epochs": epochs,
                "batch_size": 64,
                "device": device,
                "seed": seed,
                "compile": compile,
            },
        }
    )


def one_trial(images: int, epochs: int, device: str, seed: int = 1) -> tuple[float, float]:
    """(start, end) wall-clock time of the trial's last training pass (its test pass excluded):
    it starts when the epoch before it has reported, and lasts the seconds it reports."""
    marks: list[tuple[float, float]] = [(time.time(), 0.0)]

    def mark(metrics, _state) -> None:
        marks.append((time.time(), metrics.seconds))

    fit(config(images, epochs, device, seed), mark, threads=1)
    start = marks[-2][0]
    return start, start + marks[-1][1]


def common_window(passes: list[tuple[float, float]], images: int) -> tuple[float, float]:
    """Aggregate img/s of training passes over the window all of them were training in (each
    pass trains its images evenly over its time), and the window's length."""
    start, end = max(a for a, _ in passes), min(b for _, b in passes)
    if end <= start:
        raise SystemExit("the sharing trials' last passes did not overlap: use more epochs")
    return sum(images * (end - start) / (b - a) for a, b in passes) / (end - start), end - start


def pack_rate(k: int, images: int, epochs: int, device: str, compile: bool) -> float:
    """A pack's training images/s in all, over its last training pass."""
    results = fit_pack([config(images, epochs, device, s, compile) for s in range(k)], threads=1)
    return k * results[0].history[-1].images_per_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=60000, help="training images per epoch")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per trial (the last is timed)")
    ap.add_argument("--share", type=int, default=4, help="trials sharing the device at once")
    ap.add_argument("--packs", default="16,64,256", help="pack sizes")
    ap.add_argument("--pack-images", type=int, default=10000, help="images per pack member")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run this on a GPU machine (or --device cpu)")
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU, 1 thread per trial"
    print(
        f"{name} · torch {torch.__version__} · {args.images} images × {args.epochs} epochs",
        flush=True,
    )
    out: dict[str, object] = {"device": name, "torch": torch.__version__}

    start, end = one_trial(args.images, args.epochs, args.device)
    alone = args.images / (end - start)
    out["alone"] = alone
    print(f"1 trial alone:              {alone:10,.0f} img/s", flush=True)

    gpu = 1 / args.share if args.device == "cuda" else 0
    env = {k: os.environ[k] for k in ("TUNEKIT_DATA_DIR",) if k in os.environ}
    ray.init(
        address="local",
        include_dashboard=False,
        runtime_env={"env_vars": env},
        num_cpus=max(args.share, os.cpu_count() or 1),
        log_to_driver=False,
    )
    task = ray.remote(num_cpus=1, num_gpus=gpu)(one_trial)
    passes = ray.get(
        [
            task.remote(args.images, args.epochs + 1, args.device, seed)
            for seed in range(1, args.share + 1)
        ]
    )
    ray.shutdown()
    shared, window = common_window(passes, args.images)
    out["shared"] = shared
    print(
        f"{args.share} trials × {gpu:g} GPU:     {shared:10,.0f} img/s in all, over the "
        f"{window:.1f} s all {args.share} trained at once ({shared / alone:.2f}× alone)",
        flush=True,
    )

    for k in (int(x) for x in args.packs.split(",")):
        for compile in (False, True):
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            rate = pack_rate(k, args.pack_images, args.epochs, args.device, compile)
            mode = (
                "compiled, CUDA graph"
                if compile and args.device == "cuda"
                else ("compiled" if compile else "eager")
            )
            memory = ""
            if args.device == "cuda":
                memory = f", {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB peak"
            out[f"pack{k}_{'compiled' if compile else 'eager'}"] = rate
            print(
                f"pack of {k:>3} ({mode:>20}): {rate:10,.0f} img/s in all ({rate / alone:.1f}× "
                f"one trial alone, {rate / shared:.1f}× {args.share} sharing{memory})",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
