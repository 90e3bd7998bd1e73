"""PNG plots of a review, in one style: the front for each pair of objectives (every complete trial, the front's
members numbered and joined by its step line, each axis with its unit and which way is better), and the
hypervolume history."""

from __future__ import annotations

import itertools
from pathlib import Path

from .pareto import staircase
from .review import Review

FRONT_COLOR, OTHER_COLOR, INFEASIBLE_COLOR, BASELINE_COLOR = "#d62728", "#9e9e9e", "#ff9896", "#1f1f1f"
LABEL_OFFSETS = ((5, 5), (5, -11), (-20, 5), (-20, -11))  # points: where a front member's number goes, in turn
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
         "axes.spines.right": False}


def plot_review(review: Review, path: Path) -> list[Path]:
    """Write the front to `path` and, once a trial is feasible, the hypervolume history beside it
    (`<stem>_hypervolume.png`); returns the files written. Raises ValueError with no complete trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not review.complete:
        raise ValueError("the study has no complete trial to plot")
    written = [path]
    with plt.rc_context(STYLE):
        figure = _front_figure(review, plt)
        figure.savefig(path, dpi=130, bbox_inches="tight")
        plt.close(figure)
        if review.front:
            history = path.with_name(path.stem + "_hypervolume.png")
            figure = _hypervolume_figure(review, plt)
            figure.savefig(history, dpi=130, bbox_inches="tight")
            plt.close(figure)
            written.append(history)
    return written


def _front_figure(review: Review, plt):
    objectives = review.objectives
    pairs = list(itertools.combinations(range(len(objectives)), 2)) or [(0, 0)]
    columns = min(3, len(pairs))
    rows = -(-len(pairs) // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(5 * columns, 4.4 * rows), squeeze=False)
    complete = review.complete
    for axes, (i, j) in zip(grid.flat, pairs):
        others = [t for t in complete if not t.on_front]
        for group, color, name in (([t for t in others if t.feasible], OTHER_COLOR, "other trials"),
                                   ([t for t in others if not t.feasible], INFEASIBLE_COLOR, "breaks a constraint")):
            if group:
                axes.scatter([t.values[i] for t in group], [t.values[j] for t in group], s=16, c=color, alpha=0.6,
                             label=name, zorder=2)
                _error_bars(axes, group, objectives[i].name, objectives[j].name, i, j, color)
        front = review.front
        _error_bars(axes, front, objectives[i].name, objectives[j].name, i, j, FRONT_COLOR)
        feasible = [(t.values[i], t.values[j]) for t in complete if t.feasible]
        xs, ys = staircase(feasible, (objectives[i].minimise, objectives[j].minimise))
        axes.plot(xs, ys, color=FRONT_COLOR, lw=1, alpha=0.6, zorder=3, label="front in this pair")
        axes.scatter([t.values[i] for t in front], [t.values[j] for t in front], s=30, c=FRONT_COLOR,
                     edgecolors="white", linewidths=0.6, label="Pareto front", zorder=4)
        baselines = review.baselines
        if baselines:
            axes.scatter([t.values[i] for t in baselines], [t.values[j] for t in baselines], s=90, marker="*",
                         c=BASELINE_COLOR, label="baseline", zorder=5)
            for trial in baselines:
                axes.annotate(trial.baseline, (trial.values[i], trial.values[j]), fontsize=7, zorder=6, xytext=(5, -11),
                              textcoords="offset points", color=BASELINE_COLOR)
        for k, trial in enumerate(sorted(front, key=lambda t: t.values[i])):  # labels turn round the point,
            axes.annotate(f"#{trial.number}{' ≈' if trial.noise else ''}", (trial.values[i], trial.values[j]),
                          fontsize=7, zorder=5, xytext=LABEL_OFFSETS[k % len(LABEL_OFFSETS)],
                          textcoords="offset points")  # so that neighbours' labels part
        axes.set_xlabel(f"{objectives[i].label}, {objectives[i].better}")
        axes.set_ylabel(f"{objectives[j].label}, {objectives[j].better}")
    for axes in list(grid.flat)[len(pairs):]:
        axes.axis("off")
    grid.flat[0].legend(fontsize=7, loc="best")
    noisy = sum(bool(t.noise) for t in review.front)
    figure.suptitle(f"Pareto front of '{review.name}': {len(review.front)} of {len(complete)} complete trials"
                    + (f"; ≈ marks {noisy} whose lead is within the seed noise (bars: one sd)" if noisy else ""))
    figure.tight_layout()
    return figure


def _error_bars(axes, trials: list, x: str, y: str, i: int, j: int, color: str) -> None:
    """One sd either way on each axis whose objective was seed-confirmed (nothing where none was)."""
    xerr, yerr = [t.sd(x) for t in trials], [t.sd(y) for t in trials]
    if any(xerr) or any(yerr):
        axes.errorbar([t.values[i] for t in trials], [t.values[j] for t in trials], xerr=xerr, yerr=yerr, fmt="none",
                      ecolor=color, elinewidth=0.8, alpha=0.6, zorder=2)


def _hypervolume_figure(review: Review, plt):
    figure, axes = plt.subplots(figsize=(7, 3.6))
    numbers, volumes = zip(*review.hypervolume)
    axes.step(numbers, volumes, where="post", color=FRONT_COLOR, lw=1.5)
    axes.scatter(numbers, volumes, s=10, c=FRONT_COLOR, zorder=3)
    axes.set_xlabel("trial number")
    axes.set_ylabel("hypervolume, higher is better")
    reference = ", ".join(f"{o.name} {r:.3g}{' ' + o.unit if o.unit else ''}" for o, r in zip(review.objectives, review.reference))
    axes.set_title(f"Hypervolume of the feasible complete trials (reference point: {reference})", fontsize=9)
    figure.tight_layout()
    return figure
