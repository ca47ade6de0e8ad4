"""A sweep's results: one row per trial, best first, printed as a table and saved as CSV and JSON."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gradwatch.rundir import (
    METRICS_FILE,
    RESULTS_CSV,
    RESULTS_JSON,
    describe_health,
    health_summary,
    ranked,
    read_metrics,
    write_atomic,
)
from gradwatch.sweep.spec import SweepSpec


@dataclass(frozen=True)
class TrialResult:
    """One trial as the results table shows it.

    Attributes:
        trial: Optuna's trial number.
        state: ``finished``, ``pruned``, ``failed``, ``interrupted`` (retried as a new trial) or ``running``.
        params: The swept values by dotted name.
        metric: The metric's last logged value, if it was logged.
        health: The last gradient-health reading (``healthy``, ``vanishing 9`` ...).
        attenuation: The last ``health/attenuation`` (decades lost from the last layer to the first).
        run_dir: The trial's run folder (``metrics.csv``, ``wandb/``, ``trial.log``).
        seconds: Wall time of the trial's process.
        error: Why a failed trial failed.
    """

    trial: int
    state: str
    params: dict[str, Any]
    metric: float | None
    health: str
    attenuation: float | None
    run_dir: str
    seconds: float | None
    error: str | None


_STATES = {"COMPLETE": "finished", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running"}


def collect(study: Any, spec: SweepSpec) -> list[TrialResult]:
    """The study's trials as results, best first (:func:`gradwatch.rundir.ranked`: by state, then the metric).

    One row per run: an interrupted trial whose run a later trial resumed (same run folder) is shown by that one.
    """
    from gradwatch.sweep.local import interrupted

    rows = []
    trials = study.get_trials(deepcopy=False)
    retried = interrupted(trials)
    for t in trials:
        if t.state.name == "WAITING":
            continue
        state = "interrupted" if t.number in retried else _STATES[t.state.name]
        value = t.value if t.state.name == "COMPLETE" else _last_intermediate(t)
        run, outcome = t.user_attrs.get("run", {}), t.user_attrs.get("outcome")
        if state == "running" and run.get("dir"):  # as far as it got: its run folder, when it runs on this machine
            value, outcome = _so_far(Path(run["dir"]), spec)
        metric = value if spec.metric is not None and value is not None and state != "failed" else None
        health = (outcome or {}).get("health", {})
        rows.append(
            TrialResult(
                trial=t.number,
                state=state,
                params={name: t.params.get(name) for name in spec.parameters},
                metric=metric,
                health=describe_health(health) if outcome is not None else "",
                attenuation=health.get("attenuation"),
                run_dir=run.get("dir", ""),
                seconds=(outcome or {}).get("seconds"),
                error=(outcome or {}).get("error"),
            )
        )
    rows.sort(key=lambda r: r.trial)
    latest = {r.run_dir: r.trial for r in rows}  # the last attempt at each run
    rows = [r for r in rows if not r.run_dir or latest[r.run_dir] == r.trial]
    goal = spec.metric.goal if spec.metric is not None else "minimize"
    return ranked(rows, value=lambda r: r.metric, state=lambda r: r.state, goal=goal)


def _so_far(run_dir: Path, spec: SweepSpec) -> tuple[float | None, dict[str, Any] | None]:
    """A running trial's latest metric value and gradient health, read from its ``metrics.csv``."""
    metrics = read_metrics(run_dir / METRICS_FILE)
    if not metrics.columns:
        return None, None
    values = metrics.values(spec.metric.name) if spec.metric is not None else []
    return (values[-1] if values else None), {"health": health_summary(metrics)}


def _last_intermediate(trial: Any) -> float | None:
    steps = trial.intermediate_values
    return steps[max(steps)] if steps else None


def save(results: list[TrialResult], folder: Path) -> tuple[Path, Path]:
    """Write ``results.csv`` (one column per parameter) and ``results.json`` into ``folder``.

    Each file is replaced whole (:func:`gradwatch.rundir.write_atomic`): a kill or a full disk mid-write leaves the
    previous one, which is what rebuilds a damaged study.
    """
    csv_path, json_path = folder / RESULTS_CSV, folder / RESULTS_JSON
    write_atomic(json_path, json.dumps([asdict(r) for r in results], indent=2) + "\n")
    names = list(results[0].params) if results else []
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["trial", "state", *names, "metric", "health", "attenuation", "seconds", "run_dir", "error"])
    for r in results:
        cells = [r.params[n] for n in names]
        writer.writerow(
            [r.trial, r.state, *cells, r.metric, r.health, r.attenuation, r.seconds, r.run_dir, r.error or ""]
        )
    write_atomic(csv_path, text.getvalue())
    return csv_path, json_path


def render(results: list[TrialResult], spec: SweepSpec, width: int = 80) -> Any:
    """A rich ``Table`` of the results, best first, that fits ``width`` columns.

    Parameters go by their last dotted part (``model.depth`` → ``depth``) unless two share it, runs by their id,
    values to 3 significant digits; constants are left out. When a column per parameter would not fit, the parameters
    share one column that wraps. ``results.csv`` keeps the full names, values, paths and errors.
    """
    from rich import box
    from rich.table import Table

    metric = spec.metric.name if spec.metric is not None else "metric"
    arrow = {"maximize": " ↑", "minimize": " ↓"}.get(spec.metric.goal, "") if spec.metric is not None else ""
    axes = [name for name, p in spec.parameters.items() if p.distribution != "constant"]  # constants: no axis
    names = short_names(axes)
    values = [[_value(r.params[name]) for name in axes] for r in results]
    tail = [
        [_number(r.metric), r.health, _number(r.attenuation, "{:.2f}"), r.state, Path(r.run_dir).name] for r in results
    ]
    tail_headers = [metric + arrow, "gradients", "atten.", "state", "run"]
    headers = [names[name] for name in axes]

    def widest(column: list[str], header: str) -> int:
        return max([len(header), *map(len, column)])

    needed = sum(widest([row[i] for row in values], h) + 2 for i, h in enumerate(headers))
    needed += sum(widest([row[i] for row in tail], h) + 2 for i, h in enumerate(tail_headers)) + 4
    narrow = needed > width
    if narrow:  # one wrapping column of `name value` pairs instead of a column each
        headers = ["parameters"]
        values = [[", ".join(f"{names[n]} {v}" for n, v in zip(axes, row, strict=True))] for row in values]
    table = Table(
        title=f"sweep {spec.name}: {len(results)} trials (every column: results.csv)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        show_edge=False,
    )
    table.add_column("#", justify="right", no_wrap=True)
    for header in headers:
        table.add_column(header, overflow="fold", min_width=16 if header == "parameters" else None)
    for header in tail_headers:
        wraps = header == "gradients"  # "exploding 2, nonfinite 1" wraps after its comma
        table.add_column(
            header,
            justify="left" if header in ("gradients", "state", "run") else "right",
            no_wrap=not wraps,
            min_width=10 if wraps else None,
            max_width=12 if wraps and narrow else None,
        )
    for r, front, back in zip(results, values, tail, strict=True):
        table.add_row(str(r.trial), *front, *back)
    return table


def _value(value: Any) -> str:
    """A parameter's value in a cell: floats to 3 significant digits (``0.00215``, not ``0.002153708731221119``)."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def short_names(names: Any) -> dict[str, str]:
    """Each dotted name by its last part, or in full where two names share that part.

    Example::

        >>> short_names(["model.depth", "model.norm", "data.norm"])
        {'model.depth': 'depth', 'model.norm': 'model.norm', 'data.norm': 'data.norm'}
    """
    names = list(names)
    last = [name.rsplit(".", 1)[-1] for name in names]
    return {name: part if last.count(part) == 1 else name for name, part in zip(names, last, strict=True)}


def _number(value: float | None, fmt: str = "{:.4g}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return fmt.format(value)
