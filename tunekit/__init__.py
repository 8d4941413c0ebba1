"""tunekit: hyperparameter studies of small vision models, from one YAML spec.

From Python: `tunekit.load` a spec (with overrides), `tunekit.run` its sweep, `tunekit.table`
reads the results table back as records (`tunekit.api`). Imported on first use, so that
`import tunekit.spec` stays light.
"""

from typing import Any

__all__ = ["Outcome", "load", "run", "table"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tunekit import api

        return getattr(api, name)
    raise AttributeError(f"module 'tunekit' has no attribute {name!r}")
