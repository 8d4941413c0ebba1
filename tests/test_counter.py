"""Counter-based random numbers: the hash, the draws, and a member's independence from its pack."""

from __future__ import annotations

import torch

from tunekit import counter
from tunekit.fused import Fused
from tunekit.models.seed_cnn import Net

MNIST_SHAPE = (1, 28, 28)  # one image, C×H×W


def lowbias32(x: int) -> int:
    """The mixer written out in Python integers, the reference for the int32 tensor version."""
    m = 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x21F0AAAD) & m
    x ^= x >> 15
    x = (x * 0x735A2D97) & m
    return x ^ (x >> 15)


def test_the_int32_mixer_is_lowbias32_on_every_kind_of_value() -> None:
    values = [0, 1, 2, 12345, 2**31 - 1, 2**31, 2**32 - 1, 0xDEADBEEF]
    signed = torch.tensor([v - 2**32 if v >= 2**31 else v for v in values], dtype=torch.int32)
    got = [v & 0xFFFFFFFF for v in counter.mix_(signed.clone()).tolist()]
    assert got == [lowbias32(v) for v in values]


def test_uniform_draws_cover_the_unit_interval_evenly() -> None:
    k = counter.keys(torch.tensor([1, 2], dtype=torch.int32), counter.ROTATION, 1)
    u = counter.uniform(k, 100_000)
    assert u.shape == (2, 100_000) and u.min() >= 0 and u.max() < 1
    assert torch.allclose(u.mean(1), torch.full((2,), 0.5), atol=0.005)
    deciles = torch.histc(u[0], bins=10, min=0, max=1) / 100_000
    assert torch.all((deciles - 0.1).abs() < 0.005), deciles
    assert abs(torch.corrcoef(u)[0, 1].item()) < 0.01  # two members: unrelated draws


def test_keys_differ_by_seed_stream_and_epoch_and_permutations_are_permutations() -> None:
    seeds = torch.tensor([1, 2], dtype=torch.int32)
    found = {tuple(counter.keys(seeds, s, e).tolist()) for s in (1, 2, 3) for e in (1, 2)}
    assert len(found) == 6 and all(a != b for a, b in found)
    order = counter.permutation(counter.keys(seeds, counter.ORDER, 1), 1000)
    assert all(sorted(row.tolist()) == list(range(1000)) for row in order)
    assert not torch.equal(order[0], order[1])


def test_dropout_masks_keep_1_minus_p_and_are_a_member_s_own() -> None:
    nets = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        nets.append(Net("GN", dropout=0.3))
    trio, alone = Fused(nets, MNIST_SHAPE), Fused(nets[1:2], MNIST_SHAPE)
    assert list(trio.dropped) == [3, 7, 12, 16, 21, 26]  # the six dropout layers
    assert trio.dropped[3] == 8 * 28 * 28 // 2  # two 16-bit draws per hash
    keys = counter.step_keys(
        counter.keys(torch.tensor([5, 9, 4], dtype=torch.int32), counter.DROPOUT, 1),
        torch.tensor(7),
    )
    masks, one = trio.draw_masks(16, keys), alone.draw_masks(16, keys[1:2])
    for i in trio.dropped:
        assert torch.equal(masks[i][:, 1], one[i][:, 0])  # member 2's mask: its key's alone
        assert (masks[i][:, 0] != masks[i][:, 1]).any()  # other keys, other masks
    first = masks[3]
    assert abs((first != 0).float().mean().item() - 0.7) < 0.005
    assert torch.allclose(first[first != 0], torch.tensor(1 / 0.7))
    assert not torch.equal(masks[3][:, :, :784], masks[7][:, :, :784])  # layers draw apart


def test_a_pack_s_forward_drops_out_with_those_masks() -> None:
    torch.manual_seed(0)
    pack = Fused([Net("GN", dropout=0.5)], MNIST_SHAPE)
    keys = counter.keys(torch.tensor([3], dtype=torch.int32), counter.DROPOUT, 1)
    x = torch.randn(4, 1, 1, 28, 28)
    a, b = pack(x, keys), pack(x, keys)
    assert torch.equal(a, b)  # the same key: the same masks
    assert not torch.equal(a, pack(x, keys + 1)) and not torch.equal(a, pack.eval()(x))
