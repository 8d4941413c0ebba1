"""Claims a study tests: `better` beats `than`, at some setting, or by more at one than another."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from tunekit.spec.base import Strict
from tunekit.spec.trial import check_path


class Claim(Strict):
    """A directional claim the study tests, in plan parameters: `better` beats `than` (at `at`),
    or, with `more_than_at`, beats it by more at `at` than at `more_than_at`."""

    text: str = Field(min_length=1)  # the claim in words, as the report quotes it
    better: dict[str, Any]  # e.g. {model.norm: GN}
    than: dict[str, Any]  # the same fields, other values: {model.norm: BN}
    at: dict[str, Any] = {}  # where: {train.batch_size: 16}; empty: averaged over the rest
    more_than_at: dict[str, Any] | None = None  # the same fields as `at`, other values

    @model_validator(mode="after")
    def _comparable(self) -> Claim:
        for part in ("better", "than", "at", "more_than_at"):
            for path in getattr(self, part) or {}:
                check_path(path)
        if not self.better or set(self.better) != set(self.than) or self.better == self.than:
            raise ValueError(
                "better and than name the same fields with other values, e.g. "
                "better: {model.norm: GN}, than: {model.norm: BN}"
            )
        if set(self.at) & set(self.better):
            raise ValueError("at fixes other fields than better/than")
        if self.more_than_at is not None and (
            set(self.more_than_at) != set(self.at) or self.more_than_at == self.at or not self.at
        ):
            raise ValueError("more_than_at names the same fields as at, with other values")
        return self
