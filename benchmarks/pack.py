"""Packed training throughput: K trials fused into one network against the same K trials trained
one after another on the same device and threads, in aggregate training images/s.

Each trial: GN, batch 64, the first N MNIST training images, 2 epochs; its figure is the last
epoch's. Separate trials on one device take turns, so their aggregate is the images of all K
over the time all K take; that time is measured on up to 4 of them and scaled.

    python benchmarks/pack.py [--images 4096] [--ks 1,4,16,64] [--threads 2] [--device cpu]

Needs the MNIST files: data.root, or $TUNEKIT_DATA_DIR.
"""

from __future__ import annotations

import argparse

import torch

from tunekit.spec import TrialConfig
from tunekit.train import fit, fit_pack


def config(images: int, device: str, seed: int) -> TrialConfig:
    return TrialConfig.model_validate({
        "data": {"subset": images}, "model": {"norm": "GN"},
        "train": {"epochs": 2, "batch_size": 64, "device": device, "seed": seed,
                  "optimizer": {"lr": 0.01 + 0.001 * seed}, "scheduler": {"name": "none"}}})


def packed(k: int, images: int, device: str, threads: int) -> float:
    results = fit_pack([config(images, device, s) for s in range(k)], threads=threads)
    return k * results[0].history[-1].images_per_s  # the pack's epoch: every member's images


def separate(k: int, images: int, device: str, threads: int) -> float:
    runs = [fit(config(images, device, s), threads=threads).history[-1].images_per_s
            for s in range(min(k, 4))]
    return 1 / (sum(1 / r for r in runs) / len(runs))  # turns on one device: harmonic mean


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=4096, help="training images per trial")
    ap.add_argument("--ks", default="1,4,16,64", help="pack sizes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here")
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else \
        f"CPU, {args.threads} thread(s)"
    print(f"{where} · torch {torch.__version__} · {args.images} images per trial")
    print(f"{'K':>4} {'packed img/s':>14} {'separate img/s':>16} {'ratio':>7}")
    for k in (int(x) for x in args.ks.split(",")):
        p, s = packed(k, args.images, args.device, args.threads), \
            separate(k, args.images, args.device, args.threads)
        print(f"{k:>4} {p:>14,.0f} {s:>16,.0f} {p / s:>6.2f}×", flush=True)
    if args.device == "cuda":
        print("graph-captured (CUDA graphs / torch.compile) step: not built yet")


if __name__ == "__main__":
    main()
