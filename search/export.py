"""Export a trial's model config (with its measurements as metadata), and write a run folder's tables."""

from __future__ import annotations

import json
from pathlib import Path

from configaformer import save_config

from .review import STRUCTURED_ATTRS, Review
from .storage import StoredTrial
from .tables import front_frame, trials_frame


def model_config(trial: StoredTrial) -> tuple[dict, dict]:
    """The model config and the scalar metrics recorded for a trial."""
    model = trial.user_attrs.get("model_config")
    if model is None:
        raise ValueError(f"trial {trial.number} recorded no model config (state {trial.state})")
    metrics = {k: v for k, v in trial.user_attrs.items() if k not in STRUCTURED_ATTRS}
    return model, json.loads(json.dumps(metrics))


def export_trial(review: Review, trial: StoredTrial, path: Path) -> Path:
    """Write the trial's full model config to YAML/JSON; `ConfigaFormer.from_config(path)` rebuilds it."""
    model, metrics = model_config(trial)
    metadata = {
        "study": review.name,
        "trial": trial.number,
        "objectives": dict(zip(review.names, trial.values or [])),
        "params": dict(trial.params),
        "metrics": metrics,
        "train": trial.user_attrs.get("train"),
    }
    save_config(model, path, metadata=metadata)
    return path


def write_tables(review: Review, out_dir: Path) -> list[Path]:
    """trials.csv (every trial) and front.csv (the Pareto front) in the run folder, each written whole or not at all."""
    written = []
    for name, frame in (("trials.csv", trials_frame(review)), ("front.csv", front_frame(review))):
        if not frame.empty:
            path = out_dir / name
            tmp = path.with_suffix(".csv.tmp")
            frame.to_csv(tmp)
            tmp.replace(path)
            written.append(path)
    return written
