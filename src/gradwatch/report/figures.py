"""The report's charts as plotly.js figures (plain dicts: ``{"data": [...], "layout": {...}}``).

Figures are built as data, not through ``plotly.graph_objects``: its validation costs more than the whole report
for a 64-run sweep. Arrays travel as plotly.js typed arrays (float32, base64), a third of their JSON text, and
long series are thinned to what a chart a few hundred pixels wide can show.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from gradwatch.report.format import (
    axis_positions,
    base_layout,
    finite_or_none,
    format_value,
    label_key,
    layer_colours,
    note,
    short,
    thin,
    typed,
    viridis,
)
from gradwatch.report.runs import Run, Sweep
from gradwatch.rundir import (
    ACT_DEAD,
    ACT_SATURATED,
    GRAD_NORM,
    MONITOR_NAMESPACES,
    UPDATE_RATIO,
    VERDICTS,
    natural_key,
    verdict_key,
)

#: Most step columns of a run's gradient-flow heatmap, and of each small multiple in a sweep's grid.
HEATMAP_COLUMNS = 200
GRID_COLUMNS = 60
#: Colours of verdicts, where they are marked.
VERDICT_COLOURS = dict(zip(VERDICTS, ("#3b6fb6", "#d9534f", "#8e44ad", "#b8860b"), strict=True))
#: How many values a parameter may take and still be a row or column of the sweep's grid.
MAX_FACET_VALUES = 8

Figure = dict[str, Any]


def flow_matrix(run: Run, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """A run's gradient flow: log10 ‖grad‖ per layer (rows, input first) over binned steps (columns).

    Rows logged at the same step are one column: a GAN's networks are measured by two optimizers, in two rows.

    Returns:
        The bins' mean steps and the ``(layers, bins)`` matrix (NaN where a layer was not measured).
    """
    keys = [f"{GRAD_NORM}{layer}" for layer in run.layers]
    if not keys:
        return np.empty(0), np.empty((0, 0))
    table = np.stack([run.metrics.columns[key] for key in keys])
    rows = ~np.isnan(table).all(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(table[:, rows])
    logs[~np.isfinite(logs)] = np.nan
    steps, column = np.unique(run.metrics.step[rows], return_inverse=True)
    logs = _mean_by(logs, column, len(steps))
    if len(steps) <= columns:
        return steps, logs
    bins = np.minimum(np.arange(len(steps)) * columns // len(steps), columns - 1)
    return np.bincount(bins, weights=steps) / np.bincount(bins), _mean_by(logs, bins, columns)


def _mean_by(matrix: np.ndarray, group: np.ndarray, groups: int) -> np.ndarray:
    """Mean of ``matrix``'s columns in each ``group`` (column ``j`` belongs to ``group[j]``), NaN ignored."""
    finite = np.isfinite(matrix)
    values = np.where(finite, matrix, 0.0)
    sums = np.stack([np.bincount(group, weights=row, minlength=groups) for row in values])
    seen = np.stack([np.bincount(group, weights=row, minlength=groups) for row in finite.astype(float)])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(seen > 0, sums / seen, np.nan)


def verdict_spans(run: Run, limit: int = 40) -> dict[str, list[tuple[float, float]]]:
    """Per verdict, the step ranges over which a run's health named it."""
    spans: dict[str, list[tuple[float, float]]] = {}
    for verdict in VERDICTS:
        steps, counts = run.metrics.series(verdict_key(verdict))
        found, start = [], None
        for step, flag in zip(steps, counts > 0, strict=True):
            if flag and start is None:
                start = step
            elif not flag and start is not None:
                found.append((float(start), float(step)))
                start = None
        if start is not None:
            found.append((float(start), float(steps[-1])))
        if len(found) > limit:  # flickering verdicts: one span from the first onset to the last end
            found = [(found[0][0], found[-1][1])]
        if found:
            spans[verdict] = found
    return spans


def flow_heatmap(run: Run) -> Figure | None:
    """Layer × step heatmap of log10 ‖grad‖, input layer on top, verdict spans marked above it."""
    steps, matrix = flow_matrix(run, HEATMAP_COLUMNS)
    if not len(steps):
        return None
    trace = {
        "type": "heatmap",
        "x": typed(steps),
        "y": run.layers,
        "z": typed(matrix),
        "colorscale": "Viridis",
        "colorbar": {"title": {"text": "log10 ‖grad‖", "side": "right"}, "thickness": 12},
        "hovertemplate": "step %{x:.0f}<br>%{y}<br>log10 ‖grad‖ %{z:.2f}<extra></extra>",
    }
    shapes, annotations = [], []
    for verdict, spans in verdict_spans(run).items():
        for x0, x1 in spans:
            shapes.append(_span(x0, x1, VERDICT_COLOURS[verdict]))
        annotations.append(
            {
                "x": spans[0][0],
                "y": 1.07,
                "xref": "x",
                "yref": "paper",
                "text": verdict,
                "showarrow": False,
                "xanchor": "left",
                "yanchor": "bottom",
                "font": {"size": 10, "color": VERDICT_COLOURS[verdict]},
            }
        )
    height = max(260, min(900, 40 + 14 * len(run.layers)))
    layout = base_layout(
        "Gradient flow: log10 ‖grad‖ per layer",
        height=height,
        yaxis={
            "autorange": "reversed",
            "automargin": True,
            "tickfont": {"size": 9},
            "title": {"text": "input ↓ output"},
        },
        xaxis={"title": {"text": "step"}},
        shapes=shapes,
        annotations=annotations,
        margin={"l": 60, "r": 20, "t": 56, "b": 40},
    )
    return {"data": [trace], "layout": layout}


def _span(x0: float, x1: float, colour: str) -> dict[str, Any]:
    return {
        "type": "rect",
        "xref": "x",
        "yref": "paper",
        "x0": x0,
        "x1": max(x1, x0 + 0.5),
        "y0": 1.01,
        "y1": 1.06,
        "fillcolor": colour,
        "line": {"width": 0},
        "opacity": 0.85,
    }


def layer_lines(run: Run, prefix: str, title: str, *, log: bool = True, ytitle: str = "") -> Figure | None:
    """One line per layer of ``<prefix><layer>``, coloured input → output.

    On a log axis an exact zero (a layer whose weights did not move at all, its update lost to rounding) would be a
    gap in its line; zeros are drawn instead on a dotted floor a decade under the smallest other value, labelled 0.
    """
    layers = [layer for layer in run.layers if f"{prefix}{layer}" in run.metrics.columns] or run.metrics.keys(prefix)
    series = [(layer, *run.metrics.series(f"{prefix}{layer}")) for layer in layers]
    series = [(layer, steps, values) for layer, steps, values in series if len(values)]
    floor = _zero_floor([values for _, _, values in series]) if log else None
    traces = []
    for (layer, steps, values), colour in zip(series, layer_colours(len(series)), strict=True):
        zeros = floor is not None and bool((values == 0).any())
        if zeros:
            values = np.where(values == 0, floor, values)
        steps, values = thin(steps, values)
        trace = {
            "type": "scattergl" if len(values) > 1000 else "scatter",
            "mode": "lines",
            "name": layer,
            "x": typed(steps),
            "y": typed(values),
            "line": {"width": 1.2, "color": colour},
            # A zero hovers as 0, not as the floor it is drawn on.
            "hovertemplate": f"{layer}<br>step %{{x:.0f}}<br>{'%{customdata}' if zeros else '%{y:.3g}'}<extra></extra>",
        }
        if zeros:
            trace["customdata"] = ["0" if v == floor else f"{v:.3g}" for v in values]
        traces.append(trace)
    if not traces:
        return None
    yaxis: dict[str, Any] = {"title": {"text": ytitle}, "exponentformat": "power"}
    extra: dict[str, Any] = {}
    if log:
        yaxis["type"] = "log"
    if floor is not None:
        # The floor is ticked "0" and the decades above it every few: the axis reads 0, 10^-12, 10^-10, ...
        highest = max(float(v[np.isfinite(v)].max(initial=floor)) for _, _, v in series)  # an inf draws no tick
        low, high = round(math.log10(floor)), math.ceil(math.log10(highest))
        step = max(1, math.ceil((high - low) / 6))
        decades = range(low + step, high + 1, step)
        yaxis["tickvals"] = [floor, *(10.0**k for k in decades)]
        yaxis["ticktext"] = ["0", *(f"10<sup>{k}</sup>" for k in decades)]
        line = {"color": "#999", "width": 1, "dash": "dot"}
        extra["shapes"] = [{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": floor, "y1": floor, "line": line}]
    return {"data": traces, "layout": base_layout(title, yaxis=yaxis, xaxis={"title": {"text": "step"}}, **extra)}


def _zero_floor(series: Sequence[np.ndarray]) -> float | None:
    """Where a log chart draws its zeros: a decade under its smallest positive value (None when nothing is 0)."""
    if not any((values == 0).any() for values in series):
        return None
    positive = [values[(values > 0) & np.isfinite(values)] for values in series]
    lowest = min((float(values.min()) for values in positive if len(values)), default=1.0)
    return float(10 ** (math.floor(math.log10(lowest)) - 1))


def activation_fractions(run: Run) -> Figure | None:
    """Dead (ReLU family) and saturated (sigmoid / tanh) fractions per layer: solid dead, dotted saturated."""
    traces = []
    for prefix, dash in ((ACT_DEAD, "solid"), (ACT_SATURATED, "dot")):
        layers = sorted(run.metrics.keys(prefix), key=lambda name: _depth_of(name, run.layers))
        for layer, colour in zip(layers, layer_colours(len(layers)), strict=True):
            steps, values = thin(*run.metrics.series(prefix + layer))
            kind = prefix.split("/")[1]
            traces.append(
                {
                    "type": "scatter",
                    "mode": "lines",
                    "name": f"{kind} {layer}",
                    "x": typed(steps),
                    "y": typed(values),
                    "line": {"width": 1.2, "color": colour, "dash": dash},
                    "hovertemplate": f"{kind} {layer}<br>step %{{x:.0f}}<br>%{{y:.1%}}<extra></extra>",
                }
            )
    if not traces:
        return None
    layout = base_layout(
        "Activations: dead (solid) and saturated (dotted) fractions",
        yaxis={"range": [0, 1], "tickformat": ".0%"},
        xaxis={"title": {"text": "step"}},
    )
    return {"data": traces, "layout": layout}


def _depth_of(module: str, layers: Sequence[str]) -> tuple[int, list[Any]]:
    """Where ``module`` (an activation such as ``blocks.3.act``) sits among the measured ``layers``, input first.

    Activations own no parameters, so they are not measured layers: each takes the place of the first layer in
    its parent block (``blocks.3.conv``); ties and strangers fall back to natural order.
    """
    parent = module.rsplit(".", 1)[0]
    place = next(
        (i for i, layer in enumerate(layers) if layer == parent or layer.startswith(parent + ".")), len(layers)
    )
    return place, natural_key(module)


def _is_training_key(key: str) -> bool:
    """Whether the model logged ``key`` (not one of the monitors' namespaces)."""
    return not key.startswith(tuple(n for spaces in MONITOR_NAMESPACES.values() for n in spaces))


def curves(run: Run, *, losses: bool) -> Figure | None:
    """The run's own metrics over steps: its losses, or everything else it logged (accuracy, GAN scores...)."""
    keys = sorted(k for k in run.metrics.columns if _is_training_key(k) and ("loss" in k) == losses)
    traces = []
    for key in keys:
        steps, values = thin(*run.metrics.series(key))
        if len(values):
            traces.append(
                {
                    "type": "scatter",
                    "mode": "lines+markers" if len(values) < 30 else "lines",
                    "name": key,
                    "x": typed(steps),
                    "y": typed(values),
                    "line": {"width": 1.5},
                    "marker": {"size": 4},
                }
            )
    if not traces:
        return None
    title = "Loss" if losses else "Metrics"
    return {"data": traces, "layout": base_layout(title, xaxis={"title": {"text": "step"}})}


def run_figures(run: Run) -> dict[str, Figure]:
    """Every chart of a run that has something to draw, by name."""
    figures = {
        "flow": flow_heatmap(run),
        "grad-norm": layer_lines(run, GRAD_NORM, "Gradient norm per layer", ytitle="‖grad‖"),
        "update-ratio": layer_lines(run, UPDATE_RATIO, "Update / parameter ratio per layer", ytitle="‖Δw‖ / ‖w‖"),
        "activations": activation_fractions(run),
        "loss": curves(run, losses=True),
        "metrics": curves(run, losses=False),
    }
    return {name: figure for name, figure in figures.items() if figure is not None}


def parallel_coordinates(sweep: Sweep) -> Figure | None:
    """Swept parameters → the sweep's metric and the attenuation: one line per run, coloured by attenuation.

    Drawn with lines on axes of their own rather than plotly's ``parcoords``, which needs WebGL and the full
    plotly.js bundle (see ``assets/README.md``); hovering a line names its run and values.
    """
    rows = []
    for run in sweep.runs:
        value, attenuation = finite_or_none(sweep.value(run)), run.health().get("attenuation")
        if attenuation is not None and (sweep.metric is None or value is not None):  # an inf has no place on an axis
            rows.append((run, value, attenuation))
    if len(rows) < 2 or not sweep.axes:
        return None
    columns = [(short(name), [run.params.get(name) for run, _, _ in rows]) for name in sweep.axes]
    if sweep.metric is not None:
        columns.append((sweep.metric, [value for _, value, _ in rows]))
    columns.append(("attenuation", [attenuation for _, _, attenuation in rows]))
    axes = [axis_positions(values) for _, values in columns]
    annotations = [
        {**note(text, x, y, size=9, xanchor="left", xshift=4), "xref": "x", "yref": "y"}
        for x, (_, ticks) in enumerate(axes)
        for y, text in ticks
    ]
    attenuation = np.array([a for _, _, a in rows])
    low, high = float(attenuation.min()), float(attenuation.max())
    shades = viridis((attenuation - low) / (high - low) if high > low else np.full(len(rows), 0.5))
    traces = [
        _run_line(run, i, columns, axes, colour)
        for i, ((run, _, _), colour) in enumerate(zip(rows, shades, strict=True))
    ]
    layout = base_layout(
        f"Parameters → {sweep.metric or 'attenuation'}: one line per run, coloured by attenuation "
        "(decades of gradient lost from the output layer to the input layer)",
        height=380,
        xaxis={
            "tickvals": list(range(len(columns))),
            "ticktext": [label for label, _ in columns],
            "side": "top",
            "showgrid": True,
            "gridcolor": "#999",
            "zeroline": False,
            "range": [-0.2, len(columns) - 0.6],
        },
        yaxis={"visible": False, "range": [-0.06, 1.06]},
        annotations=annotations,
        margin={"l": 20, "r": 20, "t": 70, "b": 20},
    )
    return {"data": [*traces, _colour_bar(low, high, "attenuation")], "layout": layout}


def _run_line(run: Run, i: int, columns: list[tuple[str, list[Any]]], axes: list[Any], colour: str) -> Figure:
    """Run ``i``'s line across the parallel axes, hovering its values."""
    shown = [f"{label} {format_value(values[i])}" for label, values in columns]
    return {
        "type": "scatter",
        "mode": "lines+markers",
        "x": list(range(len(columns))),
        "y": [positions[i] for positions, _ in axes],
        "line": {"color": colour, "width": 1.6},
        "marker": {"size": 5, "color": colour},
        "name": run.id,
        "showlegend": False,
        "hovertemplate": f"run {run.id}<br>" + "<br>".join(shown) + "<extra></extra>",
    }


def _colour_bar(low: float, high: float, title: str) -> Figure:
    """An invisible point that carries a Viridis colour bar from ``low`` to ``high``."""
    return {
        "type": "scatter",
        "mode": "markers",
        "x": [None],
        "y": [None],
        "showlegend": False,
        "hoverinfo": "skip",
        "marker": {
            "color": [low],
            "cmin": low,
            "cmax": high,
            "colorscale": "Viridis",
            "showscale": True,
            "colorbar": {"title": {"text": title}, "thickness": 12},
        },
    }


def facets(sweep: Sweep) -> tuple[list[str], list[str]]:
    """The parameters that lay out the sweep's grid: the first half as rows, the rest as columns.

    Sweep files list the problem before the remedies (depth and activation, then norm and residual), so rows vary
    the problem and columns the remedy. Parameters with more than :data:`MAX_FACET_VALUES` values (a learning rate
    drawn at random) lay out nothing.
    """
    usable = [
        name for name in sweep.axes if 1 < len({str(run.params.get(name)) for run in sweep.runs}) <= MAX_FACET_VALUES
    ]
    half = len(usable) // 2
    return usable[:half], usable[half:]


def _facet_label(run: Run, names: Sequence[str]) -> str:
    return ", ".join(f"{short(n)}={format_value(run.params.get(n))}" for n in names)


def heatmap_grid(sweep: Sweep) -> Figure | None:
    """Small multiples of the runs' gradient-flow heatmaps, laid out by the swept parameters.

    Each cell is one run (the best by the metric when several share a cell), layers top to bottom, steps left to
    right, on one colour scale: cells that fade to dark at the top are networks whose first layers stopped learning.
    """
    cells = grid_cells(sweep)
    if not cells:
        return None
    row_labels = sorted({r for r, _ in cells}, key=label_key)
    col_labels = sorted({c for _, c in cells}, key=label_key)
    matrices = {key: flow_matrix(run, GRID_COLUMNS) for key, run in cells.items()}
    finite = np.concatenate([m[np.isfinite(m)] for _, m in matrices.values()] or [np.zeros(1)])
    low, high = (float(np.percentile(finite, 2)), float(np.percentile(finite, 98))) if finite.size else (0.0, 1.0)
    layout = base_layout(
        "Gradient flow across the sweep: log10 ‖grad‖, layers top (input) to bottom, steps left to right",
        height=int(90 + 95 * len(row_labels)),
        margin={"l": 150, "r": 20, "t": 90, "b": 20},
        coloraxis={
            "colorscale": "Viridis",
            "cmin": low,
            "cmax": high,
            "colorbar": {"title": {"text": "log10 ‖grad‖"}, "thickness": 12},
        },
        annotations=[
            *(note(label.replace(", ", "<br>"), (c + 0.5) / len(col_labels), 1.0, xanchor="center",
                   yanchor="bottom") for c, label in enumerate(col_labels)),
            *(note(label.replace(", ", "<br>"), -0.01, 1 - (r + 0.5) / len(row_labels), xanchor="right",
                   yanchor="middle") for r, label in enumerate(row_labels)),
        ],
    )  # fmt: skip
    traces = []
    for k, ((row, col), run) in enumerate(cells.items(), start=1):
        place = (row_labels.index(row), col_labels.index(col), len(row_labels), len(col_labels))
        traces.append(_grid_cell(run, matrices[(row, col)], "" if k == 1 else str(k), place, layout))
    return {"data": traces, "layout": layout}


def grid_cells(sweep: Sweep) -> dict[tuple[str, str], Run]:
    """The grid's cells: (row label, column label) → the best run with those settings, best cells first."""
    rows_by, cols_by = facets(sweep)
    drawn = [run for run in sweep.ranked() if run.layers]
    if not (rows_by or cols_by):  # nothing to lay out by: rank order, eight to a row
        return {(str(i // 8), str(i % 8)): run for i, run in enumerate(drawn)}
    cells: dict[tuple[str, str], Run] = {}
    for run in drawn:  # best first: the first run to claim a cell keeps it
        cells.setdefault((_facet_label(run, rows_by), _facet_label(run, cols_by)), run)
    return cells


def _grid_cell(
    run: Run, flow: tuple[np.ndarray, np.ndarray], axis: str, place: tuple[int, int, int, int], layout: Figure
) -> Figure:
    """One run's small heatmap: its trace; its axes and verdict badge go into ``layout``."""
    steps, matrix = flow
    r, c, nrows, ncols = place
    gap_x, gap_y = 0.012, 0.025
    x0, x1 = c / ncols + gap_x, (c + 1) / ncols - gap_x
    y1, y0 = 1 - r / nrows - gap_y, 1 - (r + 1) / nrows + gap_y
    bare = {"showticklabels": False, "ticks": "", "showgrid": False, "zeroline": False}
    layout[f"xaxis{axis}"] = {"domain": [x0, x1], "anchor": f"y{axis}", **bare}
    layout[f"yaxis{axis}"] = {"domain": [y0, y1], "anchor": f"x{axis}", "autorange": "reversed", **bare}
    verdicts = run.verdicts()
    if verdicts:
        badge = note("⚠ " + ", ".join(verdicts), x1, y1, size=9, xanchor="right", yanchor="top")
        badge["font"]["color"], badge["bgcolor"] = "#fff", VERDICT_COLOURS[verdicts[0]]
        layout["annotations"].append(badge)
    return {
        "type": "heatmap",
        "z": typed(matrix),
        "x": typed(steps),
        "coloraxis": "coloraxis",
        "xaxis": f"x{axis}",
        "yaxis": f"y{axis}",
        "name": run.id,
        "hovertemplate": f"run {run.id}<br>step %{{x:.0f}}<br>layer %{{y}}<br>%{{z:.2f}}<extra></extra>",
    }


def sweep_figures(sweep: Sweep) -> dict[str, Figure]:
    """A sweep's overview charts that have something to draw, by name."""
    figures = {"parallel": parallel_coordinates(sweep), "grid": heatmap_grid(sweep)}
    return {name: figure for name, figure in figures.items() if figure is not None}
