"""The registry of built-in models: each is one file in `tunekit/models/` that registers itself
(as timm's `@register_model`): its args schema, its builder, and what its output is. Adding a
model is adding that file; nothing else names it.

Light on purpose (no torch here): the spec validates `model.name` and `model.args` against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from tunekit.registry import Registry

if TYPE_CHECKING:
    from torch import nn

# A builder: (its validated args, one image's shape C×H×W, the dataset's classes) -> a module
# mapping images N×C×H×W to N×classes
Builder = Callable[[Any, tuple[int, ...], int], "nn.Module"]


@dataclass(frozen=True)
class Model:
    """A built-in model: its name in specs, its args schema, its builder, its output."""

    name: str
    args: type[BaseModel]  # model.args, validated (extra keys refused); defaults filled in
    build: Builder
    output: Literal["logits", "log_probs"] = "logits"


MODELS: Registry[Model] = Registry("tunekit.models", "built-in model")


def register(
    name: str, args: type[BaseModel], output: Literal["logits", "log_probs"] = "logits"
) -> Callable[[Builder], Builder]:
    """Decorate a model's builder in its own file: `@register("seed_cnn", Args, "log_probs")`."""

    def add(build: Builder) -> Builder:
        MODELS.add(name, Model(name, args, build, output))
        return build

    return add


def models() -> dict[str, Model]:
    """Every built-in model by name."""
    return MODELS.all()


def get(name: str) -> Model:
    """The built-in model `name`; a ValueError listing the valid names if there is none."""
    return MODELS.get(name)
