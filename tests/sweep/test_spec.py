"""Sweep files: W&B's schema, checked before anything runs, with the key path of every error."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from gradwatch.sweep import SweepError, load_sweep
from gradwatch.sweep.spec import parse_sweep

SWEEPS = sorted(Path(__file__).parents[2].joinpath("sweeps").glob("*.yaml"))
COMMAND = ["${env}", "${interpreter}", "-m", "gradwatch", "fit", "${args}"]


def sweep(**overrides):
    raw = {"method": "grid", "parameters": {"model.depth": {"values": [2, 4]}}, "command": COMMAND, **overrides}
    return {k: v for k, v in raw.items() if v is not None}


def test_distributions_are_inferred_as_wandb_does():
    spec = parse_sweep(
        sweep(
            method="random",
            parameters={
                "a": {"values": [1, 2]},
                "b": {"value": "x"},
                "c": {"min": 1, "max": 4},
                "d": {"min": 0.1, "max": 0.5},
                "e": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
            },
        )
    )
    assert [p.distribution for p in spec.parameters.values()] == [
        "categorical", "constant", "int_uniform", "uniform", "log_uniform_values",
    ]  # fmt: skip
    assert list(spec.parameters) == ["a", "b", "c", "d", "e"]  # the file's order


def test_grid_enumerates_like_wandb():
    spec = parse_sweep(
        sweep(
            parameters={
                "a": {"values": ["relu", "tanh"]},
                "b": {"min": 2, "max": 4},  # int_uniform: inclusive
                "c": {"distribution": "q_uniform", "min": 0.0, "max": 0.3, "q": 0.1},  # arange: max excluded
                "d": {"value": 7},
            }
        )
    )
    assert spec.parameters["b"].grid() == [2, 3, 4]
    assert spec.parameters["c"].grid() == pytest.approx([0.0, 0.1, 0.2])
    assert spec.grid_size() == 2 * 3 * 3 * 1


def test_log_uniform_bounds_are_natural_logs():
    spec = parse_sweep(sweep(method="random", parameters={"lr": {"distribution": "log_uniform", "min": -9, "max": -2}}))
    assert spec.parameters["lr"].examples() == pytest.approx([math.exp(-9), math.exp(-2)])


def test_hyperband_bands_follow_wandb():
    def hb(**et):
        return parse_sweep(sweep(metric={"name": "val/acc"}, early_terminate={"type": "hyperband", **et}))

    assert hb(min_iter=3).early_terminate.min_iter == 3
    assert hb(min_iter=3).early_terminate.eta == 3
    # W&B: max_iter with s gives bands max_iter/eta, max_iter/eta², ...; the first rung is the smallest.
    band = hb(max_iter=27, s=2, eta=3).early_terminate
    assert (band.min_iter, band.max_iter) == (3, 27)
    assert hb(max_iter=6, s=3, eta=3).early_terminate.min_iter == 2  # bands under one iteration are dropped


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        ({"method": "hyperopt"}, "method", "valid: bayes, grid, random"),
        ({"method": None}, "method", "missing"),
        ({"methdo": "grid"}, "methdo", "did you mean 'method'"),
        ({"parameters": {}}, "parameters", "missing or empty"),
        ({"parameters": {"a": {"distribution": "gaussian", "min": 0, "max": 1}}}, "parameters.a.distribution",
         "unknown distribution 'gaussian'"),
        ({"parameters": {"a": {"min": 5, "max": 1}}}, "parameters.a.min", "min 5 is greater than max 1"),
        ({"parameters": {"a": {"min": 0.1, "max": 1.0}}}, "parameters.a",
         "grid search cannot enumerate the continuous distribution uniform"),
        ({"parameters": {"a": {"distribution": "uniform", "min": 0.1}}}, "parameters.a.max", "missing"),
        ({"parameters": {"a": {"values": []}}}, "parameters.a.values", "non-empty list"),
        ({"parameters": {"a": {"vals": [1]}}}, "parameters.a.vals", "did you mean 'values'"),
        ({"parameters": {"a": {"min": "x", "max": 3}}}, "parameters.a.min", "must be a number"),
        ({"parameters": {"model": {"parameters": {"depth": {"values": [1]}}}}}, "parameters.model",
         "name each one with dots"),
        ({"parameters": {"a": {"values": [1, 2], "probabilities": [0.5, 0.5]}}}, "parameters.a.probabilities",
         "grid search visits every value"),
        ({"method": "bayes", "parameters": {"a": {"min": 0.1, "max": 1.0}}}, "metric", "bayes search needs a metric"),
        ({"early_terminate": {"type": "hyperband", "min_iter": 3}}, "metric", "hyperband early termination needs"),
        ({"metric": {"name": "val/acc", "goal": "maximise"}}, "metric.goal", "did you mean 'maximize'"),
        ({"metric": {"goal": "maximize"}}, "metric.name", "missing"),
        ({"metric": {"name": "m"}, "early_terminate": {"type": "median"}}, "early_terminate.type", "'median'"),
        ({"metric": {"name": "m"}, "early_terminate": {"type": "hyperband"}}, "early_terminate", "needs min_iter"),
        ({"metric": {"name": "m"}, "early_terminate": {"type": "hyperband", "max_iter": 9}}, "early_terminate.s",
         "max_iter needs s"),
        ({"metric": {"name": "m"}, "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 1}},
         "early_terminate.eta", "must be >= 2"),
        ({"run_cap": 0}, "run_cap", "integer >= 1"),
        ({"command": ["python", "train.py", "${argz}"]}, "command[2]", "unknown macro '${argz}'"),
        ({"command": ["python", "train.py"]}, "command", "passes no parameters"),
        ({"command": ["${env}", "${interpreter}", "${program}", "${args}"]}, "program", "names no program"),
    ],
)  # fmt: skip
def test_bad_files_name_the_key(overrides, key, words):
    with pytest.raises(SweepError) as info:
        parse_sweep(sweep(**overrides), "bad.yaml")
    message = str(info.value)
    assert message.startswith(f"bad.yaml: {key}: "), message
    assert words in message, message


def test_distributions_only_wandb_samples_are_refused_by_the_local_engine():
    spec = parse_sweep(sweep(method="random", parameters={"a": {"distribution": "normal", "mu": 0, "sigma": 1}}))
    with pytest.raises(SweepError, match=r"parameters\.a\.distribution: 'normal' runs on W&B only"):
        spec.check_local()
    weighted = parse_sweep(sweep(method="random", parameters={"a": {"values": [1, 2], "probabilities": [0.9, 0.1]}}))
    with pytest.raises(SweepError, match="probabilities run on W&B only"):
        weighted.check_local()


def test_unreadable_files(tmp_path):
    with pytest.raises(SweepError, match="cannot read the sweep file"):
        load_sweep(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("method: [grid\n")
    with pytest.raises(SweepError, match="not valid YAML"):
        load_sweep(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- grid\n")
    with pytest.raises(SweepError, match="a sweep file is a mapping"):
        load_sweep(tmp_path / "list.yaml")


def test_name_defaults_to_the_file_stem(tmp_path):
    path = tmp_path / "depth-study.yaml"
    path.write_text(yaml.safe_dump(sweep()))
    assert load_sweep(path).name == "depth-study"
    path.write_text(yaml.safe_dump(sweep(name="mine")))
    assert load_sweep(path).name == "mine"


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_shipped_file_loads_says_its_question_and_runs_locally(path):
    spec = load_sweep(path)
    spec.check_local()
    assert path.read_text().startswith("# "), "each sweep file opens with a comment saying what question it answers"
    assert spec.metric is not None
    assert "--config" in spec.command
    assert spec.command.index("--config") < spec.command.index("${args}"), "a later --config resets the parameters"
