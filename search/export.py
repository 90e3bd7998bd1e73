"""Export a trial's model config (with its measurements as metadata), and write a run folder's tables."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from configaformer import save_config

from .front import front_frame
from .study import objective_names, trial_config, trials_frame


def export_trial(study: optuna.Study, trial: FrozenTrial, path: Path) -> Path:
    """Write the trial's full model config to YAML/JSON; `ConfigaFormer.from_config(path)` rebuilds it."""
    model, metrics = trial_config(trial)
    metadata = {
        "study": study.study_name,
        "trial": trial.number,
        "objectives": dict(zip(objective_names(study), trial.values or [])),
        "params": dict(trial.params),
        "metrics": metrics,
        "train": trial.user_attrs.get("train"),
    }
    save_config(model, path, metadata=metadata)
    return path


def write_tables(study: optuna.Study, out_dir: Path) -> list[Path]:
    """trials.csv (every trial) and front.csv (the Pareto front) in the run folder."""
    written = []
    for name, frame in (("trials.csv", trials_frame(study)), ("front.csv", front_frame(study))):
        if not frame.empty:
            path = out_dir / name
            tmp = path.with_suffix(".csv.tmp")
            frame.to_csv(tmp)
            tmp.replace(path)
            written.append(path)
    return written
