"""Every parameter name and value is checked with ``gradwatch fit``'s own parser before the first trial."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradwatch.cli.check import check_parameters, gradwatch_args
from gradwatch.sweep import SweepError, load_sweep
from gradwatch.sweep.spec import parse_sweep

CONFIGS = Path(__file__).parents[2] / "sweeps" / "configs"


def spec(parameters, metric="val/acc", base="cnn-digits.yaml", extra=()):
    command = ["${env}", "${interpreter}", "-m", "gradwatch", "fit", "--config", str(CONFIGS / base), *extra, "${args}"]
    raw = {"method": "grid", "metric": {"name": metric, "goal": "maximize"}, "parameters": parameters}
    return parse_sweep({**raw, "command": command}, "study.yaml")


@pytest.mark.parametrize("path", sorted(CONFIGS.parent.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_file_passes_the_dry_parse(path):
    assert check_parameters(load_sweep(path)) is None


def test_a_valid_sweep_is_checked():
    assert check_parameters(spec({"model.depth": {"values": [2, 4]}, "model.activation": {"values": ["relu"]}})) is None


@pytest.mark.parametrize(
    ("parameters", "metric", "words"),
    [
        ({"model.dept": {"values": [2]}}, "val/acc", "parameters.model.dept: gradwatch fit has no option --model.dept "
         "(did you mean 'model.depth'?)"),
        ({"trainer.max_epoch": {"value": 2}}, "val/acc", "did you mean 'trainer.max_epochs'?"),
        ({"model.depth": {"values": [4, "deep"]}}, "val/acc", "parameters.model.depth: value 'deep': "),
        ({"model.activation": {"values": ["relu", "relux"]}}, "val/acc",
         "parameters.model.activation: value 'relux': unknown activation 'relux'"),
        ({"model.depth": {"min": 0, "max": 3}}, "val/acc", "parameters.model.depth: value 0: CNN: depth must be >= 1"),
        ({"model.depth": {"values": [2]}}, "val/accuracy", "metric.name: 'val/accuracy' is never logged "
         "(did you mean 'val/acc'?)"),
    ],
)  # fmt: skip
def test_bad_names_values_and_metrics_fail_before_any_trial(parameters, metric, words):
    with pytest.raises(SweepError) as info:
        check_parameters(spec(parameters, metric))
    assert words in str(info.value), str(info.value)


def test_monitor_keys_count_as_logged_only_when_the_monitor_is_on():
    assert check_parameters(spec({"model.depth": {"values": [2]}}, "health/attenuation")) is None
    assert check_parameters(spec({"model.depth": {"values": [2]}}, "grad/norm_total")) is None
    with pytest.raises(SweepError, match="'grad/norm_total' is never logged"):
        check_parameters(spec({"model.depth": {"values": [2]}}, "grad/norm_total", extra=["--gradients", "null"]))


def test_a_per_layer_metric_names_a_layer_its_monitor_watches_in_the_first_combination():
    depth = {"model.depth": {"values": [2, 4]}}
    for key in ("grad/norm/backbone.blocks.1.conv", "param/norm/head", "grad/update_ratio/backbone.stem.conv"):
        assert check_parameters(spec(depth, key)) is None
    # The base config's depth is 8; the first combination's model (depth 2) has no fifth block.
    with pytest.raises(SweepError) as info:
        check_parameters(spec(depth, "grad/norm/backbone.blocks.5.conv"))
    assert str(info.value) == (
        "study.yaml: metric.name: 'grad/norm/backbone.blocks.5.conv' is never logged: the model (model.depth=2) has "
        "no layer 'backbone.blocks.5.conv' that GradientMonitor watches (did you mean "
        "'grad/norm/backbone.blocks.1.conv'?); it watches backbone.stem.conv, backbone.stem.norm, "
        "backbone.blocks.0.conv, backbone.blocks.0.norm, backbone.blocks.1.conv, backbone.blocks.1.norm, ... (7 in all)"
    )
    # The layers are the monitor's: grouped by --gradients.group_depth, without what it excludes.
    grouped = ["--gradients.group_depth=3"]
    assert check_parameters(spec(depth, "grad/norm/backbone.blocks.1", extra=grouped)) is None
    with pytest.raises(SweepError, match=r"'grad/norm/head' is never logged: the model .* no layer 'head' that"):
        check_parameters(spec(depth, "grad/norm/head", extra=["--gradients.exclude=[head]"]))
    activations = ["--trainer.callbacks+=ActivationMonitor"]
    assert check_parameters(spec(depth, "act/dead/backbone.blocks.1.act", extra=activations)) is None
    with pytest.raises(SweepError) as info:
        check_parameters(spec(depth, "act/dead/nope", extra=activations))
    assert "no layer 'nope' that ActivationMonitor watches; it watches backbone.stem.act, " in str(info.value)


def test_the_metric_depends_on_the_task_the_data_gives_the_model():
    # The adding problem is a regression: an RNN on it logs losses, no accuracy.
    rnn = ["--model", "RNN", "--data", "AddingProblemDataModule"]
    with pytest.raises(SweepError, match="'val/acc' is never logged; the model logs train/loss, val/loss, test/loss"):
        check_parameters(spec({"model.cell": {"values": ["rnn", "lstm"]}}, extra=rnn))
    assert check_parameters(spec({"model.cell": {"values": ["rnn", "lstm"]}}, "val/loss", extra=rnn)) is None


def test_a_broken_base_command_is_named():
    with pytest.raises(SweepError, match=r"study\.yaml: command: gradwatch fit --config .*missing\.yaml"):
        check_parameters(spec({"model.depth": {"values": [2]}}, base="missing.yaml"))


def test_other_programs_are_not_parsed():
    other = parse_sweep(
        {"method": "grid", "parameters": {"x": {"values": [1]}}, "command": ["python", "train.py", "${args}"]}
    )
    assert check_parameters(other) == "parameters not checked: the command does not run gradwatch"


@pytest.mark.parametrize(
    ("words", "args"),
    [
        (["/usr/bin/env", "python", "-m", "gradwatch", "fit", "--a=1"], ["fit", "--a=1"]),
        (["/usr/bin/env", "gradwatch", "fit"], ["fit"]),
        ([".venv/bin/gradwatch", "fit"], ["fit"]),
        (["python", "train.py", "--gradwatch=1"], None),
        (["python", "-m", "other", "gradwatch"], None),
    ],
)
def test_gradwatch_args_finds_the_command_line(words, args):
    assert gradwatch_args(words) == args
