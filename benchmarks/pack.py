"""Packed training: kernel launches per training step and throughput for packs of K trials,
against the same K trials trained one after another on the same device and threads.

Each trial: GN, batch 64, L1 on, the first N MNIST training images, 2 epochs; a figure is the
last epoch's. `launches/step` counts the non-view aten ops of one training step (each is a kernel
launch on a GPU), batch gather and rotation included: it should barely grow with K. Separate
trials on one device take turns, so their aggregate is the images of all K over the time all K
take; that time is measured on up to 4 of them and scaled.

    python benchmarks/pack.py [--images 4096] [--ks 1,4,16,64] [--threads 2] [--device cpu]
                              [--compile]

Needs the MNIST files: data.root, or $TUNEKIT_DATA_DIR.
"""

from __future__ import annotations

import argparse

import torch

from tunekit import measure
from tunekit.spec import TrialConfig
from tunekit.train import fit, fit_pack


def config(images: int, device: str, seed: int, compile: bool = False) -> TrialConfig:
    return TrialConfig.model_validate(
        {
            "data": {"subset": images},
            "model": {"args": {"norm": "GN"}},
            "train": {
                "epochs": 2,
                "batch_size": 64,
                "device": device,
                "seed": seed,
                "l1": 1e-5,
                "optimizer": {"lr": 0.01 + 0.001 * seed},
                "scheduler": {"name": "none"},
                "compile": compile,
            },
        }
    )


def launches(k: int, images: int, device: str) -> int:
    """Non-view aten ops of one training step of a pack of k, warmed up."""
    return measure.launches([config(images, device, s) for s in range(k)]).launches


def packed(k: int, images: int, device: str, threads: int, compile: bool) -> float:
    results = fit_pack([config(images, device, s, compile) for s in range(k)], threads=threads)
    return k * results[0].history[-1].images_per_s  # the pack's epoch: every member's images


def separate(k: int, images: int, device: str, threads: int) -> float:
    runs = [
        fit(config(images, device, s), threads=threads).history[-1].images_per_s
        for s in range(min(k, 4))
    ]
    return 1 / (sum(1 / r for r in runs) / len(runs))  # turns on one device: harmonic mean


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=4096, help="training images per trial")
    ap.add_argument("--ks", default="1,4,16,64", help="pack sizes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument(
        "--compile",
        action="store_true",
        help="the packed step compiled (torch.compile fullgraph; a CUDA graph on CUDA)",
    )
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here")
    where = (
        torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU, {args.threads} thread(s)"
    )
    print(
        f"{where} · torch {torch.__version__} · {args.images} images per trial · "
        f"{'compiled' if args.compile else 'eager'} packed step"
    )
    print(
        f"{'K':>4} {'launches/step':>14} {'packed img/s':>14} {'separate img/s':>16} {'ratio':>7}"
    )
    for k in (int(x) for x in args.ks.split(",")):
        n = launches(k, args.images, args.device)
        p = packed(k, args.images, args.device, args.threads, args.compile)
        s = separate(k, args.images, args.device, args.threads)
        print(f"{k:>4} {n:>14,} {p:>14,.0f} {s:>16,.0f} {p / s:>6.2f}×", flush=True)


if __name__ == "__main__":
    main()
