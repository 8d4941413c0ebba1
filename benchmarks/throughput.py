"""Training throughput: tunekit's training step against a seed-style reference loop.

Both train the same CNN (GN, batch 64, L1 on) on real MNIST with the same torch threads, in the
same process, alternating rounds so that machine noise hits both alike; it prints the median
images/s of each and their ratio.

- tunekit: `train.fit` on the first N training images (uint8 tensors resident on the device,
  batch-wise rotation, cheap dropout mask, one-call L1 penalty); the last epoch's images/s.
- reference: the seed's style: torchvision DataLoader over datasets.MNIST with PIL
  RandomRotation + ToTensor + Normalize per sample, nn.Dropout, and a Python loop summing |p|.
- baseline (with --baseline DIR): `train.fit` of another tunekit checkout (an earlier commit,
  say `git worktree add /tmp/before <rev>`), same config, in a subprocess: today's trainer
  against this one, side by side in the same rounds.

    python benchmarks/throughput.py [--images 9600] [--rounds 3] [--threads 2] [--baseline DIR]

Needs the MNIST files: data.root, or $TUNEKIT_DATA_DIR (e.g. ../shared/data).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import datasets, transforms

from tunekit.datasets import idx
from tunekit.datasets.loading import data_root
from tunekit.models.seed_cnn import Dropout, Net
from tunekit.spec import TrialConfig
from tunekit.train import fit

BATCH, L1 = 64, 1e-4


def seed_style(images: int, threads: int, workers: int) -> float:
    """images/s of the seed's loop over the first `images` training images (after a warm-up)."""
    torch.set_num_threads(threads)
    spec = TrialConfig().data
    root = idx.prepare(spec.dataset, datasets.MNIST, data_root(spec))
    tf = transforms.Compose(
        [
            transforms.RandomRotation((-7.0, 7.0), fill=(0,)),
            transforms.ToTensor(),
            transforms.Normalize((0.1307,), (0.3081,)),
        ]
    )
    ds = torch.utils.data.Subset(datasets.MNIST(str(root), train=True, transform=tf), range(images))
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers)
    model = Net("GN", 4, 0.069)
    for i, m in enumerate(model.features):  # the seed's dropout layer
        if isinstance(m, Dropout):
            model.features[i] = nn.Dropout(m.p)
    opt = torch.optim.SGD(model.parameters(), lr=0.04104, momentum=0.9)
    model.train()
    seen, start = 0, None
    for i, (x, y) in enumerate(loader):
        if i == 5:  # warm-up done
            seen, start = 0, time.perf_counter()
        opt.zero_grad()
        loss = F.nll_loss(model(x), y)
        l1 = 0
        for p in model.parameters():
            l1 = l1 + p.abs().sum()
        (loss + L1 * l1).backward()
        opt.step()
        seen += len(y)
    return seen / (time.perf_counter() - start)


CONFIG = (
    "{'data': {'subset': %d}, 'model': {'norm': 'GN'}, 'train': {'epochs': 2, "
    "'batch_size': %d, 'l1': %g, 'scheduler': {'name': 'none'}, 'device': 'cpu'}}"
)


def tunekit_step(images: int, threads: int) -> float:
    config = TrialConfig.model_validate(eval(CONFIG % (images, BATCH, L1)))
    return fit(config, threads=threads).history[-1].images_per_s


def baseline_step(folder: str, images: int, threads: int) -> float:
    """The same measurement with the tunekit in `folder`, in a process of its own."""
    code = (
        "from tunekit.spec import TrialConfig; from tunekit.train import fit; "
        f"c = TrialConfig.model_validate({CONFIG % (images, BATCH, L1)}); "
        f"print(fit(c, threads={threads}).history[-1].images_per_s)"
    )
    env = {**os.environ, "PYTHONPATH": folder}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=folder,
        text=True,
        capture_output=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=9600, help="training images per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the reference")
    ap.add_argument("--baseline", help="another tunekit checkout to measure side by side")
    args = ap.parse_args()
    ref, ours, base = [], [], []
    for r in range(args.rounds):
        ref.append(seed_style(args.images, args.threads, args.workers))
        ours.append(tunekit_step(args.images, args.threads))
        line = f"round {r + 1}: seed-style {ref[-1]:,.0f} img/s   tunekit {ours[-1]:,.0f} img/s"
        if args.baseline:
            base.append(baseline_step(args.baseline, args.images, args.threads))
            line += f"   baseline {base[-1]:,.0f} img/s"
        print(line, flush=True)
    a, b = statistics.median(ref), statistics.median(ours)
    print(
        f"\nGN, batch {BATCH}, L1 {L1:g}, {args.threads} thread(s), {args.images} images/round, "
        f"median of {args.rounds} rounds"
    )
    print(f"seed-style loop : {a:8,.0f} img/s")
    if base:
        print(f"baseline        : {statistics.median(base):8,.0f} img/s   ({args.baseline})")
    print(f"tunekit         : {b:8,.0f} img/s")
    print(
        f"speed-up        : {b / a:8.2f}x the seed-style loop"
        + (f", {b / statistics.median(base):.2f}x the baseline" if base else "")
    )


if __name__ == "__main__":
    main()
