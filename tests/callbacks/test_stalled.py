"""The ``stalled`` verdict on real runs of the quick-start's network: it names a stall and its cause, and stays
silent on runs that learn, however long they run."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import column, read_metrics
from gradwatch.rundir import describe_health, health_summary
from gradwatch.rundir import read_metrics as read_run
from test_cli import QUICK, gradwatch

QUICKSTART = ["fit", "--config", str(Path(__file__).parents[2] / "sweeps" / "configs" / "cnn-digits.yaml"), *QUICK]


def fit(tmp_path: Path, *args: str) -> tuple[list[str], Path]:
    """Run the quick-start's network with ``args``; the monitor's lines and the run folder."""
    done = gradwatch(*QUICKSTART, *args, cwd=tmp_path, env={"WANDB_MODE": "disabled"})
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    said = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("gradwatch:")]
    return said, run


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "cause", "fix"),
    [
        (
            ["--model.activation", "sigmoid", "--model.norm", "none", "--model.residual", "true"],
            "likely cause: sigmoid units saturated",
            "try activation=relu / norm=batch",
        ),
        (
            ["--model.activation", "relu", "--model.norm", "batch", "--model.optimizer.lr", "1e-6"],
            "likely cause: a learning rate too small (lr=1e-06): each step moves the weights by 10^-5.",
            "try lr=0.0001",
        ),
    ],
    ids=["sigmoid+residual, no norm", "lr=1e-6"],
)
def test_a_run_that_stops_learning_with_healthy_gradients_is_called_stalled_with_its_cause(tmp_path, args, cause, fix):
    said, run = fit(tmp_path, *args)
    (verdict,) = [line for line in said if "training stalled: loss " in line]
    assert "(chance 2.303)" in verdict
    assert cause in verdict
    assert verdict.endswith(fix)
    assert "vanishing" not in verdict
    (summary,) = [line for line in said if " metrics in " in line]
    assert "; gradients healthy; training stalled; metrics in " in summary
    assert column(read_metrics(run / "metrics.csv"), "health/stalled")[-1] == 1
    assert describe_health(health_summary(read_run(run / "metrics.csv"))) == "stalled"  # the sweep table's word


@pytest.mark.slow
@pytest.mark.parametrize("epochs", [5, 20], ids=["quick-start length", "four times longer"])
def test_a_run_that_learns_is_never_called_stalled(tmp_path, epochs):
    said, run = fit(
        tmp_path, "--model.activation", "relu", "--model.norm", "batch", "--trainer.max_epochs", str(epochs)
    )
    stalled = column(read_metrics(run / "metrics.csv"), "health/stalled")
    assert len(stalled) >= 10 * epochs // 5  # judged all along: every measurement says no
    assert set(stalled) == {0}
    assert not [line for line in said if "stalled" in line]
