"""Data: IDX files read through torchvision, offline extraction under a lock, device batching
and augmentation."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_mnist, synthetic_digits
from torchvision.datasets import MNIST

from tunekit import data
from tunekit.datasets import idx
from tunekit.datasets import loading as datasets
from tunekit.errors import DataError
from tunekit.spec import DataSpec


def test_reads_gz_files_as_shipped(tiny_data: Path) -> None:
    d = data.load(DataSpec())
    images, labels = synthetic_digits(256, 0)
    assert d.train_images.dtype == torch.uint8 and d.train_images.shape == (256, 1, 28, 28)
    assert np.array_equal(d.train_images[:, 0].numpy(), images)
    assert np.array_equal(d.train_labels.numpy(), labels)
    assert d.test_images.shape == (128, 1, 28, 28)
    # the source folder was only read: extraction went to tunekit's cache
    assert sorted(p.name for p in (tiny_data / "MNIST" / "raw").iterdir()) == sorted(
        f"{s}-{k}-idx{n}-ubyte.gz"
        for s in ("train", "t10k")
        for k, n in (("images", 3), ("labels", 1))
    )


def test_extracted_files_are_used_in_place(tmp_path: Path) -> None:
    root = make_mnist(tmp_path / "plain", gz=False)
    assert idx.prepare("mnist", MNIST, root) == root


def test_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEKIT_DATA_DIR", str(tmp_path / "env"))
    assert datasets.data_root(DataSpec(root=tmp_path / "spec")) == tmp_path / "spec"
    assert datasets.data_root(DataSpec()) == tmp_path / "env"
    monkeypatch.delenv("TUNEKIT_DATA_DIR")
    assert datasets.data_root(DataSpec()) == Path("data")


def test_subset_takes_the_first_images(tiny_data: Path) -> None:
    d = data.load(DataSpec(subset=10))
    assert len(d.train_labels) == 10 and len(d.test_labels) == 128
    assert np.array_equal(d.train_labels.numpy(), synthetic_digits(256, 0)[1][:10])


def test_missing_files_name_the_folder_and_files(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        idx.prepare("mnist", MNIST, tmp_path / "empty", download=False)
    msg = str(e.value)
    assert str(tmp_path / "empty" / "MNIST" / "raw") in msg
    assert "train-images-idx3-ubyte[.gz]" in msg and "t10k-labels-idx1-ubyte[.gz]" in msg
    assert "TUNEKIT_DATA_DIR" in msg


def _prepare_in_child(root: str, cache: str, out: mp.Queue[str]) -> None:
    os.environ["TUNEKIT_CACHE_DIR"] = cache
    out.put(str(idx.prepare("mnist", MNIST, Path(root))))


def test_concurrent_first_extraction_does_not_race(tmp_path: Path) -> None:
    root = make_mnist(tmp_path / "data", n_train=3000)
    cache = tmp_path / "cache"
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_prepare_in_child, args=(str(root), str(cache), out)) for _ in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    roots = {out.get(timeout=5) for _ in procs}
    assert len(roots) == 1
    raw = Path(roots.pop()) / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        [
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ]
    )  # no temporary files left behind
    assert (raw / "train-images-idx3-ubyte").stat().st_size == 16 + 3000 * 28 * 28


def test_rotation_by_zero_is_identity_and_keeps_shape() -> None:
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(data.rotate(x, torch.zeros(4)), x, atol=1e-6)
    y = data.rotate(x, torch.tensor([90.0, -90.0, 7.0, 180.0]))
    assert y.shape == x.shape
    # a 90° turn moves a pixel near the top-centre to the left- or right-centre
    dot = torch.zeros(1, 1, 28, 28)
    dot[0, 0, 2, 14] = 1.0
    turned = data.rotate(dot, torch.tensor([90.0]))[0, 0]
    r, c = divmod(int(turned.argmax()), 28)
    assert abs(r - 14) <= 1 and c in (1, 2, 3, 24, 25, 26)


def _epoch_labels(d: data.Data, seeds: list[int], number: int) -> list[torch.Tensor]:
    draws = data.epoch(d, torch.tensor(seeds, dtype=torch.int32), number)
    return [
        data.train_batch(d, draws, start, size)[1]
        for start, size in data.steps(len(d.train_labels), 50)
    ]


def test_batches_cover_every_image_once_per_member_and_are_seeded(tiny_data: Path) -> None:
    d = data.load(DataSpec(rotation=0.0))
    a = _epoch_labels(d, [1, 2], 1)
    assert [y.shape for y in a] == [(50, 2)] * 5 + [(6, 2)]  # the last six images too
    for k in range(2):
        assert sorted(torch.cat(a)[:, k].tolist()) == sorted(d.train_labels.tolist())
    assert all(torch.equal(u, v) for u, v in zip(a, _epoch_labels(d, [1, 2], 1)))
    assert not all(torch.equal(u, v) for u, v in zip(a, _epoch_labels(d, [1, 2], 2)))  # epoch
    assert not torch.equal(torch.cat(a)[:, 0], torch.cat(a)[:, 1])  # each member its own order


def test_a_member_s_batches_do_not_depend_on_its_pack_mates(tiny_data: Path) -> None:
    d = data.load(DataSpec(rotation=7.0))
    alone = data.epoch(d, torch.tensor([7], dtype=torch.int32), 3)
    packed = data.epoch(d, torch.tensor([1, 7, 2], dtype=torch.int32), 3)
    assert torch.equal(alone.order[0], packed.order[1])
    assert torch.equal(alone.angles[0], packed.angles[1])
    x1, y1 = data.train_batch(d, alone, 64, 64)
    x3, y3 = data.train_batch(d, packed, 64, 64)
    assert torch.equal(x1[:, 0], x3[:, 1]) and torch.equal(y1[:, 0], y3[:, 1])
    assert alone.angles.abs().max() <= 7.0 and alone.angles.std() > 3.0  # uniform on ±7°


def test_batches_are_normalized_rotated_and_keep_every_image(tiny_data: Path) -> None:
    d = data.load(DataSpec(subset=65))
    assert data.steps(65, 64) == [(0, 64), (64, 1)]  # a last batch of one image is trained on
    draws = data.epoch(d, torch.tensor([0], dtype=torch.int32), 1)
    x, y = data.train_batch(d, draws, 0, 64)
    assert x.shape == (64, 1, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (64, 1)
    assert x.min().item() == pytest.approx(-0.1307 / 0.3081, abs=1e-4)  # black stays black
    plain = d.normalize(d.train_images[draws.order[0, :64]])
    assert not torch.equal(x, plain)  # rotated


def test_a_failed_download_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(MNIST, "download", offline)
    (tmp_path / "here").mkdir()
    for root in (tmp_path / "here", tmp_path / "new" / "data"):
        with pytest.raises(DataError, match="download failed"):
            idx.prepare("mnist", MNIST, root, download=True)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["here"]  # no MNIST/raw, no lock
