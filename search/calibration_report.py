"""What `configaformer-search calibrate` tells of a calibration (calibrate.py): a summary per objective with its
verdict in plain sentences, and the tables and plot it writes beside its runs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .calibrate import Agreement, Calibration
from .metrics import METRICS, label
from .progress import plural

OUTPUTS = ("calibration.csv", "calibration_summary.csv", "calibration.png")
GOOD_AGREEMENT = 0.8  # the rank correlation a calibrated budget should reach


def verdict(calibration: Calibration, agreement: Agreement) -> list[str]:
    """The findings for one objective in plain sentences, and what to change when the budget is not enough."""
    budget = calibration.configs[0].tokens
    unit = METRICS[agreement.objective].unit.split("/")[0] if agreement.objective in METRICS else ""
    confirmed = calibration.space.search["confirm_seeds"] > 0
    rho = agreement.rho_budgets_mean if confirmed else agreement.rho_budgets  # what the space's search will measure
    lines = [f"at {budget:,} tokens, {agreement.objective} differences under {agreement.noise():.3g} {unit} are noise "
             f"(under {agreement.noise(2):.3g} with search.confirm_seeds: 1); the ranking "
             f"({'two seeds' if confirmed else 'one seed, as the search measures'}) agrees with {calibration.mult}x the "
             f"budget at rho {rho:.2f}"]
    if not round(rho, 2) >= GOOD_AGREEMENT:  # as printed: a verdict never contradicts its figure
        lines.append(f"the budget is short: the configs it ranks best are not those {calibration.mult}x training ranks "
                     "best; raise train.tokens (or search with scheduler asha, whose last rung can be longer)")
    if not math.isnan(agreement.rho_first_rung) and not round(agreement.rho_first_rung, 2) >= GOOD_AGREEMENT:
        lines.append(f"successive halving's first rung ranks configs unlike the full budget (rho "
                     f"{agreement.rho_first_rung:.2f}): it stops configs the full budget would keep; raise search.min_tokens")
    if not round(agreement.rho_seeds, 2) >= GOOD_AGREEMENT:
        lines.append(f"seeds reorder the configs (rho {agreement.rho_seeds:.2f} between two): set search.confirm_seeds "
                     "so that the front is told means")
    if round(agreement.rho_proxy, 2) >= round(rho, 2):
        lines.append(f"non-embedding parameters rank the configs as well as this training does (rho {agreement.rho_proxy:.2f})")
    if round(agreement.rho_predictor, 2) > round(rho, 2):
        lines.append(f"the predictor of the loss at the target, from the brief curves alone, ranks them better (rho "
                     f"{agreement.rho_predictor:.2f}): a search's val_loss_at_target is the better guide")
    return lines


def describe(calibration: Calibration) -> list[str]:
    """The summary the command prints: per objective, noise against spread, the rank agreements, the verdict."""
    first, second, _ = calibration.seeds
    budget = calibration.configs[0].tokens
    longer = f"{budget * calibration.mult:,}"
    lines = []
    for a in calibration.agreements():
        if a.configs < 3:
            lines.append(f"{a.objective}: only {a.configs} configs were measured on both seeds and at {calibration.mult}x: "
                         "too few to rank")
            continue
        rows = [(f"seed {first} vs seed {second}", f"Spearman {a.rho_seeds:.2f}, Kendall {a.tau_seeds:.2f}"),
                (f"{budget:,} (one seed) vs {longer} tokens", f"Spearman {a.rho_budgets:.2f}, Kendall {a.tau_budgets:.2f}"),
                (f"{budget:,} (two seeds' mean) vs {longer}", f"Spearman {a.rho_budgets_mean:.2f}, Kendall {a.tau_budgets_mean:.2f}")]
        if not math.isnan(a.rho_first_rung):
            rows.append((f"first rung ({calibration.rungs[0]:,}) vs {budget:,}",
                         f"Spearman {a.rho_first_rung:.2f}, Kendall {a.tau_first_rung:.2f}"))
        rows.append((f"non-embedding params vs {calibration.mult}x", f"Spearman {a.rho_proxy:.2f}"))
        if not math.isnan(a.rho_predictor):
            rows.append((f"the predictor (brief curves) vs {calibration.mult}x", f"Spearman {a.rho_predictor:.2f}"))
        width = max(len(name) for name, _ in rows) + 2
        lines += [f"{label(a.objective)}, {plural(a.configs, 'config')}:",
                  f"  seed-to-seed sd {a.seed_sd:.3g}, spread across configs {a.spread:.3g} (sd of their two-seed means)",
                  *(f"  {(name + ':').ljust(width)}{figures}" for name, figures in rows)]
        lines += ["verdict: " + line for line in verdict(calibration, a)]
    return lines


def write_outputs(calibration: Calibration) -> list[Path]:
    """The per-config table, the per-objective summary and the plot, in the calibration's folder."""
    out, table, agreements = calibration.out, calibration.table(), calibration.agreements()
    table.to_csv(out / OUTPUTS[0])
    pd.DataFrame([{**vars(a), "noise_band": a.noise()} for a in agreements]).to_csv(out / OUTPUTS[1], index=False)
    _plot(calibration, table, agreements, out / OUTPUTS[2])
    return [out / name for name in OUTPUTS]


def _plot(calibration: Calibration, table: pd.DataFrame, agreements: list[Agreement], path: Path) -> None:
    """Per objective: seed against seed at the budget, and the two-seed mean (with its range) against the longer
    budget, each config numbered."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import STYLE

    first, second, _ = calibration.seeds
    with plt.rc_context(STYLE):
        figure, grid = plt.subplots(len(agreements), 2, figsize=(10, 4.4 * len(agreements)), squeeze=False)
        for (left, right), a in zip(grid, agreements):
            m, columns = a.objective, list(calibration.columns(a.objective))
            a_, b_, long = (table[c] for c in columns)
            left.scatter(a_, b_, s=18, c="#1f77b4")
            span = [np.nanmin([a_.min(), b_.min()]), np.nanmax([a_.max(), b_.max()])]
            left.plot(span, span, color="#9e9e9e", lw=1, ls="--")
            left.set(xlabel=f"{label(m)}, seed {first}", ylabel=f"seed {second}",
                     title=f"seed against seed: Spearman {a.rho_seeds:.2f}, sd {a.seed_sd:.3g}")
            means = (a_ + b_) / 2
            right.errorbar(means, long, xerr=(a_ - b_).abs() / 2, fmt="o", ms=4, color="#d62728", ecolor="#ff9896")
            right.set(xlabel=f"{label(m)}, mean of two seeds at {calibration.configs[0].tokens:,} tokens",
                      ylabel=f"at {calibration.mult}x", title=f"budget against {calibration.mult}x: Spearman {a.rho_budgets_mean:.2f} "
                                                            f"(one seed {a.rho_budgets:.2f})")
            for index in table.dropna(subset=columns).index:
                left.annotate(str(index), (a_[index], b_[index]), fontsize=7, xytext=(3, 3), textcoords="offset points")
                right.annotate(str(index), (means[index], long[index]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        figure.suptitle(f"Calibration of '{calibration.space.name}': {len(calibration.configs)} configs")
        figure.tight_layout()
        figure.savefig(path, dpi=130, bbox_inches="tight")
        plt.close(figure)
