"""Models and datasets are registries of one file each: a new one is a new file and nothing
else; the built-in CNN takes its channels, classes and image size from the dataset, alone and
in a pack."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import run_tunekit
from test_pack import exact, same  # noqa: F401  (exact: a fixture)
from test_yours import write_cifar

from tunekit.spec import TrialConfig
from tunekit.train import fit, fit_pack

REPO = Path(__file__).resolve().parents[1]

GREY32 = """
import torch


def grey32(n=96):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n + 32, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n + 32,), generator=g)
    return images[:n], labels[:n], images[n:], labels[n:]
"""


def configs(data: dict, k: int) -> list[TrialConfig]:
    """k trials of seed_cnn (BatchNorm, dropout) on `data`, seeds 1..k."""
    return [
        TrialConfig.model_validate(
            {
                "data": data,
                "model": {"args": {"norm": "BN", "dropout": 0.1}},
                "train": {"epochs": 2, "batch_size": 16, "eval_batch_size": 16, "seed": seed},
            }
        )
        for seed in range(1, k + 1)
    ]


def test_seed_cnn_packs_on_32x32_grey_images_of_your_own(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    exact,  # noqa: F811
) -> None:
    (tmp_path / "grey.py").write_text(GREY32)
    monkeypatch.syspath_prepend(str(tmp_path))
    pair = configs({"import": "grey:grey32"}, 2)
    packed = fit_pack(pair, threads=1)
    for result, config in zip(packed, pair):
        same(result, fit(config, threads=1))  # per epoch, bit for bit
    assert packed[0].best_state["features.0.weight"].shape == (8, 1, 3, 3)


def test_seed_cnn_trains_on_cifar10_batches_alone_and_packed(
    tmp_path: Path,
    exact,  # noqa: F811
) -> None:
    write_cifar(tmp_path, 60, 20)
    pair = configs({"dataset": "cifar10", "root": str(tmp_path)}, 2)
    packed = fit_pack(pair, threads=1)
    for result, config in zip(packed, pair):
        same(result, fit(config, threads=1))
    first, head = packed[0].best_state["features.0.weight"], packed[0].best_state["head.1.weight"]
    assert first.shape == (8, 3, 3, 3) and head.shape == (10, 16, 1, 1)  # RGB in, 10 classes
    assert all(torch.isfinite(torch.tensor(m.train_loss)) for m in packed[0].history)


NEW_MODEL = '''
"""tiny_mlp: a built-in model added as one file."""

from torch import nn

from tunekit.models.registry import register
from tunekit.spec.base import Strict


class Args(Strict):
    hidden: int = 16  # units of the hidden layer


@register("tiny_mlp", Args)
def build(args: Args, shape: tuple[int, ...], classes: int) -> nn.Module:
    c, h, w = shape
    return nn.Sequential(
        nn.Flatten(), nn.Linear(c * h * w, args.hidden), nn.ReLU(), nn.Linear(args.hidden, classes)
    )
'''

NEW_DATASET = '''
"""stripes: a built-in dataset added as one file (made, not read: 12×12 grey stripes)."""

import torch

from tunekit.datasets.registry import Dataset, register


def read(root, download):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (160,), generator=g)
    rows = torch.arange(12).view(1, 12, 1)
    images = ((rows % (labels.view(-1, 1, 1) + 2) == 0) * 255).expand(-1, 12, 12)
    images = images.to(torch.uint8).unsqueeze(1).contiguous()
    return images[:128], labels[:128], images[128:], labels[128:]


register(Dataset("stripes", read, (1, 12, 12), 4, (0.3,), (0.45,)))
'''


@pytest.mark.ray
def test_a_model_and_a_dataset_added_as_one_file_each(tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(
        REPO / "tunekit", copy / "tunekit", ignore=shutil.ignore_patterns("__pycache__")
    )
    (copy / "tunekit" / "models" / "tiny_mlp.py").write_text(NEW_MODEL)
    (copy / "tunekit" / "datasets" / "stripes.py").write_text(NEW_DATASET)
    spec = tmp_path / "new.yaml"
    spec.write_text(
        textwrap.dedent(
            """
            name: new
            data: {dataset: stripes}
            model: {name: tiny_mlp, args: {hidden: 8}}
            train: {epochs: 1, batch_size: 32, eval_batch_size: 32, scheduler: {name: none}}
            resources: {cpus_per_trial: 1, gpus_per_trial: 0}
            """
        )
    )

    def tunekit(*args: str) -> subprocess.CompletedProcess:
        return run_tunekit(*args, cwd=tmp_path, data=tmp_path, env={"PYTHONPATH": str(copy)})

    out = tunekit("validate", str(spec))
    assert out.returncode == 0, out.stdout + out.stderr
    out = tunekit("sweep", str(spec))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 done" in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(spec.read_text().replace("hidden: 8", "hiden: 8"))
    out = tunekit("validate", str(bad))
    assert out.returncode == 2 and "model.args.hiden" in out.stderr
    assert "did you mean 'hidden'" in out.stderr


def test_the_dry_run_of_seed_cnn_on_32x32_images_ends_in_an_estimate(tmp_path: Path) -> None:
    (tmp_path / "grey.py").write_text(GREY32)
    spec = tmp_path / "grey.yaml"
    spec.write_text(
        "name: grey\ndata: {import: 'grey:grey32'}\ntrain: {epochs: 1, batch_size: 16}\n"
        "search: {grid: {model.args.norm: [BN, GN]}}\nsweep: {pack: 2}\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "tunekit", "sweep", str(spec), "--dry-run"],
        cwd=tmp_path,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stdout + out.stderr
    assert "estimate: about" in out.stdout
