"""The report's opening lines: what happened to the gradients, in plain language.

For a sweep: how many runs vanished, exploded or went non-finite, and what those runs have in common in the swept
parameters ("all of them sigmoid or tanh, without residual, at depth >= 16"), checked the other way too (whether
every run with those settings did).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gradwatch.report.format import format_value, is_number, short
from gradwatch.report.runs import Run, Sweep
from gradwatch.rundir import VERDICTS

_PAST = {"vanishing": "vanished", "exploding": "exploded", "nonfinite": "went non-finite", "stalled": "stalled"}


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _phrase(name: str, values: set[Any], every: set[Any]) -> tuple[str, Any] | None:
    """How ``values`` (a group's) stand out among ``every`` value of parameter ``name``, with a test for membership.

    ``None`` when the group spans every value, so the parameter tells nothing.
    """
    if values == every:
        return None
    label = short(name)
    if all(is_number(v) for v in every):
        low, high = min(values), max(values)
        if high == max(every):
            return f"{label} >= {low:g}", lambda v: v >= low
        if low == min(every):
            return f"{label} <= {high:g}", lambda v: v <= high
        return f"{label} {low:g}–{high:g}", lambda v: low <= v <= high
    if all(isinstance(v, bool) for v in every) and len(values) == 1:
        (flag,) = values
        return (f"with {label}" if flag else f"without {label}"), lambda v: v == flag
    shown = " or ".join(str(v) for v in sorted(values, key=str))
    phrase = shown if label == "activation" else f"{label} {shown}"  # "sigmoid or tanh" names itself
    return phrase, lambda v: v in values


def common_ground(group: Sequence[Run], runs: Sequence[Run], parameters: Sequence[str]) -> tuple[str, bool]:
    """What the runs of ``group`` share among ``runs``, and whether every run that shares it is in the group.

    Returns:
        The description (``"sigmoid or tanh, without residual, depth >= 16"``; empty when they share nothing
        particular) and whether it picks out exactly ``group``.
    """
    phrases, tests = [], []
    for name in parameters:
        every = {run.params.get(name) for run in runs if name in run.params}
        values = {run.params.get(name) for run in group if name in run.params}
        found = _phrase(name, values, every) if values and len(every) > 1 else None
        if found is not None:
            phrases.append(found[0])
            tests.append((name, found[1]))
    if not phrases:
        return "", False
    members = [run for run in runs if all(name in run.params and test(run.params[name]) for name, test in tests)]
    return ", ".join(phrases), {id(r) for r in members} == {id(r) for r in group}


def sweep_summary(sweep: Sweep) -> list[str]:
    """Plain-language lines about a sweep: outcome per verdict, what the affected runs share, the best run."""
    measured = [run for run in sweep.runs if run.health()]
    lines = []
    total = len(sweep.runs)
    if not measured:
        return [f"Sweep {sweep.name}: {_plural(total, 'run')}; none has logged gradient health yet."]
    flagged_any = False
    for verdict in VERDICTS:
        group = [run for run in measured if verdict in run.verdicts()]
        if not group:
            continue
        flagged_any = True
        line = f"{len(group)} of {_plural(len(measured), 'run')} {_PAST[verdict]}"
        shared, exact = common_ground(group, measured, sweep.axes)
        if shared:
            line += f"; all of them {shared}" if len(group) > 1 else f": {shared}"
            if exact and len(group) > 1:
                line += " (and every run with those settings did)"
        said = next((run.advice()[verdict] for run in group if verdict in run.advice()), None)
        lines.append(line + "." + _sentence(said))
    if not flagged_any:
        lines.append(
            f"No run vanished, exploded, went non-finite or stalled: {len(measured)} of {total} healthy at their last"
            " measurement."
        )
    elif len(measured) < total:
        lines.append(f"{total - len(measured)} more have not measured gradients yet.")
    lines.extend(_best(sweep))
    return lines


def _best(sweep: Sweep) -> list[str]:
    if sweep.metric is None:
        return []
    logged = [run for run in sweep.ranked() if sweep.value(run) is not None]
    if not logged:
        return [f"No run has logged {sweep.metric} yet."]
    # A pruned or failed trial stopped before its end: its last value does not compete (the sweep table's rule).
    ended = [run for run in logged if run.state in (None, "finished")]
    if not ended:
        return [f"No run has finished with {sweep.metric} yet."]
    best = ended[0]
    settings = ", ".join(f"{short(n)} {format_value(best.params[n])}" for n in sweep.axes if n in best.params)
    line = f"Best {sweep.metric}: {sweep.value(best):.4g} (run {best.id}"
    return [line + (f": {settings})." if settings else ").")]


def runs_summary(runs: Sequence[Run]) -> list[str]:
    """Plain-language lines about runs outside any sweep: which ones a verdict stands against."""
    lines = []
    for run in runs:
        verdicts = run.verdicts()
        health = run.health()
        if not health:
            lines.append(f"Run {run.id}: no gradient health logged (no GradientMonitor, or not measured yet).")
        elif verdicts:
            named = ", ".join(f"{v} in {health[v]:g} layers" for v in verdicts)  # a count of inf reads as inf
            said = run.advice()
            lines.append(f"Run {run.id}: {named} at its last measurement." + _sentence(said.get(verdicts[0])))
        else:
            lines.append(f"Run {run.id}: gradients healthy at its last measurement.")
    return lines


def _sentence(said: str | None) -> str:
    """The monitor's ``likely cause: ...; try ...`` as a sentence to follow another, or nothing."""
    return f" {said[0].upper()}{said[1:]}." if said else ""
