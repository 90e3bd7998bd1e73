"""One self-contained HTML page for reviewing a search: the interactive front (a panel per pair of objectives, hover
for a trial's params and metrics), the hypervolume history, Optuna's parameter importances per objective, every
trial in a sortable table with its failure reason, and the run's settings. plotly's JavaScript is inlined, so the
file opens offline, from disk, on a machine without this package."""

from __future__ import annotations

import html
import itertools
import json
import warnings
from pathlib import Path
from typing import Any

from .metrics import with_sd
from .pareto import staircase
from .review import Review, TrialRow

from .plots import BASELINE_COLOR, FRONT_COLOR, INFEASIBLE_COLOR, OTHER_COLOR
SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (th, column) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0], rows = Array.from(body.rows);
    var ascending = th.dataset.order !== 'asc'; th.dataset.order = ascending ? 'asc' : 'desc';
    rows.sort(function (a, b) {
      var x = a.cells[column].dataset.value, y = b.cells[column].dataset.value;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
      return ascending ? c : -c;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { padding: 2px 8px; text-align: right; }
th { cursor: pointer; background: #f3f3f3; position: sticky; top: 0; } tr:nth-child(even) { background: #fafafa; }
td.text { text-align: left; } tr.front td:first-child { font-weight: bold; color: #d62728; }
.note { color: #666; font-size: 0.9em; }
"""


def _hover(row: TrialRow, review: Review) -> str:
    values = "<br>".join(f"{o.label}: {with_sd(v, row.sd(o.name) or None)}" for o, v in zip(review.objectives, row.values or ()))
    params = "<br>".join(f"{k}: {v}" for k, v in row.params.items())
    extra = "<br>".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in row.metrics.items()
                        if k not in {o.name for o in review.objectives} and isinstance(v, (int, float)) and not isinstance(v, bool))
    noise = f"<br><i>{html.escape(row.noise)}</i>" if row.noise else ""
    title = f"baseline {html.escape(row.baseline)}" if row.baseline else f"trial #{row.number}"
    return f"<b>{title}</b>{' (front)' if row.on_front else ''}{noise}<br>{values}<br><br>{params}<br><br>{extra}"


def front_figure(review: Review) -> Any:
    """A panel per pair of objectives: other trials in grey, the front in red with trial numbers and its step
    line, error bars where seeds were confirmed (a `<metric>_sd` recorded)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    objectives = review.objectives
    pairs = list(itertools.combinations(range(len(objectives)), 2)) or [(0, 0)]
    columns = min(3, len(pairs))
    rows = -(-len(pairs) // columns)
    figure = make_subplots(rows=rows, cols=columns, horizontal_spacing=0.08, vertical_spacing=0.15)
    groups = (("other trials", OTHER_COLOR, lambda t: not t.on_front and t.feasible),
              ("breaks a constraint", INFEASIBLE_COLOR, lambda t: not t.on_front and not t.feasible),
              ("Pareto front", FRONT_COLOR, lambda t: t.on_front))
    for k, (i, j) in enumerate(pairs):
        row, col = k // columns + 1, k % columns + 1
        xs, ys = staircase([(t.values[i], t.values[j]) for t in review.complete if t.feasible],
                           (objectives[i].minimise, objectives[j].minimise))
        figure.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": FRONT_COLOR, "width": 1}, opacity=0.5,
                                    hoverinfo="skip", showlegend=False), row=row, col=col)
        for name, color, member in groups:
            chosen = [t for t in review.complete if member(t)]
            if not chosen:
                continue
            front = name == "Pareto front"
            figure.add_trace(go.Scatter(
                x=[t.values[i] for t in chosen], y=[t.values[j] for t in chosen], name=name, legendgroup=name,
                showlegend=k == 0, mode="markers+text" if front else "markers",
                text=[f"#{t.number}" + (" ≈" if t.noise else "") for t in chosen] if front else None,
                textposition="top right",
                marker={"color": color, "size": 9 if front else 7, "line": {"width": 0.5, "color": "white"}},
                error_x={"type": "data", "array": [t.sd(objectives[i].name) for t in chosen], "visible": True, "width": 2},
                error_y={"type": "data", "array": [t.sd(objectives[j].name) for t in chosen], "visible": True, "width": 2},
                hovertext=[_hover(t, review) for t in chosen], hoverinfo="text"), row=row, col=col)
        if review.baselines:
            chosen = review.baselines
            figure.add_trace(go.Scatter(
                x=[t.values[i] for t in chosen], y=[t.values[j] for t in chosen], name="baseline", legendgroup="baseline",
                showlegend=k == 0, mode="markers+text", text=[t.baseline for t in chosen], textposition="bottom right",
                marker={"color": BASELINE_COLOR, "size": 14, "symbol": "star"},
                hovertext=[_hover(t, review) for t in chosen], hoverinfo="text"), row=row, col=col)
        figure.update_xaxes(title_text=f"{objectives[i].label}, {objectives[i].better}", row=row, col=col)
        figure.update_yaxes(title_text=f"{objectives[j].label}, {objectives[j].better}", row=row, col=col)
    figure.update_layout(height=420 * rows, template="plotly_white", margin={"t": 30})
    return figure


def hypervolume_figure(review: Review) -> Any:
    import plotly.graph_objects as go

    numbers, volumes = zip(*review.hypervolume)
    reference = ", ".join(f"{o.name} {r:.3g}{' ' + o.unit if o.unit else ''}" for o, r in zip(review.objectives, review.reference))
    figure = go.Figure(go.Scatter(x=numbers, y=volumes, mode="lines+markers", line={"shape": "hv", "color": FRONT_COLOR}))
    figure.update_layout(template="plotly_white", height=320, margin={"t": 40},
                         title={"text": f"reference point: {reference}", "font": {"size": 12}},
                         xaxis_title="trial number", yaxis_title="hypervolume, higher is better")
    return figure


def _optuna_study(review: Review) -> Any:
    """The review's complete trials in an in-memory Optuna study, for Optuna's importance analysis."""
    import optuna

    study = optuna.create_study(directions=review.directions)
    for row in review.complete:
        trial = review.stored(row.number)
        study.add_trial(optuna.trial.create_trial(
            params=trial.params, values=list(trial.values),
            distributions={k: optuna.distributions.json_to_distribution(v) for k, v in trial.distributions.items()}))
    return study


def importance_figures(review: Review) -> list[tuple[str, Any]]:
    """Optuna's parameter importances (fANOVA) for each objective; an objective it cannot rank says why."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _optuna_study(review)
    figures = []
    for i, objective in enumerate(review.objectives):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                figure = optuna.visualization.plot_param_importances(
                    study, target=lambda t, i=i: t.values[i], target_name=objective.label)
            figure.update_layout(height=300, margin={"t": 40}, template="plotly_white",
                                 title={"text": f"What {objective.label} depends on (fANOVA)", "font": {"size": 13}})
            figures.append((objective.name, figure))
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            figures.append((objective.name, f"not enough complete trials to rank parameters ({err})"))
    return figures


def _cell(value: Any, sd: float = 0.0) -> str:
    if value is None:
        return '<td data-value=""></td>'
    if isinstance(value, float):
        return f'<td data-value="{value!r}">{with_sd(value, sd or None)}</td>'
    if isinstance(value, (int, bool)):
        return f'<td data-value="{int(value)}">{value}</td>'
    text = html.escape(str(value))
    return f'<td class="text" data-value="{text}">{text[:80]}</td>'


def trials_table(review: Review) -> str:
    """Every trial, sortable by any column: state, objectives (mean ± sd where seeds were confirmed), why it failed
    or was free or whether its lead is within noise, its params."""
    params = sorted({k for t in review.trials for k in t.params})
    header = ["#", "state", *(o.label for o in review.objectives), "note", "message", *params]
    lines = ['<table class="sortable" id="trials"><thead><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in header)
             + "</tr></thead><tbody>"]
    for t in review.trials:
        values = t.values or tuple(t.metrics.get(o.name) for o in review.objectives)
        cells = [_cell(t.number), _cell(t.state), *(_cell(v, t.sd(o.name)) for o, v in zip(review.objectives, values)),
                 _cell(t.reason or t.noise),
                 _cell(t.metrics.get("message")), *(_cell(t.params.get(p)) for p in params)]
        lines.append(f'<tr class="{"front" if t.on_front else ""}" data-trial="{t.number}">{"".join(cells)}</tr>')
    return "\n".join(lines) + "</tbody></table>"


def rungs_table(review: Review) -> str:
    """Configs measured, stopped and gone on at each rung, and the training tokens spent to reach it."""
    rows = "".join(f'<tr>{_cell(r.rung)}{_cell(r.tokens)}{_cell(r.reached)}{_cell(r.stopped)}{_cell(r.reached - r.stopped)}'
                   f'{_cell(r.spent)}</tr>' for r in review.rungs)
    return ('<table id="rungs"><thead><tr><th>rung</th><th>tokens</th><th>measured</th><th>stopped there</th>'
            f"<th>went on or completed</th><th>tokens spent there</th></tr></thead><tbody>{rows}</tbody></table>")


def retrain_table(review: Review) -> str:
    """Each retrained config: the search's value and what each longer budget measured (mean ± sd over seeds)."""
    columns = review.retrain_columns()
    names = sorted({c for cols in columns.values() for c in cols if not c.endswith("_sd")})
    header = "".join(f"<th>{html.escape(h)}</th>" for h in ("#", review.names[0], *names))
    rows = []
    for t in review.trials:
        if t.number in columns:
            cells = [_cell(t.number), _cell(t.values[0] if t.values else None)]
            cells += [_cell(columns[t.number].get(n), columns[t.number].get(n + "_sd", 0.0)) for n in names]
            rows.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table class="sortable" id="retrained"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def write_report(review: Review, path: Path) -> Path:
    """Write the report; the file works offline (plotly.js inlined once, no network script)."""
    from plotly.offline import get_plotlyjs

    sections = [f"<h1>Search '{html.escape(review.name)}'</h1>", _summary(review), _baselines(review)]
    if review.complete:
        sections += ["<h2>Pareto front</h2>", '<p class="note">Hover a point for its params and every metric; the '
                     "front's members are numbered and joined by its step line in each pair of objectives. Where seeds were "
                     "confirmed, bars span one sd either way, and a member marked ≈ leads a trial it dominates by less "
                     "than the seed noise.</p>",
                     _div(front_figure(review), "front")]
        if review.front:
            sections += ["<h2>Hypervolume history</h2>", _div(hypervolume_figure(review), "hypervolume")]
        sections.append("<h2>Parameter importances</h2>")
        for name, figure in importance_figures(review):
            sections.append(_div(figure, f"importance-{name}") if not isinstance(figure, str)
                            else f'<p class="note">{html.escape(name)}: {html.escape(figure)}</p>')
    else:
        sections.append('<p class="note">No trial has completed yet: nothing to plot.</p>')
    if review.rungs:
        front_rule = ("Every measured config is on the front by its loss at the target: measured where it climbed "
                      "that far, predicted otherwise (± one sd)." if "predictor" in review.study.user_attrs else
                      "Only configs that trained the full budget are on the front.")
        ladder = "".join(f"<li>{html.escape(line)}</li>" for line in review.ladder_lines())
        sections += ["<h2>Rungs</h2>", '<p class="note">Successive halving: at each rung a config goes on when it ranks in '
                     f"the best share of the results recorded there (non-dominated sorting, then an epsilon-net). {front_rule}"
                     f"</p><ul>{ladder}</ul>", rungs_table(review)]
    if review.retrained:
        sections += ["<h2>Retrained</h2>", '<p class="note">What <code>configaformer-search retrain</code> measured: each '
                     "config trained again from scratch at a longer budget, beside the search's own value.</p>",
                     "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in review.retrain_lines()) + "</ul>",
                     retrain_table(review)]
    sections += ["<h2>Trials</h2>", '<p class="note">Click a header to sort.</p>', trials_table(review),
                 "<h2>Settings</h2>", _settings_table(review)]
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(review.name)}</title>"
            f"<style>{STYLE}</style><script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
            + "\n".join(sections) + f"<script>{SORT_SCRIPT}</script></body></html>")
    path.write_text(page, encoding="utf-8")
    return path


def _div(figure: Any, name: str) -> str:
    return f'<div class="plot" id="plot-{html.escape(name)}">' + figure.to_html(full_html=False, include_plotlyjs=False) + "</div>"


def _baselines(review: Review) -> str:
    """What the front holds against each baseline."""
    if not review.baselines:
        return ""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in review.baseline_lines())
    return f"<h2>Baselines</h2><ul id='baselines'>{items}</ul>"


def _summary(review: Review) -> str:
    measured = review.measured
    failed = [t for t in measured if t.state == "FAIL"]
    stopped = [t for t in measured if t.state == "PRUNED"]
    free = len(review.trials) - len(measured)
    return (f"<p>{len(measured)} configs measured ({len(measured) - len(failed) - len(stopped)} complete, "
            + (f"{len(stopped)} stopped at a rung, " if stopped else "") + f"{len(failed)} failed), "
            f"{len(review.front)} on the front; {free} trials cost no budget (repeats, refusals before training, "
            f"interruptions). Objectives: " + ", ".join(f"{html.escape(o.label)} ({o.better})" for o in review.objectives)
            + ".</p>")


def _settings_table(review: Review) -> str:
    rows = []
    for key, value in review.settings.items():
        text = html.escape(json.dumps(value) if not isinstance(value, str) else value)
        if "\n" in text:
            text = f"<pre>{text}</pre>"
        rows.append(f'<tr><td class="text">{html.escape(key)}</td><td class="text">{text}</td></tr>')
    return "<table>" + "".join(rows) + "</table>"
