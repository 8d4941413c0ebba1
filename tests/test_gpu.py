"""The CUDA path end to end. Runs where torch sees an NVIDIA GPU; skipped elsewhere (CI has none).

On a GPU machine, from the repository root:

    TUNEKIT_DATA_DIR=/path/to/data pytest tests/test_gpu.py -v -s
    python benchmarks/gpu.py
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import progress

from tunekit import data as datamod
from tunekit.spec import TrialConfig
from tunekit.train import fit, fit_pack

MNIST_SHAPE = (1, 28, 28)  # one image, C×H×W

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here: the GPU check needs an NVIDIA GPU"
)


@pytest.fixture(autouse=True)
def cudnn_as_it_was():
    """Tests that change cuDNN's flags leave them as they found them."""
    before = (
        torch.backends.cudnn.enabled,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    yield
    (
        torch.backends.cudnn.enabled,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    ) = before


def config(device: str, root: Path, **train: object) -> TrialConfig:
    return TrialConfig.model_validate(
        {
            "data": {"root": str(root)},
            "model": {"args": {"norm": "GN"}},
            "train": {"epochs": 1, "batch_size": 64, "device": device, **train},
        }
    )


def small(cfg: TrialConfig, images: int) -> TrialConfig:
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"subset": images})})


def test_data_augmentation_and_dropout_stay_on_the_gpu(real_mnist: Path) -> None:
    d = datamod.load(config("cuda", real_mnist).data, "cuda")
    seeds = torch.tensor([1, 2], dtype=torch.int32, device="cuda")
    x, y = datamod.train_batch(d, datamod.epoch(d, seeds, 1), 0, 64)  # on the device
    assert x.is_cuda and y.is_cuda and x.shape == (64, 2, 28, 28)
    on_cpu = datamod.epoch(datamod.load(config("cpu", real_mnist).data), seeds.cpu(), 1)
    assert torch.equal(datamod.epoch(d, seeds, 1).order.cpu(), on_cpu.order)  # same draws
    from tunekit import counter
    from tunekit.fused import Fused
    from tunekit.models.seed_cnn import Net

    pack = Fused([Net("GN", dropout=0.5)], MNIST_SHAPE, "cuda")
    keys = counter.step_keys(
        counter.keys(seeds[:1], counter.DROPOUT, 1), torch.tensor(0, device="cuda")
    )
    kept = pack.draw_masks(64, keys)[3]
    assert kept.is_cuda and 0.49 < (kept > 0).float().mean().item() < 0.51
    on_cpu = Fused([Net("GN", dropout=0.5)], MNIST_SHAPE).draw_masks(64, keys.cpu())[3]
    assert torch.equal(kept.cpu(), on_cpu)  # the same masks on either device


def test_one_trial_on_cuda_reaches_the_cpu_accuracy_band(real_mnist: Path) -> None:
    on_gpu = fit(config("cuda", real_mnist), threads=2)
    on_cpu = fit(config("cpu", real_mnist), threads=2)
    print(
        f"GN batch 64, 1 epoch: cuda {on_gpu.max_val_acc:.2f}% at "
        f"{on_gpu.history[0].images_per_s:,.0f} img/s; cpu {on_cpu.max_val_acc:.2f}% at "
        f"{on_cpu.history[0].images_per_s:,.0f} img/s"
    )
    assert on_gpu.max_val_acc >= 97.0
    assert abs(on_gpu.max_val_acc - on_cpu.max_val_acc) < 1.0  # other kernels, same training


def test_a_resumed_cuda_trial_continues_exactly(real_mnist: Path) -> None:
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    cfg = small(config("cuda", real_mnist, epochs=2), 6000)
    states: list[dict] = []
    full = fit(cfg, lambda m, s: states.append(copy.deepcopy(s)), threads=2)
    assert states[0]["device"] == "cuda"
    assert all(not v.is_cuda for v in states[0]["model"].values())  # saved as CPU tensors
    torch.cuda.manual_seed(12345)  # whatever the process drew since: draws are counter-based
    torch.rand(1000, device="cuda")
    resumed = fit(cfg, threads=2, resume=states[0])
    # Bit-equal up to the order of float sums in GPU kernels (AdaptiveAvgPool's backward has no
    # deterministic CUDA kernel).
    a, b = full.history[1], resumed.history[1]
    assert b.train_loss == pytest.approx(a.train_loss, rel=1e-4)
    assert abs(a.val_acc - b.val_acc) <= 0.05


def test_four_trials_with_a_quarter_gpu_each_share_one_device(
    tmp_path: Path, real_mnist: Path
) -> None:
    (tmp_path / "spec.yaml").write_text(
        textwrap.dedent("""
        name: quarter
        train: {epochs: 2, batch_size: 64}
        search:
          grid: {train.seed: [1, 2, 3, 4]}
        resources: {cpus_per_trial: 1, gpus_per_trial: 0.25}
        sweep: {max_concurrent: 4, pack: 1}
    """)
    )  # pack: 1, else auto packs the four into one Ray trial and nothing is shared
    out = subprocess.run(
        [sys.executable, "-m", "tunekit", "sweep", "spec.yaml"],
        cwd=tmp_path,
        text=True,
        capture_output=True,
        timeout=600,
        env={**os.environ, "TUNEKIT_DATA_DIR": str(real_mnist)},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    rows = progress(tmp_path / "runs" / "quarter")
    assert sorted(rows) == [f"trial_{i:04d}" for i in range(4)]
    last = [trial[-1] for trial in rows.values()]
    assert {r["device"] for r in last} == {"cuda"} and len({r["gpu_ids"] for r in last}) == 1
    assert not any(r["warning"] for r in last)
    spans = [
        (float(r["timestamp"]) - float(r["time_total_s"]), float(r["timestamp"])) for r in last
    ]
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans  # all four at once


def test_a_pack_on_cuda_is_its_members_alone(real_mnist: Path) -> None:
    # cuDNN picks other kernels for grouped and single convolutions (their sums round apart by
    # ~1e-7 and SGD amplifies that over steps): compare with torch's own CUDA kernels, over a
    # short run, leaving room only for the float atomics some backward kernels use.
    torch.backends.cudnn.enabled = False
    configs = [
        small(config("cuda", real_mnist, seed=s, l1=l1, optimizer={"lr": lr}), 640)
        for s, lr, l1 in ((1, 0.04, 0.0), (2, 0.02, 1e-4), (3, 0.06, 0.0))
    ]
    for packed, cfg in zip(fit_pack(configs, threads=2), configs):
        alone = fit(cfg, threads=2)
        assert packed.history[0].train_loss == pytest.approx(alone.history[0].train_loss, rel=1e-4)
        for k, v in alone.best_state.items():
            assert torch.allclose(packed.best_state[k].float(), v.float(), atol=1e-4), k


def test_the_compiled_step_is_captured_and_trains_like_eager(real_mnist: Path) -> None:
    eager = fit(small(config("cuda", real_mnist, epochs=2), 6400), threads=2)
    graphed = fit(small(config("cuda", real_mnist, epochs=2, compile=True), 6400), threads=2)
    print(
        f"6,400 images, epoch 2: eager {eager.history[1].images_per_s:,.0f} img/s, "
        f"compiled + CUDA graph {graphed.history[1].images_per_s:,.0f} img/s"
    )
    assert abs(eager.history[1].val_acc - graphed.history[1].val_acc) < 1.5
