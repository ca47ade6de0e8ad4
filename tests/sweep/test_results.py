"""The sweep table: one row per trial, ranked by the rule the report and the dashboard share."""

from __future__ import annotations

import optuna
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
