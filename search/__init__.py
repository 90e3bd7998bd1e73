"""configaformer-search: architecture search over configaformer configs (Ray Tune trials, Optuna study).

`configaformer_search.search(space, ...)` runs a whole search (see run.py); imported on first use, so that the
command line's review commands start without Ray or torch."""

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("search", "SearchResult"):
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module 'configaformer_search' has no attribute {name!r}")
