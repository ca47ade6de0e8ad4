"""Gradient-flow views rendered as RGB images: per-layer bars for one step, and a layer × step heatmap.

Pure numpy and matplotlib, drawn on a private :class:`~matplotlib.figure.Figure` with the Agg canvas: no pyplot,
so no global state, no open figures left behind, and safe to call from a logging thread. matplotlib is imported
inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

__all__ = ["flow_bars", "flow_heatmap"]

#: Longest layer label; longer names keep their right end (the most specific part) behind a leading "…".
MAX_LABEL_CHARS = 28
DPI = 100
#: Colours: max |grad| bar, mean |grad| bar, zero marks, non-finite marks, unmeasured heatmap cells.
MAX_COLOR = "#9ecae1"
MEAN_COLOR = "#2166ac"
ZERO_COLOR = "#525252"
NONFINITE_COLOR = "#d62728"
MISSING_COLOR = "#bdbdbd"
HEATMAP_CMAP = "viridis"
_MARGIN_PX = 8.0
_COLORBAR_GAP_PX = 14.0
_COLORBAR_WIDTH_PX = 18.0
_SUPERSCRIPTS = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def flow_bars(
    layers: Sequence[str],
    mean_abs: Sequence[float],
    max_abs: Sequence[float],
    *,
    title: str = "gradient flow",
) -> np.ndarray:
    """The classic gradient-flow plot: mean and max |grad| of each layer, input → output, on a log axis.

    Each layer gets a column: a wide light bar for the max |grad| and a narrow dark bar in front of it for the
    mean |grad|. Zeros, which a log axis cannot show, are marked with a cross at the bottom of the axis; NaN and
    ±inf shade the column red and name the value. Long layer names are shortened from the left, and only every
    k-th name is written when there are too many to read.

    Args:
        layers: Layer names, input side first.
        mean_abs: Mean |grad| of each layer (negative values count as their magnitude).
        max_abs: Max |grad| of each layer.
        title: Title above the plot.

    Returns:
        An ``(H, W, 3)`` uint8 RGB image.

    Raises:
        ValueError: ``layers``, ``mean_abs`` and ``max_abs`` differ in length.

    Example::

        >>> image = flow_bars(["conv1", "conv2", "fc"], [1e-3, 0.0, 2e-5], [1e-2, 0.0, float("nan")])
        >>> image.ndim, image.shape[2], image.dtype
        (3, 3, dtype('uint8'))
    """
    names = [str(name) for name in layers]
    mean = _as_vector(mean_abs, "mean_abs")
    peak = _as_vector(max_abs, "max_abs")
    if not len(names) == len(mean) == len(peak):
        raise ValueError(
            f"flow_bars needs one value per layer: got {len(names)} layers, {len(mean)} mean_abs "
            f"and {len(peak)} max_abs values"
        )
    n = len(names)
    fig = _figure(width=float(np.clip(6.0 + 0.06 * n, 8.0, 12.0)), height=6.0)
    ax = fig.add_subplot()
    ax.set_title(title, loc="left", fontsize=11)
    ax.set_xlabel("layer (input → output)")
    ax.set_ylabel("|grad|")
    ax.set_yscale("log")
    if n == 0:
        _no_data(ax)
        return _render(fig, ax)
    bad = ~np.isfinite(mean) | ~np.isfinite(peak)
    kinds = ["/".join(dict.fromkeys(_kind(v) for v in (peak[i], mean[i]) if not np.isfinite(v))) for i in range(n)]
    mean, peak = np.abs(mean), np.abs(peak)
    low = _log_axis(ax, np.concatenate([mean, peak]), n)
    _bars(ax, mean, peak, bad, low)
    _nonfinite_labels(ax, kinds)
    _layer_ticks(ax, "x", names, room_px=fig.get_figwidth() * DPI * 0.85)
    _bars_legend(ax, zero=bool(((mean == 0) | (peak == 0)).any()), bad=bool(bad.any()))
    return _render(fig, ax)


def _log_axis(ax: Axes, values: np.ndarray, n: int) -> float:
    """Whole decades around the positive finite ``values``, room below the smallest bar; returns the bottom."""
    from matplotlib.ticker import FuncFormatter, NullLocator

    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size:  # with room below the smallest bar (else it has no height) and above the largest
        low = 10.0 ** max(-300, math.floor(math.log10(positive.min()) - 0.1))
        high = 10.0 ** min(300, math.ceil(math.log10(positive.max()) + 0.1))
    else:
        low, high = 1e-8, 1.0
    ax.set_ylim(low, high)
    # Decades as 10⁻³ in plain text (mathtext labels cost as much as the rest of the axis), no minor ticks.
    ax.yaxis.set_major_formatter(FuncFormatter(_decade))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_xlim(-0.6, n - 0.4)
    ax.grid(axis="y", which="major", color="#e0e0e0", linewidth=0.8)
    ax.set_axisbelow(True)
    return low


def _columns(ax: Axes) -> Any:
    """The transform of marks placed by layer along x and from 0 (the axis' bottom) to 1 (its top) along y."""
    from matplotlib.transforms import blended_transform_factory

    return blended_transform_factory(ax.transData, ax.transAxes)


def _bars(ax: Axes, mean: np.ndarray, peak: np.ndarray, bad: np.ndarray, low: float) -> None:
    """Max and mean bars, red columns where a value is not finite, crosses at the bottom for zeros."""
    n, columns = len(mean), _columns(ax)
    # One collection per kind of mark rather than a patch per bar: hundreds of patches cost more than the plot.
    x = np.arange(n)
    if bad.any():
        ax.add_collection(
            _boxes(x[bad], 0.9, 0.0, 1.0, transform=columns, color=NONFINITE_COLOR, alpha=0.25), autolim=False
        )
    for values, width, color in ((peak, 0.8, MAX_COLOR), (mean, 0.45, MEAN_COLOR)):
        drawn = np.isfinite(values) & (values > 0)
        ax.add_collection(
            _boxes(x[drawn], width, low, values[drawn], transform=ax.transData, color=color), autolim=False
        )
    zero = (mean == 0) | (peak == 0)
    if n <= 60:  # mean and max side by side; with many layers one mark per column reads better
        marks = np.concatenate([x[peak == 0] - 0.2, x[mean == 0] + 0.2])
        ax.plot(marks, np.full(marks.size, 0.025), "x", color=ZERO_COLOR, transform=columns)
    else:
        ax.plot(x[zero], np.full(zero.sum(), 0.025), "x", color=ZERO_COLOR, markersize=4, transform=columns)


def _nonfinite_labels(ax: Axes, kinds: list[str]) -> None:
    """One label per run of columns with the same non-finite kinds: a model that blew up gets one "nan", not 200."""
    n, columns = len(kinds), _columns(ax)
    label_size = 8 if n <= 40 else 6
    start = 0
    while start < n:
        stop = start + 1
        while stop < n and kinds[stop] == kinds[start]:
            stop += 1
        if kinds[start]:
            ax.text(
                (start + stop - 1) / 2,
                0.98,
                kinds[start],
                transform=columns,
                rotation=90,
                ha="center",
                va="top",
                color=NONFINITE_COLOR,
                fontsize=label_size,
                fontweight="bold",
            )
        start = stop


def _bars_legend(ax: Axes, *, zero: bool, bad: bool) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(color=MAX_COLOR, label="max |grad|"), Patch(color=MEAN_COLOR, label="mean |grad|")]
    if zero:
        handles.append(Line2D([], [], marker="x", linestyle="", color=ZERO_COLOR, label="zero"))
    if bad:
        handles.append(Patch(color=NONFINITE_COLOR, alpha=0.25, label="nan / inf"))
    ax.legend(
        handles=handles,
        loc="lower right",
        bbox_to_anchor=(1.0, 1.0),
        ncol=len(handles),
        frameon=False,
        fontsize=8,
        borderaxespad=0.2,
        handlelength=1.2,
        columnspacing=1.2,
    )


def flow_heatmap(
    layers: Sequence[str],
    steps: Sequence[int],
    log10_norms: np.ndarray,
    *,
    title: str = "gradient norm per layer (log10)",
) -> np.ndarray:
    """A layer × step heatmap of log10 gradient norms, input layer at the top, with a colorbar.

    NaN (not measured) is drawn in a neutral gray, ``-inf`` (a zero norm) in the colormap's minimum and ``+inf``
    in its maximum; the colour range spans the finite values. Step labels on the x axis and layer names on the
    y axis are thinned to what fits.

    Args:
        layers: Layer names, input side first.
        steps: The logging step of each column.
        log10_norms: ``(len(layers), len(steps))`` array of log10 gradient norms.
        title: Title above the plot.

    Returns:
        An ``(H, W, 3)`` uint8 RGB image.

    Raises:
        ValueError: ``log10_norms`` is not of shape ``(len(layers), len(steps))``.

    Example::

        >>> norms = np.array([[-3.0, -2.7, np.nan], [-1.0, -np.inf, -0.3]])  # NaN: not measured, -inf: zero
        >>> image = flow_heatmap(["conv", "fc"], [0, 50, 100], norms)
        >>> image.ndim, image.shape[2], image.dtype
        (3, 3, dtype('uint8'))
    """
    names = [str(name) for name in layers]
    step_list = [int(step) for step in steps]
    values = np.array(log10_norms, dtype=np.float64)
    if values.shape != (len(names), len(step_list)):
        raise ValueError(
            f"flow_heatmap needs log10_norms of shape (len(layers), len(steps)) = ({len(names)}, "
            f"{len(step_list)}): got shape {values.shape}"
        )
    n, m = values.shape

    from matplotlib import colormaps

    height = float(np.clip(2.0 + 0.14 * n, 4.0, 12.0))
    fig = _figure(width=float(np.clip(7.0 + 0.02 * m, 9.0, 12.0)), height=height)
    ax = fig.add_subplot()
    ax.set_title(title, loc="left", fontsize=11)
    ax.set_xlabel("step")
    if n == 0 or m == 0:
        _no_data(ax)
        return _render(fig, ax)

    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 0.0)
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    shown = np.clip(values, vmin, vmax)  # -inf → minimum colour, +inf → maximum; NaN stays NaN
    image = ax.imshow(
        np.ma.masked_invalid(shown),
        cmap=colormaps[HEATMAP_CMAP].with_extremes(bad=MISSING_COLOR),
        vmin=vmin,
        vmax=vmax,
        aspect="auto",
        interpolation="nearest",
        origin="upper",
        extent=(-0.5, m - 0.5, n - 0.5, -0.5),
    )
    has_low, has_high = bool(np.isneginf(values).any()), bool(np.isposinf(values).any())
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}
    colorbar = fig.colorbar(image, cax=fig.add_axes((0.9, 0.1, 0.02, 0.8)), extend=extend[has_low, has_high])
    colorbar.set_label("log10 ‖grad‖", fontsize=9)
    colorbar.ax.tick_params(labelsize=8)

    columns = _step_ticks(step_list, most=max(2, int(fig.get_figwidth())))
    ax.set_xticks(columns, [str(step_list[j]) for j in columns], fontsize=8)
    _layer_ticks(ax, "y", names, room_px=height * DPI * 0.8)

    notes = []
    if np.isnan(values).any():
        notes.append("gray: not measured")
    if has_low:
        notes.append("min colour: zero norm")
    if has_high:
        notes.append("max colour: +inf")
    if notes:
        ax.text(1.0, 1.01, " · ".join(notes), transform=ax.transAxes, ha="right", va="bottom", fontsize=8)
    return _render(fig, ax, colorbar.ax)


def _as_vector(values: Sequence[float], name: str) -> np.ndarray:
    array = np.array(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional: got shape {array.shape}")
    return array


def _boxes(x: np.ndarray, width: float, bottom: float, top: float | np.ndarray, **style: object) -> PolyCollection:
    """Rectangles ``width`` wide centred on ``x``, from ``bottom`` to ``top``, as one collection."""
    from matplotlib.collections import PolyCollection

    x0, x1 = x - width / 2, x + width / 2
    y0, y1 = np.full(x.shape, bottom, dtype=float), np.broadcast_to(np.asarray(top, dtype=float), x.shape)
    corners = np.stack(
        [np.stack([x0, y0], -1), np.stack([x0, y1], -1), np.stack([x1, y1], -1), np.stack([x1, y0], -1)], 1
    )
    return PolyCollection(list(corners), linewidths=0, **style)


def _kind(value: float) -> str:
    if np.isnan(value):
        return "nan"
    return "inf" if value > 0 else "-inf"


def _shorten(name: str) -> str:
    """``name`` cut to :data:`MAX_LABEL_CHARS` from the left, at a dot where one allows it."""
    if len(name) <= MAX_LABEL_CHARS:
        return name
    tail = name[-(MAX_LABEL_CHARS - 1) :]
    dot = tail.find(".")
    if 0 <= dot < len(tail) - 1:
        tail = tail[dot + 1 :]
    return "…" + tail


def _decade(value: float, _position: int) -> str:
    """A log-axis tick label such as ``10⁻³``, in plain text."""
    if not 0 < value < math.inf:
        return ""
    return "10" + str(round(math.log10(value))).translate(_SUPERSCRIPTS)


def _thin(count: int, most: int) -> list[int]:
    """At most about ``most`` evenly spaced indices of ``range(count)``: the first, and the last where it fits."""
    if count <= most:
        return list(range(count))
    stride = math.ceil(count / most)
    picked = list(range(0, count, stride))
    if count - 1 - picked[-1] >= stride / 2:
        picked.append(count - 1)
    return picked


def _step_ticks(steps: list[int], most: int) -> list[int]:
    """Columns to label on the step axis: those nearest round step numbers when the steps increase."""
    count = len(steps)
    array = np.asarray(steps)
    if count <= most or np.any(np.diff(array) <= 0):
        return _thin(count, most)
    from matplotlib.ticker import MaxNLocator

    ticks = MaxNLocator(nbins=most, integer=True).tick_values(array[0], array[-1])
    ticks = ticks[(ticks >= array[0]) & (ticks <= array[-1])]
    after = np.clip(np.searchsorted(array, ticks), 1, count - 1)
    nearest = np.where(ticks - array[after - 1] <= array[after] - ticks, after - 1, after)
    return sorted({int(i) for i in nearest})


def _layer_ticks(ax: Axes, axis: str, names: list[str], room_px: float) -> None:
    """Layer names as tick labels on ``axis``, thinned to what ``room_px`` pixels can hold."""
    n = len(names)
    fontsize = 9 if n <= 20 else 8 if n <= 50 else 7
    shown = _thin(n, max(1, int(room_px / (fontsize * 1.6))))
    labels = [_shorten(names[i]) for i in shown]
    style = {"fontsize": fontsize, "parse_math": False}  # a "$" in a module name is not a formula
    if axis == "x":
        if len(shown) <= 25:
            ax.set_xticks(shown, labels, rotation=45, ha="right", rotation_mode="anchor", **style)
        else:
            ax.set_xticks(shown, labels, rotation=90, **style)
    else:
        ax.set_yticks(shown, labels, **style)
    ax.tick_params(axis=axis, length=2)


def _no_data(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="0.5")


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _fit(fig: Figure, ax: Axes, cax: Axes | None) -> None:
    """Place ``ax`` (and the colorbar ``cax`` right of it) so that its labels just fit in the figure.

    One measuring pass instead of a layout engine: constrained layout measures every tick label several times,
    which costs more than drawing the whole figure.
    """
    renderer = fig.canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    box, tight = ax.get_window_extent(renderer), ax.get_tightbbox(renderer)
    left, bottom = max(0.0, box.x0 - tight.x0), max(0.0, box.y0 - tight.y0)
    right, top = max(0.0, tight.x1 - box.x1), max(0.0, tight.y1 - box.y1)
    if cax is not None:
        cbox, ctight = cax.get_window_extent(renderer), cax.get_tightbbox(renderer)
        right = max(right, _COLORBAR_GAP_PX + _COLORBAR_WIDTH_PX + max(0.0, ctight.x1 - cbox.x1))
    x0, y0 = (left + _MARGIN_PX) / width, (bottom + _MARGIN_PX) / height
    x1, y1 = 1 - (right + _MARGIN_PX) / width, 1 - (top + _MARGIN_PX) / height
    x1, y1 = max(x1, x0 + 0.2), max(y1, y0 + 0.2)  # absurdly long labels: squeeze, never invert, the axes
    ax.set_position((x0, y0, x1 - x0, y1 - y0))
    if cax is not None:
        cax.set_position((x1 + _COLORBAR_GAP_PX / width, y0, _COLORBAR_WIDTH_PX / width, y1 - y0))


def _render(fig: Figure, ax: Axes, cax: Axes | None = None) -> np.ndarray:
    canvas = fig.canvas
    with np.errstate(over="ignore", under="ignore"):  # log ticks past 1e300 overflow harmlessly inside matplotlib
        _fit(fig, ax, cax)
        canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    fig.clear()
    return rgb
