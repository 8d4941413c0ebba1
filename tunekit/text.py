"""How numbers read wherever people see them (tables, labels, plots, messages)."""

from __future__ import annotations

from typing import Any


def fmt(value: Any) -> str:
    """The one rule for numbers people read: about 4 significant digits, no float noise.

    Takes numbers, and the strings MLflow keeps params as ("3.7725799377838215e-06" -> 3.773e-06).
    """
    if isinstance(value, str):
        try:
            int(value)
            return value
        except ValueError:
            try:
                return fmt(float(value)) if value.strip().lower() not in ("nan", "inf") else value
            except ValueError:
                return value
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
