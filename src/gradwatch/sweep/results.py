"""A sweep's results: one row per trial, best first, printed as a table and saved as CSV and JSON."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gradwatch.rundir import RESULTS_CSV, RESULTS_JSON, describe_health, ranked
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
    """The study's trials as results, best first (:func:`gradwatch.rundir.ranked`: by state, then the metric)."""
    from gradwatch.sweep.local import interrupted

    rows = []
    trials = study.get_trials(deepcopy=False)
    retried = interrupted(trials)
    for t in trials:
        if t.state.name == "WAITING":
            continue
        state = "interrupted" if t.number in retried else _STATES[t.state.name]
        value = t.value if t.state.name == "COMPLETE" else _last_intermediate(t)
        metric = value if spec.metric is not None and value is not None and state != "failed" else None
        run, outcome = t.user_attrs.get("run", {}), t.user_attrs.get("outcome")
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
    goal = spec.metric.goal if spec.metric is not None else "minimize"
    return ranked(rows, value=lambda r: r.metric, state=lambda r: r.state, goal=goal)


def _last_intermediate(trial: Any) -> float | None:
    steps = trial.intermediate_values
    return steps[max(steps)] if steps else None


def save(results: list[TrialResult], folder: Path) -> tuple[Path, Path]:
    """Write ``results.csv`` (one column per parameter) and ``results.json`` into ``folder``."""
    csv_path, json_path = folder / RESULTS_CSV, folder / RESULTS_JSON
    json_path.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    names = list(results[0].params) if results else []
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", "state", *names, "metric", "health", "attenuation", "seconds", "run_dir", "error"])
        for r in results:
            cells = [r.params[n] for n in names]
            writer.writerow(
                [r.trial, r.state, *cells, r.metric, r.health, r.attenuation, r.seconds, r.run_dir, r.error or ""]
            )
    return csv_path, json_path


def render(results: list[TrialResult], spec: SweepSpec) -> Any:
    """A rich ``Table`` of the results, best first."""
    from rich.table import Table

    metric = spec.metric.name if spec.metric is not None else "metric"
    goal = f" ({spec.metric.goal})" if spec.metric is not None else ""
    table = Table(title=f"sweep {spec.name}: {len(results)} trials", title_justify="left")
    table.add_column("trial", justify="right")
    for name in spec.parameters:
        table.add_column(name)
    table.add_column(metric + goal, justify="right")
    table.add_column("gradients")
    table.add_column("attenuation", justify="right")
    table.add_column("state")
    table.add_column("run")
    for r in results:
        table.add_row(
            str(r.trial),
            *(str(r.params[name]) for name in spec.parameters),
            _number(r.metric),
            r.health,
            _number(r.attenuation, "{:.2f}"),
            r.state if r.error is None else f"{r.state}: {r.error}",
            _relative(r.run_dir),
        )
    return table


def _relative(path: str) -> str:
    """``path`` relative to the working directory when it lies inside it: the table stays narrow."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def _number(value: float | None, fmt: str = "{:.4g}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return fmt.format(value)
