"""The sweep table: one row per trial, ranked by the rule the report and the dashboard share."""

from __future__ import annotations

import io
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from gradwatch.sweep.results import collect
from gradwatch.sweep.spec import parse_sweep

SPEC = parse_sweep(
    {
        "name": "lr",
        "method": "grid",
        "metric": {"name": "val/acc", "goal": "maximize"},
        "parameters": {"lr": {"values": [0.01, 0.1, 1.0]}},
        "command": ["gradwatch", "fit", "${args}"],
    }
)


def trial(lr: float, state: TrialState, **kwargs) -> optuna.trial.FrozenTrial:
    return create_trial(
        params={"lr": lr}, distributions={"lr": CategoricalDistribution([0.01, 0.1, 1.0])}, state=state, **kwargs
    )


def test_a_pruned_trial_with_the_best_last_value_ranks_after_every_finished_one():
    study = optuna.create_study(direction="maximize")
    study.add_trial(trial(0.1, TrialState.PRUNED, intermediate_values={0: 0.5, 1: 0.95}))
    study.add_trial(trial(0.01, TrialState.COMPLETE, value=0.8))
    study.add_trial(trial(1.0, TrialState.FAIL))
    rows = collect(study, SPEC)
    assert [(r.trial, r.state, r.metric) for r in rows] == [
        (1, "finished", 0.8),
        (0, "pruned", 0.95),
        (2, "failed", None),
    ]


def test_a_running_trial_shows_its_latest_metric_and_health_from_its_run_folder(tmp_path):
    here, elsewhere = tmp_path / "abc123", tmp_path / "on-another-machine"
    here.mkdir()
    (here / "metrics.csv").write_text(
        "epoch,health/vanishing,step,val/acc\n0,0,9,0.5\n1,3,19,0.75\n1,2,2"  # the last row is still being written
    )
    study = optuna.create_study(direction="maximize")
    study.add_trial(trial(0.01, TrialState.COMPLETE, value=0.8, user_attrs={"run": {"dir": "done"}}))
    study.add_trial(trial(0.1, TrialState.RUNNING, user_attrs={"run": {"dir": str(here)}}))
    study.add_trial(trial(1.0, TrialState.RUNNING, user_attrs={"run": {"dir": str(elsewhere)}}))
    rows = {r.trial: r for r in collect(study, SPEC)}
    assert (rows[1].state, rows[1].metric, rows[1].health) == ("running", 0.75, "vanishing 3")
    assert (rows[2].state, rows[2].metric, rows[2].health) == ("running", None, "")


SWEEPS = sorted((Path(__file__).parents[2] / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_the_table_fits_80_columns_and_shows_every_run(path):
    from rich.console import Console

    from gradwatch.sweep.results import TrialResult, render
    from gradwatch.sweep.spec import load_sweep

    spec = load_sweep(path)
    params = {name: p.examples()[-1] for name, p in spec.parameters.items()}
    far = "/far/away/runs/sweeps/x/runs/"
    rows = [
        TrialResult(0, "finished", params, 0.987654, "vanishing 15", -12.345, far + "k3j2h1g0", 9.0, None),
        TrialResult(17, "interrupted", params, None, "exploding 2, nonfinite 1", None, far + "zz9yy8xx", 1.0, "exit"),
    ]
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(render(rows, spec, width=80))
    text = console.export_text()
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 80
    assert "…" not in text
    for shown in ("k3j2h1g0", "zz9yy8xx", "interrupted", "-12.35", "0.9877", "nonfinite"):
        assert shown in text, shown
    assert "/far/" not in text  # run ids, not paths
