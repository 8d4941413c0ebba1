"""Models: a built-in one by name (`registry`: one file each, as `seed_cnn.py`), or your own
callable by import path.

A built-in model gets its validated args, the dataset's image shape and its classes. Your
callable takes the spec's `model.args` as keyword args and returns an `nn.Module` that maps a
batch of images N×C×H×W (float, standardised per channel) to N×classes: logits, or
log-probabilities with `model.output: log_probs`. The driver builds it once on a dummy batch of
the dataset's images before any trial (`check`).
"""

from __future__ import annotations

import torch
from torch import nn

from tunekit import imports
from tunekit.errors import Problem, SpecError
from tunekit.models import registry
from tunekit.spec import ModelSpec


def build(spec: ModelSpec, image_shape: tuple[int, ...], classes: int) -> nn.Module:
    """A fresh model for images of `image_shape` (C×H×W) and `classes` classes, its weights drawn
    from torch's generator as it stands."""
    if spec.import_ is None:
        entry = registry.get(spec.name)
        return entry.build(entry.args.model_validate(spec.args), image_shape, classes)
    return imports.resolve(spec.import_, "model.import")(**spec.args)


def check(spec: ModelSpec, image_shape: tuple[int, ...], classes: int, data_key: str) -> nn.Module:
    """The model built once and run on a dummy batch of two images of the dataset's shape; a
    SpecError naming the key if it cannot be: a missing module or attribute (model.import),
    args it does not take (model.args), images it cannot take (`data_key`), an output of the
    wrong shape (model.import) or not log-probabilities when it says so (model.output)."""
    if spec.import_ is not None:
        fn = imports.resolve(spec.import_, "model.import")
        imports.check_args(fn, spec.args, "model.args")
        try:
            torch.manual_seed(0)
            model = fn(**spec.args)
        except Exception as e:
            raise SpecError(
                [
                    Problem(
                        "model.args",
                        f"{spec.import_}({_args(spec)}) raised {type(e).__name__}: {e}",
                    )
                ]
            ) from None
        if not isinstance(model, nn.Module):
            raise SpecError(
                [
                    Problem(
                        "model.import",
                        f"{spec.import_}({_args(spec)}) returned "
                        f"{type(model).__name__}, not an nn.Module",
                    )
                ]
            )
    else:
        model = build(spec, image_shape, classes)
    name = spec.import_ or spec.name
    x = torch.zeros(2, *image_shape)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise SpecError(
            [
                Problem(
                    data_key,
                    f"images of shape {'×'.join(map(str, image_shape))} "
                    f"do not fit {name}: {type(e).__name__}: {first}",
                )
            ]
        ) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SpecError(
            [
                Problem(
                    "model.import" if spec.import_ else "model",
                    f"{name} maps 2 images to {got}; the dataset has {classes} "
                    f"classes, so it should be (2, {classes})",
                )
            ]
        )
    if (
        spec.import_
        and spec.log_probs
        and not torch.allclose(out.exp().sum(1), torch.ones(2), atol=1e-3)
    ):
        raise SpecError(
            [
                Problem(
                    "model.output",
                    f"log_probs, but {name}'s outputs are not "
                    "log-probabilities (their exp does not sum to "
                    "1): leave output at logits",
                )
            ]
        )
    return model


def _args(spec: ModelSpec) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in spec.args.items())
