"""Your own model and dataset: by import path, checked before any trial, swept over their args,
packed where that is exact, and recorded and reported by the parameters that vary."""

from __future__ import annotations

import json
import pickle
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_mnist
from conftest import run_tunekit as tunekit

from tunekit.datasets import loading as datasets
from tunekit.errors import SpecError
from tunekit.pack import Vmapped, packable
from tunekit.spec import DataSpec, TrialConfig
from tunekit.train import fit, fit_pack

MODELS = """
import torch
from torch import nn


def mlp(hidden=32, classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, hidden), nn.ReLU(),
                         nn.Linear(hidden, classes))


def dropped_mlp(p=0.2):
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 16), nn.ReLU(), nn.Dropout(p),
                         nn.Linear(16, 10))


class SmallCNN(nn.Module):
    def __init__(self, width=4, norm="BN", p=0.0, classes=10):
        super().__init__()
        norms = {"BN": lambda c: nn.BatchNorm2d(c), "GN": lambda c: nn.GroupNorm(2, c)}
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), norms[norm](width),
                                  nn.ReLU(), nn.MaxPool2d(4), nn.Dropout(p), nn.Flatten(),
                                  nn.Linear(width * 7 * 7, classes))

    def forward(self, x):
        return torch.log_softmax(self.body(x), 1)


def mixed(width=4):
    return nn.Sequential(nn.Conv2d(1, width, 3, stride=2), nn.GroupNorm(2, width), nn.ReLU(),
                         nn.Flatten(), nn.Linear(width * 13 * 13, 16), nn.LayerNorm(16),
                         nn.ReLU(), nn.Linear(16, 10))


def not_a_module():
    return 42


def fashion(n=64):
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g),
            torch.randint(0, 3, (n,), generator=g),
            torch.randint(0, 256, (16, 28, 28), dtype=torch.uint8, generator=g),
            torch.randint(0, 3, (16,), generator=g))


def colour(n=32):
    images = torch.zeros(n, 3, 28, 28, dtype=torch.uint8)
    return images, torch.arange(n) % 10, images[:8], torch.arange(8)


def broken_loader():
    raise OSError("the bucket is gone")
"""


@pytest.fixture
def yours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with the user's module and a FashionMNIST-format dataset, as the current one."""
    (tmp_path / "their_models.py").write_text(MODELS)
    (tmp_path / "broken_models.py").write_text("import a_package_nobody_installed\n")
    make_mnist(tmp_path / "data", n_train=512, n_test=256, folder="FashionMNIST")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TUNEKIT_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def spec(folder: Path, text: str, name: str = "yours") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\n" + textwrap.dedent(text))
    return path


@pytest.mark.ray
def test_your_cnn_swept_over_its_width_with_repeats(yours: Path) -> None:
    path = spec(
        yours,
        """
        data: {dataset: fashion_mnist}
        model:
          import: "their_models:SmallCNN"
          args: {width: 4, norm: GN, p: 0.1}
          output: log_probs
        train: {epochs: 2, batch_size: 64, scheduler: {name: none}, device: cpu}
        search:
          grid: {model.args.width: [2, 4]}
          repeats: 2
        sweep: {pack: 2}
        """,
    )
    out = tunekit("sweep", str(path), cwd=yours, data=yours / "data")
    assert out.returncode == 0, out.stdout + out.stderr
    # its dropout cannot be packed as each member draws it alone: packs of 1, said in one line
    said = [line for line in out.stdout.splitlines() if "packs of 1" in line]
    assert len(said) == 1 and "layer 'body.4' (Dropout, p=0.1) draws random numbers" in said[0]
    assert len(list((yours / "runs" / "yours").glob("trial_*"))) == 4  # no pack_* folders
    rows = json.loads(
        tunekit("report", str(path), "-f", "json", cwd=yours, data=yours / "data").stdout
    )
    # the columns are the plan's varying parameters: the width, not the seed CNN's four
    assert {r["width"] for r in rows} == {"2", "4"} and all(r["n"] == 2 for r in rows)
    assert not {"norm", "Norm", "l1", "batch_size"} & set(rows[0])
    markdown = tunekit("report", str(path), "-f", "markdown", cwd=yours, data=yours / "data")
    assert markdown.stdout.startswith("| width | trial |")

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{yours / 'mlflow.db'}")
    exp = client.get_experiment_by_name("yours")
    runs = {
        int(r.data.tags["tunekit.trial"]): r
        for r in client.search_runs([exp.experiment_id])
        if "mlflow.parentRunId" in r.data.tags
    }
    assert sorted(runs) == [0, 1, 2, 3]
    for i, r in runs.items():
        assert r.data.params["model.import"] == "their_models:SmallCNN"
        assert r.data.params["model.args.width"] == str([2, 2, 4, 4][i])
        assert r.data.params["model.args.norm"] == "GN" and "model.name" not in r.data.params
        assert r.data.tags["tunekit.status"] == "done"

    # `tunekit train --trial 3` trains trial 3 again, to the same numbers
    again = tunekit("train", str(path), "--trial", "3", cwd=yours, data=yours / "data")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"max val_acc {runs[3].data.metrics['max_val_acc']:.2f}%" in again.stdout


BAD = {  # what the spec sets -> the key the one line names, and what it says
    "missing module": ('model: {import: "nowhere:Net"}', "model.import", "no module named"),
    "module that fails to import": (
        'model: {import: "broken_models:Net"}',
        "model.import",
        "broken_models failed to import: No module named 'a_package_nobody_installed'",
    ),
    "missing attribute": ('model: {import: "their_models:Nett"}', "model.import", "has no 'Nett'"),
    "args it does not take": (
        'model: {import: "their_models:mlp", args: {width: 3}}',
        "model.args",
        "unexpected keyword argument 'width'",
    ),
    "not a module": (
        'model: {import: "their_models:not_a_module"}',
        "model.import",
        "not an nn.Module",
    ),
    "wrong classes": (
        'model: {import: "their_models:mlp", args: {classes: 5}}',
        "model.import",
        "should be (2, 10)",
    ),
    "not log-probabilities": (
        'model: {import: "their_models:mlp", output: log_probs}',
        "model.output",
        "not log-probabilities",
    ),
    "missing files": (
        "data: {dataset: kmnist, download: false}",
        "data.root",
        "kmnist files not found",
    ),
    "subset too large": (
        "data: {dataset: fashion_mnist, subset: 100000}",
        "data.subset",
        "more than the 512 training images",
    ),
    "images that do not fit": (
        'data: {import: "their_models:colour"}\nmodel: {import: "their_models:SmallCNN"}',
        "data.import",
        "images of shape 3×28×28 do not fit their_models:SmallCNN",
    ),
    "broken loader": (
        'data: {import: "their_models:broken_loader"}',
        "data.import",
        "raised OSError: the bucket is gone",
    ),
    "seeds scored together, a model that cannot pack": (
        'model: {import: "their_models:dropped_mlp"}\n'
        "search: {grid: {train.optimizer.lr: [0.01]}, repeats: 2}\n"
        "sweep: {asha: {grace_period: 1}}",
        "search.repeats",
        "with asha, a configuration's seeds train as one pack, and this model cannot be packed",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_model_or_data_exits_2_in_one_line_with_nothing_started(yours: Path, case: str) -> None:
    text, key, says = BAD[case]
    if "data:" not in text:
        text = "data: {dataset: fashion_mnist}\n" + text
    path = spec(yours, text + "\ntrain: {epochs: 1}\n")
    out = tunekit("sweep", str(path), cwd=yours, data=yours / "data", timeout=120)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stdout + out.stderr
    assert f"{key}: " in lines[0] and says in lines[0] and "Traceback" not in out.stderr, lines
    assert not (yours / "runs").exists() and not (yours / "mlflow.db").exists()  # nothing kept


def test_images_that_do_not_fit_the_model_name_the_dataset(yours: Path) -> None:
    from tunekit.checks import check_config

    root = yours / "cifar"
    write_cifar(root, 20, 10)
    config = TrialConfig.model_validate(
        {"data": {"dataset": "cifar10", "root": str(root)}, "model": {"import": "their_models:mlp"}}
    )
    with pytest.raises(
        SpecError,
        match=r"data.dataset: images of shape 3×32×32 do not fit their_models:mlp: RuntimeError",
    ):
        check_config(config)


def write_cifar(root: Path, n_train: int, n_test: int) -> tuple[np.ndarray, list[int]]:
    """CIFAR-10's python batches (`cifar-10-batches-py/`), `n_train` images split over five."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_train + n_test, 3072), dtype=np.uint8)
    labels = [int(x) for x in rng.integers(0, 10, n_train + n_test)]
    per = n_train // 5
    for i in range(5):
        part = slice(i * per, (i + 1) * per)
        with open(folder / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({"data": images[part], "labels": labels[part], "batch_label": "x"}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": images[n_train:], "labels": labels[n_train:]}, f)
    return images, labels


def test_cifar10_reads_its_python_batches_with_crop_and_flip(tmp_path: Path) -> None:
    images, labels = write_cifar(tmp_path, 50, 10)
    spec_ = DataSpec(dataset="cifar10", root=tmp_path)
    assert (spec_.rotation, spec_.crop, spec_.flip) == (0.0, 4, True)  # what fits CIFAR
    found = datasets.load(spec_)
    assert found.train_images.shape == (50, 3, 32, 32) and found.classes == 10
    assert np.array_equal(found.train_images.reshape(50, -1).numpy(), images[:50])
    assert found.test_labels.tolist() == labels[50:]
    from tunekit import data

    d = data.load(spec_)
    draws = data.epoch(d, torch.tensor([1, 2], dtype=torch.int32), 1)
    assert draws.shifts.abs().max() <= 4 and draws.flips.any() and not draws.flips.all()
    x, y = data.train_batch(d, draws, 0, 10)
    assert x.shape == (10, 2, 3, 32, 32) and y.shape == (10, 2)
    # member 0's first image: its stored pixels, shifted and maybe mirrored, zeros coming in
    raw = d.normalize(d.train_images[draws.order[0, :1]])[0]
    dx, dy = (int(v) for v in draws.shifts[0, 0])
    want = torch.full_like(raw, 0.0)
    want = d.standardize_(want.unsqueeze(0))[0]  # black, standardised
    src = raw.flip(-1) if draws.flips[0, 0] else raw
    h, w = 32, 32
    ys, xs = slice(max(0, -dy), min(h, h - dy)), slice(max(0, -dx), min(w, w - dx))
    yd, xd = slice(max(0, dy), min(h, h + dy)), slice(max(0, dx), min(w, w + dx))
    want[:, ys, xs] = src[:, yd, xd]
    assert torch.allclose(x[0, 0], want, atol=1e-6)


def test_your_dataset_callable_is_read_and_checked(yours: Path) -> None:
    found = datasets.load(
        DataSpec.model_validate({"import": "their_models:fashion", "args": {"n": 40}})
    )
    assert found.train_images.shape == (40, 1, 28, 28) and found.classes == 3
    assert DataSpec.model_validate({"import": "their_models:fashion"}).rotation == 0.0
    with pytest.raises(SpecError, match="data.args: .*unexpected keyword argument 'm'"):
        datasets.load(DataSpec.model_validate({"import": "their_models:fashion", "args": {"m": 1}}))


@pytest.fixture
def exact():
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False  # as tests/test_pack.py: torch's own kernels
    yield
    torch.backends.mkldnn.enabled = before


@pytest.mark.parametrize(
    "model", ["their_models:mlp", "their_models:SmallCNN", "their_models:mixed"]
)
def test_a_pack_of_your_model_is_its_members_alone(yours: Path, exact, model: str) -> None:
    configs = [
        TrialConfig.model_validate(
            {
                "data": {"dataset": "fashion_mnist", "subset": 256},
                "model": {"import": model, **({"output": "log_probs"} if "CNN" in model else {})},
                "train": {
                    "epochs": 2,
                    "batch_size": 32,
                    "device": "cpu",
                    "seed": seed,
                    "l1": l1,
                    "optimizer": {"lr": lr},
                    "scheduler": {"name": "none"},
                },
            }
        )
        for seed, lr, l1 in ((1, 0.05, 0.0), (2, 0.02, 1e-4), (3, 0.08, 0.0))
    ]
    packed = fit_pack(configs, threads=1)
    for result, config in zip(packed, configs):
        alone = fit(config, threads=1)
        assert [m.val_acc for m in result.history] == [m.val_acc for m in alone.history]
        assert [m.train_loss for m in result.history] == [m.train_loss for m in alone.history]
        for k in alone.best_state:
            assert torch.equal(result.best_state[k], alone.best_state[k]), k


def test_a_model_that_draws_random_numbers_is_not_packed_and_says_why(yours: Path) -> None:
    import their_models  # type: ignore[import-not-found]

    assert packable(their_models.mlp(), (1, 28, 28)) is None
    why = packable(their_models.dropped_mlp(), (1, 28, 28))
    assert why is not None and "layer '3' (Dropout, p=0.2) draws random numbers" in why
    from torch import nn

    why = packable(nn.Sequential(nn.Flatten(), nn.Linear(784, 8), nn.BatchNorm1d(8)), (1, 28, 28))
    assert why is not None and "layer '2' (BatchNorm1d) has weights of a kind" in why
    pack = Vmapped([their_models.dropped_mlp()])  # alone it trains, its dropout seeded per epoch
    assert pack(torch.zeros(4, 1, 1, 28, 28)).shape == (4, 1, 10)


API = """
import json, sys
import tunekit
from tunekit.errors import SpecError

plan = tunekit.load(sys.argv[1], {"train.epochs": 1})  # as --set train.epochs=1
outcome = tunekit.run(plan)
try:
    tunekit.load(sys.argv[1], {"train.epochs": 0})
    refused = ""
except SpecError as e:
    refused = str(e)
print(json.dumps({"size": plan.size, "args": plan.trials[1].config.model.args,
                  "epochs": plan.trials[0].config.train.epochs,
                  "interrupted": outcome.interrupted,
                  "statuses": [t.status for t in outcome.states], "table": outcome.table(),
                  "again": tunekit.table(sys.argv[1]), "refused": refused}))
"""


@pytest.mark.ray
def test_the_python_api_loads_overrides_runs_and_reads_the_table(yours: Path) -> None:
    """As a notebook would, in a Python process of its own."""
    import subprocess
    import sys

    path = spec(
        yours,
        """
        data: {dataset: fashion_mnist, subset: 128}
        model: {import: "their_models:mlp"}
        train: {epochs: 3, batch_size: 64, device: cpu}
        search: {grid: {model.args.hidden: [8, 16]}}
        """,
        name="api",
    )
    out = subprocess.run(
        [sys.executable, "-c", API, str(path)],
        cwd=yours,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["size"] == 2 and got["args"] == {"hidden": 16} and got["epochs"] == 1
    assert not got["interrupted"] and got["statuses"] == ["done", "done"]
    table = got["table"]
    assert {r["hidden"] for r in table} == {"8", "16"} and all(r["n"] == 1 for r in table)
    assert [(r["hidden"], r["max_val_acc"]) for r in got["again"]] == [
        (r["hidden"], r["max_val_acc"]) for r in table
    ]  # read back later from MLflow alone
    assert "train.epochs" in got["refused"]


def test_the_example_model_and_spec_pass_the_checks(yours: Path) -> None:
    from conftest import REPO

    import tunekit

    plan = tunekit.load(REPO / "examples" / "fashion_mnist.yaml", {"data.subset": 100})
    checked = tunekit.api.check(plan)  # each width's WideCNN built on FashionMNIST's images
    assert checked.image_shape == (1, 28, 28) and checked.classes == 10
    assert checked.unpackable is None  # no dropout: it packs where packing pays (GPUs)
    assert checked.ship == [str(REPO / "examples" / "my_models.py")]


def test_your_model_with_dropout_resumes_exactly(yours: Path) -> None:
    config = TrialConfig.model_validate(
        {
            "data": {"dataset": "fashion_mnist", "subset": 128},
            "model": {"import": "their_models:dropped_mlp"},
            "train": {
                "epochs": 2,
                "batch_size": 32,
                "device": "cpu",
                "scheduler": {"name": "none"},
            },
        }
    )
    states = []
    whole = fit(config, lambda m, state: states.append(state), threads=1)
    again = fit(config, threads=1, resume=states[0])  # from the end of epoch 1
    assert [m.val_acc for m in again.history] == [m.val_acc for m in whole.history]
    for k in whole.best_state:
        assert torch.equal(again.best_state[k], whole.best_state[k]), k


def test_the_dry_run_of_a_model_with_dropout_asked_to_pack_ends_in_an_estimate(
    yours: Path,
) -> None:
    path = spec(
        yours,
        """
        data: {dataset: fashion_mnist}
        model: {import: "their_models:dropped_mlp"}
        train: {epochs: 1, batch_size: 16}
        search: {grid: {train.seed: [1, 2]}}
        """,
    )
    out = tunekit(
        "sweep", str(path), "--dry-run", "--set", "sweep.pack=2", cwd=yours, data=yours / "data"
    )
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stdout + out.stderr
    assert "estimate: about" in out.stdout
