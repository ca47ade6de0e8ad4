"""The W&B workspace of ``gradwatch dashboard``, built offline: sections, keys, runs, and the spec's round trip."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws
from wandb_workspaces.workspaces import internal

from gradwatch.errors import ConfigError
from gradwatch.report.workspace import STEP, build_workspace, workspace_json
from gradwatch.sweep.spec import load_sweep

SWEEPS = Path(__file__).parents[2] / "sweeps"
# Input → output, which is not alphabetical: a panel that sorted the keys would put `blocks.10` before `blocks.2`.
LAYERS = ["stem.conv", "blocks.2.conv", "blocks.10.conv", "head"]
GAN_LAYERS = ["generator.stem.0", "generator.to_image.0", "discriminator.from_image.conv", "discriminator.head"]


@pytest.fixture(scope="module")
def quickstart():
    return load_sweep(SWEEPS / "quickstart.yaml")


@pytest.fixture
def workspace(quickstart):
    return build_workspace(
        "my-team",
        "gradwatch",
        layers=LAYERS,
        parameters=list(quickstart.parameters),
        metric=quickstart.metric.name,
        goal=quickstart.metric.goal,
        run_group=quickstart.name,
    )


def section(workspace: ws.Workspace, name: str) -> ws.Section:
    return next(s for s in workspace.sections if s.name == name)


def plot(workspace: ws.Workspace, section_name: str, title_start: str):
    return next(p for p in section(workspace, section_name).panels if (p.title or "").startswith(title_start))


def y_keys(line: wr.LinePlot) -> list[str]:
    return [metric.name for metric in line.y]


def runset(workspace: ws.Workspace) -> internal.Runset:
    return workspace._to_model().spec.section.run_sets[0]


def test_a_sweep_gets_every_section_but_the_gan(workspace):
    assert workspace.entity == "my-team"
    assert workspace.project == "gradwatch"
    assert workspace.name == "gradwatch: quickstart"
    assert [s.name for s in workspace.sections] == ["Gradient flow", "Health", "Activations", "Sweep overview"]


def test_gradient_flow_draws_each_layer_input_to_output_on_a_log_scale(workspace):
    norms = plot(workspace, "Gradient flow", "gradient norm per layer")
    assert y_keys(norms) == [f"grad/norm/{layer}" for layer in LAYERS]
    assert norms.log_y is True
    assert norms.x.name == STEP
    assert y_keys(plot(workspace, "Gradient flow", "total gradient norm")) == ["grad/norm_total"]
    ratios = plot(workspace, "Gradient flow", "update / parameter ratio")
    assert y_keys(ratios) == [f"grad/update_ratio/{layer}" for layer in LAYERS]
    params = plot(workspace, "Gradient flow", "parameter norm")
    assert y_keys(params) == [f"param/norm/{layer}" for layer in LAYERS]
    assert ratios.log_y is params.log_y is True
    assert plot(workspace, "Gradient flow", "gradient flow").media_keys == ["grad/flow/bars", "grad/flow/heatmap"]


def test_without_layers_the_panels_select_their_keys_by_pattern():
    workspace = build_workspace("my-team", "gradwatch")
    norms = plot(workspace, "Gradient flow", "gradient norm per layer")
    assert norms.y == []
    assert norms.metric_regex == "^grad/norm/.*"
    # The total is a key of its own: the per-layer pattern leaves it out.
    pattern = re.compile(norms.metric_regex)
    assert pattern.match("grad/norm/blocks.0.conv")
    assert not pattern.match("grad/norm_total")
    assert plot(workspace, "Gradient flow", "parameter norm").metric_regex == "^param/norm/.*"


def test_health_counts_layers_per_verdict_and_shows_the_attenuation(workspace):
    verdicts = plot(workspace, "Health", "layers per verdict")
    assert y_keys(verdicts) == ["health/vanishing", "health/exploding", "health/nonfinite", "health/stalled"]
    assert verdicts.x.name == STEP
    assert y_keys(plot(workspace, "Health", "attenuation")) == ["health/attenuation"]


def test_activations_are_fractions_by_pattern(workspace):
    dead = plot(workspace, "Activations", "dead")
    saturated = plot(workspace, "Activations", "saturated")
    assert (dead.metric_regex, saturated.metric_regex) == ("^act/dead/.*", "^act/saturated/.*")
    assert dead.range_y == saturated.range_y == (0, 1)


def test_the_sweep_overview_goes_from_the_swept_parameters_to_the_metric_and_attenuation(workspace):
    overview = section(workspace, "Sweep overview")
    coordinates, importance, comparer = overview.panels
    assert isinstance(coordinates, wr.ParallelCoordinatesPlot)
    # Sweep parameters are flat config keys (`{"model.norm": {"value": ...}}`), addressed as `config:<key>.value`.
    assert [column.accessor for column in coordinates._to_model().config.columns] == [
        "config:model.activation.value",
        "config:model.norm.value",
        "config:model.residual.value",
        "summary:val/acc",
        "summary:health/attenuation",
    ]
    assert isinstance(importance, wr.ParameterImportancePlot)
    assert importance.with_respect_to == "val/acc"
    assert isinstance(comparer, wr.RunComparer)


def test_the_runs_are_the_sweep_group_best_first(workspace):
    runs = runset(workspace)
    assert runs.filters["filters"] == [
        {"key": {"section": "run", "name": "group"}, "op": "=", "value": "quickstart", "disabled": False}
    ]
    # val/acc is maximized: highest first.
    assert [(key.key.section, key.key.name, key.ascending) for key in runs.sort.keys] == [("summary", "val/acc", False)]
    assert workspace.runset_settings.pinned_columns == [
        "run:displayName",
        "config:model.activation.value",
        "config:model.norm.value",
        "config:model.residual.value",
        "summary:val/acc",
        "summary:health/vanishing",
        "summary:health/exploding",
        "summary:health/nonfinite",
        "summary:health/stalled",
        "summary:health/attenuation",
    ]


def test_a_w_and_b_sweep_is_selected_by_its_id():
    workspace = build_workspace("my-team", "gradwatch", sweep_id="k3x9q2ab", parameters=["model.depth"])
    assert workspace.name == "gradwatch: k3x9q2ab"
    assert runset(workspace).filters["filters"] == [
        {"key": {"section": "run", "name": "sweep"}, "op": "=", "value": "k3x9q2ab", "disabled": False}
    ]
    # Without a metric there is nothing to rank parameters against.
    assert [type(p) for p in section(workspace, "Sweep overview").panels] == [
        wr.ParallelCoordinatesPlot,
        wr.RunComparer,
    ]


def test_a_project_without_a_sweep_has_no_overview_and_no_filter():
    workspace = build_workspace("my-team", "gradwatch")
    assert workspace.name == "gradwatch: gradwatch"
    assert [s.name for s in workspace.sections] == ["Gradient flow", "Health", "Activations"]
    assert runset(workspace).filters["filters"] == []


def test_the_gan_section_comes_with_a_gan_only():
    gan = build_workspace("my-team", "gradwatch", layers=GAN_LAYERS)
    assert [s.name for s in gan.sections] == ["Gradient flow", "Health", "Activations", "GAN"]
    assert y_keys(plot(gan, "GAN", "losses")) == ["train/d_loss", "train/g_loss"]
    assert y_keys(plot(gan, "GAN", "discriminator scores")) == ["val/d_real", "val/d_fake"]
    totals = plot(gan, "GAN", "total gradient norm per network")
    assert y_keys(totals) == ["grad/norm_total/generator", "grad/norm_total/discriminator"]
    assert plot(gan, "GAN", "samples").media_keys == ["val/samples"]  # logged by GAN after each validation
    assert totals.log_y is True
    # Each network is measured apart: its attenuation and flow images carry its name, and there is no plain total.
    assert y_keys(plot(gan, "Health", "attenuation")) == [
        "health/attenuation/generator",
        "health/attenuation/discriminator",
    ]
    assert "grad/flow/heatmap/generator" in plot(gan, "Gradient flow", "gradient flow").media_keys
    assert not any((p.title or "").startswith("total") for p in section(gan, "Gradient flow").panels)

    assert "GAN" not in [s.name for s in build_workspace("my-team", "gradwatch", layers=LAYERS).sections]
    assert "GAN" in [s.name for s in build_workspace("my-team", "gradwatch", gan=True).sections]


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_sweep_file_gets_an_axis_per_swept_parameter(path):
    spec = load_sweep(path)
    workspace = build_workspace(
        "my-team", "gradwatch", parameters=list(spec.parameters), metric=spec.metric.name, run_group=spec.name
    )
    coordinates = section(workspace, "Sweep overview").panels[0]
    accessors = [column.accessor for column in coordinates._to_model().config.columns]
    assert accessors[: len(spec.parameters)] == [f"config:{name}.value" for name in spec.parameters]
    assert accessors[len(spec.parameters)] == f"summary:{spec.metric.name}"


def test_the_spec_is_built_offline_and_round_trips_through_the_library(workspace, quickstart, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("building a workspace must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    text = workspace_json(workspace)
    assert json.loads(text)["displayName"] == "gradwatch: quickstart"

    view = internal.View.model_validate_json(text)
    assert view.model_dump_json(by_alias=True, exclude_none=True, indent=2) == text
    back = ws.Workspace._from_model(view)
    assert (back.entity, back.project, back.name) == (workspace.entity, workspace.project, workspace.name)
    assert back.settings == workspace.settings
    assert back.runset_settings == workspace.runset_settings
    assert back.sections[:3] == workspace.sections[:3]
    coordinates, *others = section(workspace, "Sweep overview").panels
    coordinates_back, *others_back = section(back, "Sweep overview").panels
    assert others_back == others
    assert [c.metric for c in coordinates_back.columns] == [c.metric for c in coordinates.columns]
    assert coordinates_back.columns[0].metric == wr.Config("model.activation")


def test_the_library_still_writes_dotted_config_keys_as_nested():
    # Why workspace.py has its own config column: when this fails, the library addresses flat keys itself.
    column = wr.ParallelCoordinatesPlotColumn(metric=wr.Config("model.depth"))
    assert column._to_model().accessor == "config:model.value.depth"


def test_a_goal_other_than_minimize_or_maximize_is_refused():
    with pytest.raises(ConfigError, match="unknown goal 'max'; valid: maximize, minimize"):
        build_workspace("my-team", "gradwatch", metric="val/acc", goal="max")
