"""How the report's figures encode and label things: typed arrays, thinned series, colours, layouts, value labels.

Plain numpy and strings, shared by the run and sweep figures (:mod:`gradwatch.report.figures`) and the summary.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Most points a line keeps (min and max of each bin, so spikes survive thinning).
LINE_POINTS = 300


def typed(values: np.ndarray) -> dict[str, Any]:
    """A plotly.js typed array, base64, with its shape when it has two dimensions.

    Whole numbers (steps) go as 16- or 32-bit integers, everything else as float32: steps are half of a chart's
    data, and this keeps a 64-run report under 15 MB.
    """
    values = np.asarray(values)
    dtype = "<f4"
    if values.size and np.isfinite(values).all() and np.array_equal(values, np.round(values)):
        if values.min() >= 0 and values.max() < 2**16:
            dtype = "<u2"
        elif abs(values).max() < 2**31:
            dtype = "<i4"
    array = np.ascontiguousarray(values, dtype=dtype)
    encoded: dict[str, Any] = {"dtype": dtype[1:], "bdata": base64.b64encode(array.tobytes()).decode("ascii")}
    if array.ndim == 2:
        encoded["shape"] = f"{array.shape[0]},{array.shape[1]}"
    return encoded


def thin(steps: np.ndarray, values: np.ndarray, points: int = LINE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``points`` points of a series: each bin's lowest and highest value, in step order, so spikes survive."""
    n = len(values)
    if n <= points:
        return steps, values
    bins = points // 2
    size = -(-n // bins)
    padded = np.full(bins * size, np.nan)
    padded[:n] = values
    chunks = padded.reshape(bins, size)
    offsets = np.arange(bins) * size
    low = offsets + np.argmin(np.where(np.isnan(chunks), np.inf, chunks), axis=1)
    high = offsets + np.argmax(np.where(np.isnan(chunks), -np.inf, chunks), axis=1)
    index = np.unique(np.concatenate([low, high]))  # sorted; a bin whose low is its high gives one point
    index = index[index < n]
    return steps[index], values[index]


_VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=float)


def viridis(positions: Sequence[float]) -> list[str]:
    """Viridis colours at ``positions`` in [0, 1], as ``#rrggbb``: the heatmaps' scale, so colours mean one thing."""
    stops = np.linspace(0, 1, len(_VIRIDIS))
    colours = []
    for t in positions:
        rgb = [round(float(np.interp(t, stops, _VIRIDIS[:, c]))) for c in range(3)]
        colours.append("#{:02x}{:02x}{:02x}".format(*rgb))
    return colours


def layer_colours(count: int) -> list[str]:
    """``count`` colours from input (dark blue) to output (yellow), so depth reads as a gradient."""
    return viridis(np.linspace(0, 1, count)) if count > 1 else viridis([0.0])[:count]


def base_layout(title: str, **extra: Any) -> dict[str, Any]:
    """Every figure's layout: a small left-aligned title, tight margins, one font; ``extra`` on top."""
    layout: dict[str, Any] = {
        "title": {"text": title, "x": 0.01, "font": {"size": 14}},
        "margin": {"l": 60, "r": 20, "t": 40, "b": 40},
        "height": 320,
        "hovermode": "closest",
        "legend": {"font": {"size": 10}},
        "font": {"family": "system-ui, sans-serif", "size": 11},
    }
    layout.update(extra)
    return layout


def note(text: str, x: float, y: float, *, size: int = 10, **extra: Any) -> dict[str, Any]:
    """A text annotation placed on the whole figure (paper coordinates), without an arrow."""
    return {
        "text": text,
        "xref": "paper",
        "yref": "paper",
        "x": x,
        "y": y,
        "showarrow": False,
        "font": {"size": size},
        **extra,
    }


def short(name: str) -> str:
    """A parameter's last dotted part: ``model.depth`` → ``depth``."""
    return name.rsplit(".", 1)[-1]


def is_number(value: Any) -> bool:
    """Whether a parameter's value is a number (an axis with a scale), not a name or a flag."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def axis_positions(values: list[Any]) -> tuple[list[float], list[tuple[float, str]]]:
    """Positions in [0, 1] for one axis of the parallel coordinates, and its tick labels.

    A number axis is ticked at each value when there are a few (a depth of 4, 8 or 16), else at five even steps.
    """
    if all(is_number(v) for v in values):
        low, high = min(values), max(values)
        span = high - low
        positions = [(v - low) / span if span else 0.5 for v in values]
        if not span:
            return positions, [(0.5, format_value(low))]
        distinct = sorted(set(values))
        marks = distinct if len(distinct) <= 6 else [low + span * i / 4 for i in range(5)]
        return positions, [((v - low) / span, format_value(v)) for v in marks]
    labels = sorted({str(v) for v in values}, key=natural_value)
    spread = {label: (i / (len(labels) - 1) if len(labels) > 1 else 0.5) for i, label in enumerate(labels)}
    return [spread[str(v)] for v in values], [(y, label) for label, y in spread.items()]


def format_value(value: Any) -> str:
    """A value as a label: numbers to 4 significant digits (``0.002154``), anything else as written."""
    return f"{value:.4g}" if is_number(value) else str(value)


def natural_value(label: str) -> tuple[int, float, str]:
    """A sort key putting numbers first, in numeric order, then names."""
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)


def label_key(label: str) -> list[Any]:
    """Sort facet labels by their values, numbers as numbers (``depth=4`` before ``depth=16``, ``2`` before ``10``)."""
    return [natural_value(part.split("=", 1)[-1]) for part in label.split(", ")]


def finite_or_none(value: float | None) -> float | None:
    """``value``, or ``None`` when it is missing or not finite (JSON has no NaN)."""
    return value if value is not None and math.isfinite(value) else None
