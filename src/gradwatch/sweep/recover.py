"""Trials that run again, and a local sweep's study rebuilt from its folder when its ``sweep.db`` was lost.

A trial that lost its run (its controller stopped or died, or it was preempted) is queued again under a new number
that names the one it retries (``retry_of``); the engine resumes the old run when it saved a checkpoint.

Each trial the engine starts leaves its values in ``trials/config-<run id>.json`` and its run in ``runs/<run id>/``;
what became of it (state, metric, seconds, error) is in ``results.json``, written whenever a trial ends. So an
emptied, deleted or replaced ``sweep.db`` loses nothing that ended: :func:`rebuild` gives the study its ended trials
back as recorded (Hyperband's rung values read again from each run's ``metrics.csv``), and the trials that were
running, or started after ``results.json`` was last written, come back as interrupted and run again, unless a trial with
the same values ended.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gradwatch.rundir import (
    METRICS_FILE,
    RESULTS_JSON,
    RUNS_DIR,
    STUDY_FILE,
    SWEEP_FILE,
    TRIALS_DIR,
    health_summary,
    read_json,
    read_metrics,
)
from gradwatch.sweep.spec import SweepError, SweepSpec

#: results.json's states of trials that ended; any other (interrupted, running) ran no further and runs again.
_ENDED = {"finished": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL"}


def queue_again(study: Any, params: Mapping[str, Any], number: int, preempted: int = 0) -> None:
    """Queue trial ``number``'s values again; the new trial names the one it retries and how often it was preempted."""
    attrs = {"retry_of": number, **({"preempted": preempted} if preempted else {})}
    study.enqueue_trial(dict(params), user_attrs=attrs, skip_if_exists=False)


def started_runs(folder: Path) -> dict[str, dict[str, Any]]:
    """The values of every trial started in the sweep ``folder`` by run id, oldest first (``trials/config-*.json``)."""
    files = sorted((folder / TRIALS_DIR).glob("config-*.json"), key=lambda path: path.stat().st_mtime_ns)
    found = {path.stem.removeprefix("config-"): read_json(path) for path in files}
    return {run_id: values for run_id, values in found.items() if isinstance(values, dict)}


def recovery_hint(folder: Path) -> str:
    """What to do about a sweep folder whose study is lost: rebuild it from ``results.json``, or restore it."""
    if not started_runs(folder) or isinstance(read_json(folder / RESULTS_JSON), list):
        return f"move {STUDY_FILE} aside and run the same command again to rebuild the study from {RESULTS_JSON}"
    return f"restore {STUDY_FILE} from a backup, or start over with another --dir (no {RESULTS_JSON} to rebuild from)"


def rebuild(study: Any, spec: SweepSpec, folder: Path, distributions: Mapping[str, Any], config: dict) -> str:
    """Give the empty ``study`` back the trials that ran in ``folder``; return a line saying what came back.

    Args:
        study: The sweep's study, holding no trials.
        spec: The sweep.
        folder: The sweep folder.
        distributions: The study's distributions by parameter name.
        config: The sweep file as it runs (``sweep.yaml``'s content), to refuse a folder that ran another sweep.

    Raises:
        SweepError: ``results.json`` is missing or unreadable, or the folder ran a different sweep.
    """
    from optuna.trial import TrialState, create_trial

    ran_before = read_json(folder / SWEEP_FILE)
    if isinstance(ran_before, dict) and ran_before != config:
        raise SweepError(
            f"{folder} ran a different sweep named {spec.name!r} (its {SWEEP_FILE}), and its {STUDY_FILE} is lost: "
            "give this one another --dir (or name), or restore the file it was started with"
        )
    rows = read_json(folder / RESULTS_JSON)
    started = started_runs(folder)
    if not isinstance(rows, list):
        raise SweepError(
            f"{folder / STUDY_FILE} holds no trials but {len(started)} ran in {folder}: {recovery_hint(folder)}"
        )
    try:
        in_order = sorted(rows, key=lambda row: row["trial"])
        recorded = [(row["state"], row["params"], Path(row["run_dir"]), row) for row in in_order]
        shown = {run_dir.name for _, _, run_dir, _ in recorded}
        # Trials started after results.json was written: what became of them is unknown, so they run again.
        recorded += [("interrupted", v, folder / RUNS_DIR / run, {}) for run, v in started.items() if run not in shown]
        waiting: dict[str, tuple[dict, int]] = {}  # values of interrupted trials no later trial ran → (values, number)
        for number, (state, values, run_dir, row) in enumerate(recorded):  # the empty study numbers them from 0
            params = {name: values[name] for name in spec.parameters}
            attrs: dict[str, Any] = {"run": {"id": run_dir.name, "dir": str(run_dir)}}
            key = json.dumps(params, sort_keys=True)
            if state not in _ENDED:
                trial = create_trial(
                    state=TrialState.FAIL, params=params, distributions=distributions, user_attrs=attrs
                )
                study.add_trial(trial)
                waiting[key] = (params, number)
                continue
            if key in waiting:
                attrs["retry_of"] = waiting.pop(key)[1]
            study.add_trial(_ended(spec, TrialState[_ENDED[state]], params, distributions, attrs, run_dir, row))
    except (KeyError, TypeError, ValueError) as exc:  # a hand-edited file, or values this sweep file cannot take
        raise SweepError(
            f"{folder / RESULTS_JSON} does not fit {spec.path} ({type(exc).__name__}: {exc}), and {STUDY_FILE} is "
            "lost: run the file the sweep was started with, or start over with another --dir"
        ) from None
    for params, number in waiting.values():
        queue_again(study, params, number)
    states = [state for state, *_ in recorded]
    counts = ", ".join(f"{states.count(s)} {s}" for s in _ENDED if s in states) or "none ended"
    return (
        f"sweep {spec.name}: {STUDY_FILE} held no trials; rebuilt the study from {RESULTS_JSON} and {TRIALS_DIR}/ "
        f"({counts}); {len(waiting)} interrupted trials run again"
    )


def _ended(
    spec: SweepSpec, state: Any, params: dict, distributions: Mapping[str, Any], attrs: dict, run_dir: Path, row: dict
) -> Any:
    """An ended trial as the engine recorded it: its metric, its rung values for Hyperband, its outcome."""
    from optuna.trial import TrialState, create_trial

    metrics = read_metrics(run_dir / METRICS_FILE)
    outcome = {"seconds": row.get("seconds"), "health": health_summary(metrics)}
    attrs["outcome"] = {**outcome, **({"error": row["error"]} if row.get("error") else {})}
    values = metrics.values(spec.metric.name) if spec.metric is not None else []
    steps: dict[int, float] = {}
    if spec.early_terminate is not None:
        steps = {step: value for step, value in enumerate(values) if spec.early_terminate.is_rung(step)}
        if state == TrialState.COMPLETE and values:  # as the engine tells a finished trial's last step
            steps[len(values) - 1] = values[-1]
    value = None
    if state == TrialState.COMPLETE:  # a sweep without a metric records 0.0, as the engine does
        value = row["metric"] if row.get("metric") is not None else 0.0
    return create_trial(
        state=state, value=value, params=params, distributions=dict(distributions), user_attrs=attrs,
        intermediate_values=steps,
    )  # fmt: skip
