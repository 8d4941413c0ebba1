"""Packed training: K trials as one fused network are the K trials trained alone."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from tunekit import counter, schedule
from tunekit import data as datamod
from tunekit.errors import DivergedError
from tunekit.fused import Fused
from tunekit.models.seed_cnn import Net
from tunekit.opcount import OpCounter
from tunekit.spec import TrialConfig
from tunekit.train import build, fit, fit_pack, train_step

MNIST_SHAPE = (1, 28, 28)  # one image, C×H×W


def config(norm: str = "GN", seed: int = 1, lr: float = 0.04, **train: object) -> TrialConfig:
    return TrialConfig.model_validate(
        {
            "model": {"args": {"norm": norm}},
            "train": {
                "epochs": 2,
                "batch_size": 32,
                "eval_batch_size": 64,
                "device": "cpu",
                "seed": seed,
                "optimizer": {"lr": lr},
                **train,
            },
        }
    )


MEMBERS = [
    dict(seed=1, lr=0.04),
    dict(seed=2, lr=0.02, l1=1e-4),
    dict(seed=3, lr=0.06, l1=1e-5, l2=5e-4, penalize="weights"),
]


@pytest.fixture
def exact():
    """oneDNN picks other kernels for grouped and single convolutions (their float sums round
    differently, ~1e-7, and SGD amplifies that over steps); torch's own kernels do the same sums,
    so the comparison is exact."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    yield
    torch.backends.mkldnn.enabled = before


def same(a, b) -> None:
    """Every epoch's metrics and every weight of the best epoch, bit for bit."""
    assert [m.as_dict() | {"seconds": 0, "images_per_s": 0} for m in a.history] == [
        m.as_dict() | {"seconds": 0, "images_per_s": 0} for m in b.history
    ]
    assert a.best_epoch == b.best_epoch and a.best_state.keys() == b.best_state.keys()
    for k in a.best_state:
        assert torch.equal(a.best_state[k], b.best_state[k]), k
    assert torch.equal(a.misclassified.indices, b.misclassified.indices)


@pytest.mark.parametrize("norm", ["BN", "GN", "LN"])
def test_a_pack_of_three_is_the_three_trials_alone_in_any_order_and_company(
    tiny_data: Path, exact, norm: str
) -> None:
    configs = [config(norm, **m) for m in MEMBERS]
    packed = fit_pack(configs, threads=1)
    for result, cfg in zip(packed, configs):
        same(result, fit(cfg, threads=1))
        Net(norm).load_state_dict(result.best_state)  # a plain Net's weights
    for result, again in zip(packed, reversed(fit_pack(configs[::-1], threads=1))):
        same(result, again)  # another place in the pack
    others = [config(norm, seed=8, lr=0.01, l2=1e-3), config(norm, seed=9, lr=0.07)]
    same(packed[1], fit_pack([others[0], configs[1], others[1]], threads=1)[1])  # other mates


@pytest.mark.parametrize("norm", ["BN", "GN", "LN"])
def test_the_fused_forward_is_each_member_s_forward_with_default_kernels(norm: str) -> None:
    nets = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        nets.append(Net(norm, dropout=0.0).eval())
    x = torch.randn(8, 3, 1, 28, 28)  # N×K×C×H×W: member k's images in [:, k]
    pack = Fused(nets, MNIST_SHAPE).eval()
    out = pack(x)
    for k, net in enumerate(nets):
        assert torch.allclose(out[:, k], net(x[:, k]), atol=1e-5)
        view = pack.member_net(k).eval()  # the stack seen as member k's Net
        assert torch.allclose(view(x[:, k]), net(x[:, k]), atol=1e-5)
    with torch.no_grad():
        pack.params.mul_(0.5)  # trained in the pack, seen by the member's Net
    assert torch.equal(pack.member_net(1).features[0].weight, nets[1].features[0].weight * 0.5)


def test_a_member_with_lr_0_does_not_move_and_the_others_train_on(tiny_data: Path, exact) -> None:
    still = config(seed=1, l2=1e-3, l1=1e-4)  # lr 0 is no valid spec: set it past validation
    still = still.model_copy(
        update={
            "train": still.train.model_copy(
                update={"optimizer": still.train.optimizer.model_copy(update={"lr": 0.0})}
            )
        }
    )
    configs = [still, config(seed=2, lr=0.05)]
    torch.manual_seed(1)
    start = Net("GN").state_dict()
    still, moving = fit_pack(configs, threads=1)
    assert all(
        torch.equal(still.best_state[k], v)
        for k, v in start.items()
        if "running" not in k and "tracked" not in k
    )
    same(moving, fit(configs[1], threads=1))


def test_a_member_that_diverges_fails_alone(tiny_data: Path, exact) -> None:
    configs = [config(seed=1), config(seed=2, lr=1e30), config(seed=3, lr=0.02)]
    first, diverged, third = fit_pack(configs, threads=1)
    assert isinstance(diverged, DivergedError) and "epoch 1" in str(diverged)
    same(first, fit(configs[0], threads=1))
    same(third, fit(configs[2], threads=1))


def test_a_pack_resumed_from_its_checkpoint_continues_exactly(tiny_data: Path) -> None:
    configs = [config(norm="BN", epochs=3, **m) for m in MEMBERS]
    states: list[dict] = []
    full = fit_pack(configs, lambda metrics, state: states.append(copy.deepcopy(state)), threads=1)
    torch.manual_seed(999)
    resumed = fit_pack(configs, threads=1, resume=states[0])
    for a, b in zip(full, resumed):
        same(a, b)


def test_trials_of_other_shapes_are_not_packed() -> None:
    with pytest.raises(ValueError, match="share"):
        fit_pack([config(batch_size=32), config(batch_size=64)])


def test_the_plan_packs_trials_of_one_shape_in_plan_order() -> None:
    from tunekit.plan import make_plan
    from tunekit.spec import ExperimentSpec

    spec = ExperimentSpec.model_validate(
        {
            "name": "p",
            "search": {
                "grid": {
                    "train.batch_size": [32, 64],
                    "train.seed": [1, 2, 3],
                    "train.l1": [0.0, 1e-4],
                }
            },
        }
    )
    plan = make_plan(spec)
    packs = plan.packs(4)
    assert sorted(i for p in packs for i in p) == list(range(12))  # every trial, once
    for p in packs:
        assert len({plan.trials[i].config.train.batch_size for i in p}) == 1 and len(p) <= 4
    assert [len(p) for p in packs] == [4, 2, 4, 2]
    assert plan.packs(1) == [[i] for i in range(12)]


def test_a_pack_asks_for_its_members_gpu_shares_up_to_one_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tunekit import cluster, packing
    from tunekit.plan import make_plan
    from tunekit.spec import ExperimentSpec

    spec = ExperimentSpec.model_validate({"name": "p"})
    monkeypatch.setenv(cluster.GPUS_ENV, "0.25")
    assert cluster.ask(spec).packed(2).gpus == 0.5 and cluster.ask(spec).packed(16).gpus == 1.0
    assert packing.decide(make_plan(spec), cluster.ask(spec).gpus).size == packing.AUTO_PACK
    monkeypatch.setenv(cluster.GPUS_ENV, "0")
    assert packing.decide(make_plan(spec), cluster.ask(spec).gpus).size == 1  # CPUs: no faster


def step_of(k: int, norm: str, l1: float, batch: int = 32):
    """One training step of a pack of k trials on the tiny data, ready to call with a step
    number, and the inputs it takes (for counting and compiling)."""
    configs = [config(norm, seed=s, l1=l1, batch_size=batch) for s in range(1, k + 1)]
    d = datamod.load(configs[0].data)
    pack, sgd, seeds = build(configs, d, torch.device("cpu"))
    draws = datamod.epoch(d, seeds, 1)
    lr, momentum, _ = schedule.table([c.train for c in configs], 1, 8, "cpu")
    keys, live = counter.keys(seeds, counter.DROPOUT, 1), torch.ones(k, dtype=torch.bool)

    def inputs(s: int) -> tuple:
        x, y = datamod.train_batch(d, draws, s * batch, batch)
        return pack, sgd, x, y, keys, torch.tensor(s, dtype=torch.int32), lr[s], momentum[s], live

    return inputs


@pytest.mark.parametrize("norm", ["GN", "BN"])
@pytest.mark.parametrize("l1", [0.0, 1e-4])
def test_a_step_launches_about_as_many_kernels_for_16_members_as_for_one(
    tiny_data: Path, norm: str, l1: float
) -> None:
    counts = {}
    for k in (1, 16):
        inputs = step_of(k, norm, l1)
        train_step(*inputs(0))  # warm: first-call set-up is not a step's cost
        with OpCounter() as ops:
            train_step(*inputs(1))  # the batch's gather and rotation counted in
        counts[k] = ops.launches
        assert ops.syncs == {}, ops.syncs  # nothing waits for the device inside a step
    print(f"{norm}, l1 {l1}: {counts[1]} launches per step at K=1, {counts[16]} at K=16")
    assert counts[16] <= 1.3 * counts[1], counts


def test_the_step_compiles_whole(tiny_data: Path) -> None:
    import torch._dynamo

    inputs = step_of(2, "BN", 1e-4)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        explained = torch._dynamo.explain(train_step)(*inputs(0))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_the_compiled_step_trains_as_the_eager_one(tiny_data: Path) -> None:
    """AOTAutograd's traced forward and backward (the graph inductor and CUDA graphs take) against
    eager, over a few steps of a pack: the same training up to float rounding."""
    from tunekit.train import compiled

    eager, traced = step_of(2, "GN", 1e-4), step_of(2, "GN", 1e-4)
    pack, sgd = traced(0)[:2]
    step = compiled(pack, sgd, backend="aot_eager")
    for s in range(4):
        a, b = train_step(*eager(s)), step(*traced(s))
        assert torch.allclose(a[0], b[0], rtol=1e-4) and torch.equal(a[1], b[1]), s
    assert torch.allclose(eager(0)[0].params, pack.params, atol=1e-5)
