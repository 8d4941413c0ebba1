"""Counter-based random numbers: a hash of (member seed, stream, epoch, step, element), computed for
every member of a pack in one op.

A pack member's batch order, rotations and dropout masks must be the ones it draws alone, whatever
its pack-mates: so no generator is shared, and none has state to save or to capture in a CUDA
graph. Each draw is `mix(key, counter)`: the key names the member and what is drawn (seed, stream,
epoch, step), the counter the element. Resuming needs only the epoch and step.

The mixer is Chris Wellons' lowbias32 with multipliers below 2^31 (hash-prospector), on int32
tensors: multiplication wraps modulo 2^32 on CPUs and GPUs alike, and shifts are made logical by
masking the sign bits an arithmetic shift drags in.
"""

from __future__ import annotations

import torch

ORDER, ROTATION, DROPOUT, CROP, FLIP = 1, 2, 3, 4, 5  # streams: what a key draws


def mix_(x: torch.Tensor) -> torch.Tensor:
    """lowbias32, in place on an int32 tensor (every 32-bit value maps to another, well mixed)."""
    x ^= (x >> 16) & 0xFFFF
    x.mul_(0x21F0AAAD)
    x ^= (x >> 15) & 0x1FFFF
    x.mul_(0x735A2D97)
    x ^= (x >> 15) & 0x1FFFF
    return x


def keys(seeds: torch.Tensor, stream: int, epoch: int | torch.Tensor) -> torch.Tensor:
    """One int32 key per member (`seeds`: int32, one per member) for `stream` in `epoch`."""
    k = mix_(seeds.to(torch.int32) ^ (stream * 0x3C6EF372 & 0x7FFFFFFF))
    k = mix_(k ^ epoch)
    return k


def step_keys(epoch_keys: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """The keys of one training step (`step`: an int32 tensor, so that a captured step replays)."""
    return mix_(epoch_keys ^ mix_(step.to(torch.int32) + 0x5BD1E995))


def bits(k: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """32 random bits per (member, counter): `k` [K] against int32 `counters` [..., 1, C] → a
    fresh [..., K, C] int32 tensor; each member's bits depend on its key and the counter alone."""
    return mix_(counters ^ k.view(-1, 1))


def uniform(k: torch.Tensor, n: int) -> torch.Tensor:
    """[K, n] floats in [0, 1), 24 bits each: member k's are uniform(key k, 0..n-1)."""
    counters = torch.arange(n, dtype=torch.int32, device=k.device).view(1, n)
    return (bits(k, counters) & 0xFFFFFF).float() * (1.0 / 2**24)


def permutation(k: torch.Tensor, n: int) -> torch.Tensor:
    """[K, n] int64: each row a permutation of 0..n-1 drawn from its member's key (a stable sort of
    random 32-bit keys, so ties, about one per 2^32/n² draws, still give one answer)."""
    counters = torch.arange(n, dtype=torch.int32, device=k.device).view(1, n)
    return torch.sort(bits(k, counters), dim=1, stable=True).indices
