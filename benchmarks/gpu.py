"""GPU throughput: one trial alone on a GPU, four trials sharing it (0.25 GPU each, as a sweep
with the automatic share runs them), and the same four packed into one fused network, in training
images/s.

Each trial is `train.fit` on real MNIST (GN, batch 64, data resident on the device); a trial's
figure is its last epoch's images/s. The four run at once as Ray tasks that ask for 0.25 GPU each;
their sum is the aggregate the GPU delivers to a sweep.

    python benchmarks/gpu.py [--images 60000] [--epochs 2] [--device cuda]

`--device cpu` runs the same measurement on the CPU (a check of the script, not a GPU figure).
Needs the MNIST files: data.root, or $TUNEKIT_DATA_DIR.
"""

from __future__ import annotations

import argparse
import os
import time

import ray
import torch

from tunekit.spec import TrialConfig
from tunekit.train import fit, fit_pack


def config(images: int, epochs: int, device: str, seed: int) -> TrialConfig:
    return TrialConfig.model_validate({
        "data": {"subset": images}, "model": {"norm": "GN"},
        "train": {"epochs": epochs, "batch_size": 64, "device": device, "seed": seed}})


def one_trial(images: int, epochs: int, device: str, seed: int = 1) -> float:
    return fit(config(images, epochs, device, seed), threads=1).history[-1].images_per_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=60000, help="training images per epoch")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per trial (the last is timed)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--share", type=int, default=4, help="trials sharing the device at once")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run this on a GPU machine (or --device cpu)")
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU, 1 thread per trial"
    print(f"{name} · torch {torch.__version__} · {args.images} images × {args.epochs} epochs")

    alone = one_trial(args.images, args.epochs, args.device)
    print(f"1 trial alone:            {alone:10,.0f} img/s")

    gpu = 1 / args.share if args.device == "cuda" else 0
    env = {k: os.environ[k] for k in ("TUNEKIT_DATA_DIR",) if k in os.environ}
    ray.init(address="local", include_dashboard=False, runtime_env={"env_vars": env},
             num_cpus=max(args.share, os.cpu_count() or 1), log_to_driver=False)
    task = ray.remote(num_cpus=1, num_gpus=gpu)(one_trial)
    start = time.perf_counter()
    rates = ray.get([task.remote(args.images, args.epochs, args.device, seed)
                     for seed in range(1, args.share + 1)])
    wall = time.perf_counter() - start
    ray.shutdown()
    total = sum(rates)
    print(f"{args.share} trials × {gpu:g} GPU: {total:10,.0f} img/s in all "
          f"({', '.join(f'{r:,.0f}' for r in rates)} each; {wall:.0f} s wall, start-up included)")
    print(f"sharing vs alone:         {total / alone:10.2f}×")
    configs = [config(args.images, args.epochs, args.device, seed)
               for seed in range(1, args.share + 1)]
    packed = fit_pack(configs, threads=1)
    rate = sum(r.history[-1].images_per_s for r in packed)
    print(f"{args.share} trials packed:         {rate:10,.0f} img/s in all (one process, one "
          "fused network)")
    print(f"packed vs alone:          {rate / alone:10.2f}×")


if __name__ == "__main__":
    main()
