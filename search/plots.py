"""Plots of a study: the Pareto front and the hypervolume history (matplotlib PNG; plotly and the same as interactive HTML)."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import optuna

from .front import front_trials, reference_point


def plot_study(study: optuna.Study, path: Path) -> list[Path]:
    """Write the front to `path` (PNG: Optuna's plot for two objectives, one panel per pair from three up, which
    reads better than a 3-D scatter), the hypervolume history beside it once a trial is feasible, and then
    an interactive HTML front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise ValueError("the study has no complete trial to plot")
    names = study.metric_names
    written = [path]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if len(names) == 2:
            optuna.visualization.matplotlib.plot_pareto_front(study, target_names=names)
            figure = plt.gcf()
            figure.set_size_inches(7, 6)
        else:
            figure = _pairwise_front(study, plt)
        figure.savefig(path, dpi=120, bbox_inches="tight")
        plt.close("all")

        if front_trials(study):  # with no feasible trial the history is zero throughout
            history_path = path.with_name(path.stem + "_hypervolume.png")
            reference = reference_point(study)
            axes = optuna.visualization.matplotlib.plot_hypervolume_history(study, reference)
            axes.set_title(f"Hypervolume history (reference {', '.join(f'{r:.3g}' for r in reference)})")
            axes.figure.set_size_inches(7, 4)
            axes.figure.savefig(history_path, dpi=120, bbox_inches="tight")
            plt.close("all")
            written.append(history_path)
            written += _html(study, path, names)
    return written


def _pairwise_front(study: optuna.Study, plt):
    """One panel per pair of objectives: every complete trial in grey, the front in red."""
    names = study.metric_names
    pairs = list(itertools.combinations(range(len(names)), 2))
    columns = min(3, len(pairs))
    rows = -(-len(pairs) // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(4.5 * columns, 4 * rows), squeeze=False)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    front = front_trials(study)
    for axes, (i, j) in zip(grid.flat, pairs):
        axes.scatter([t.values[i] for t in complete], [t.values[j] for t in complete], c="lightgrey", s=14, label="trials")
        axes.scatter([t.values[i] for t in front], [t.values[j] for t in front], c="tab:red", s=22, label="Pareto front")
        axes.set(xlabel=names[i], ylabel=names[j])
    for axes in list(grid.flat)[len(pairs):]:
        axes.axis("off")
    grid.flat[0].legend()
    figure.suptitle(f"Pareto front of '{study.study_name}'")
    figure.tight_layout()
    return figure


def _html(study: optuna.Study, path: Path, names: list[str]) -> list[Path]:
    html = path.with_suffix(".html")
    if len(names) <= 3:
        optuna.visualization.plot_pareto_front(study, target_names=names).write_html(html)
    else:
        optuna.visualization.plot_parallel_coordinate(study).write_html(html)
    return [html]
