"""The W&B workspace of ``gradwatch dashboard``, built as data with ``wandb-workspaces``.

Building needs no network: :func:`build_workspace` returns a ``wandb_workspaces.workspaces.Workspace``, and
:func:`workspace_json` its spec, which the library reads back. :func:`save_workspace` is the only step that talks to
W&B. Every key is one of gradwatch's metric keys (``grad/norm/<layer>``, ``health/vanishing``...).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws

from gradwatch.errors import ConfigError, unknown_choice
from gradwatch.rundir import (
    ACT_DEAD,
    ACT_SATURATED,
    ATTENUATION,
    GOALS,
    GRAD_NORM,
    GRAD_NORM_TOTAL,
    PARAM_NORM,
    UPDATE_RATIO,
    VERDICTS,
    verdict_key,
)

#: Lightning's ``WandbLogger`` logs every metric against the optimizer step under this key.
STEP = "trainer/global_step"
#: A GAN's networks: ``GradientMonitor`` logs each one's totals under its name (``grad/norm_total/generator``).
GAN_NETWORKS = ("generator", "discriminator")


class _FlatConfigColumn(wr.ParallelCoordinatesPlotColumn):
    """A parallel-coordinates axis on a config key whose name holds dots, such as ``model.depth``.

    Sweep parameters reach a run's config as flat keys (``{"model.depth": {"value": 8}}``), which W&B addresses as
    ``config:model.depth.value``; the library writes every dotted name as a nested one (``config:model.value.depth``),
    which a sweep's runs do not have.
    """

    def _to_model(self):
        column = super()._to_model()
        column.accessor = f"config:{self.metric.name}.value"
        return column


def build_workspace(
    entity: str,
    project: str,
    *,
    name: str | None = None,
    layers: Sequence[str] = (),
    parameters: Sequence[str] = (),
    metric: str | None = None,
    goal: str = "minimize",
    sweep_id: str | None = None,
    run_group: str | None = None,
    gan: bool | None = None,
) -> ws.Workspace:
    """A W&B workspace of gradient health, built offline.

    Sections: **Gradient flow** (per-layer gradient norms, log scale, and the total; update-to-parameter ratios;
    parameter norms; gradient-flow images), **Health** (layers per verdict at each step, and the attenuation),
    **Activations** (dead and saturated fractions), **Sweep overview** when ``parameters`` are given (parallel
    coordinates from the swept parameters to the metric and the attenuation, parameter importance, a run comparer)
    and **GAN** for a GAN (losses, discriminator scores, each network's total gradient norm). The runs table shows
    the parameters, the metric and the health readings, best run first.

    Args:
        entity: W&B entity (user or team) that owns the workspace.
        project: W&B project of the runs.
        name: The workspace's name; ``gradwatch: <sweep, group or project>`` when ``None``.
        layers: The measured layers, input → output (:func:`gradwatch.rundir.read_layers`). Per-layer panels
            list one line per layer in this order. Empty: the panels select their keys by regular expression
            (``^grad/norm/.*``), and W&B then lists the layers alphabetically.
        parameters: The swept parameters' dotted names (``model.depth``), as the sweep file writes them.
        metric: The key the sweep optimizes (``val/acc``).
        goal: ``minimize`` or ``maximize`` ``metric``; sorts the runs table.
        sweep_id: Only the runs of this W&B sweep.
        run_group: Only the runs of this W&B run group. A local sweep synced with ``wandb sync`` is the group
            named after the sweep.
        gan: Add the GAN section and read totals per network; ``None``: when every layer belongs to a
            ``generator`` or a ``discriminator``.

    Returns:
        The workspace; :func:`save_workspace` saves it.

    Raises:
        ConfigError: ``goal`` is neither ``minimize`` nor ``maximize``.

    Example::

        >>> workspace = build_workspace(
        ...     "my-team", "gradwatch", layers=["stem.conv", "head"], parameters=["model.depth"],
        ...     metric="val/acc", goal="maximize", run_group="quickstart",
        ... )
        >>> [section.name for section in workspace.sections]
        ['Gradient flow', 'Health', 'Activations', 'Sweep overview']
    """
    if goal not in GOALS:
        raise ConfigError(unknown_choice("goal", goal, GOALS), param="goal")
    layers = list(layers)
    if gan is None:
        gan = bool(layers) and all(layer.split(".", 1)[0] in GAN_NETWORKS for layer in layers)
    # A GAN's networks are measured apart: their totals and attenuations carry the network's name.
    networks = GAN_NETWORKS if gan else ("",)
    sections = [_gradient_flow(layers, networks, gan=gan), _health(networks), _activations()]
    if parameters:
        sections.append(_sweep_overview(parameters, metric, networks))
    if gan:
        sections.append(_gan())
    return ws.Workspace(
        entity=entity,
        project=project,
        name=name or f"gradwatch: {run_group or sweep_id or project}",
        sections=sections,
        settings=ws.WorkspaceSettings(x_axis=STEP),
        runset_settings=_runset(parameters, metric, goal, networks, sweep_id=sweep_id, run_group=run_group),
    )


def workspace_json(workspace: ws.Workspace) -> str:
    """The workspace's spec as JSON: the view W&B stores, with its entity, project and name, built offline.

    ``wandb_workspaces.workspaces.internal.View.model_validate_json`` reads it back.
    """
    return workspace._to_model().model_dump_json(by_alias=True, exclude_none=True, indent=2)


def save_workspace(workspace: ws.Workspace) -> str:
    """Save ``workspace`` to W&B as a view of its project and return the view's URL; the only network step.

    Raises:
        wandb.errors.UsageError: no W&B credentials on this machine.
        wandb.errors.CommError: W&B could not be reached, or refused the credentials or the view.
    """
    workspace.save()
    return workspace.url


def _gradient_flow(layers: list[str], networks: Sequence[str], *, gan: bool) -> ws.Section:
    panels = [
        _per_layer("gradient norm per layer (input → output)", GRAD_NORM, layers, log_y=True),
        _per_layer("update / parameter ratio per layer", UPDATE_RATIO, layers, log_y=True),
        _per_layer("parameter norm per layer", PARAM_NORM, layers, log_y=True),
        wr.MediaBrowser(
            title="gradient flow: |grad| per layer, and layer × step",
            media_keys=[f"grad/flow/{kind}{_suffix(n)}" for n in networks for kind in ("bars", "heatmap")],
        ),
    ]
    if not gan:  # a GAN's totals are per network, beside its losses
        panels.insert(1, _line("total gradient norm", [GRAD_NORM_TOTAL], log_y=True))
    return _section("Gradient flow", panels)


def _health(networks: Sequence[str]) -> ws.Section:
    return _section(
        "Health",
        [
            _line("layers per verdict", [verdict_key(verdict) for verdict in VERDICTS]),
            _line("attenuation: decades lost from the last layer to the first", _attenuations(networks)),
        ],
    )


def _activations() -> ws.Section:
    # Activation layers are not the layers that own parameters (`blocks.0.act`, not `blocks.0.conv`): by pattern.
    return _section(
        "Activations",
        [
            _per_layer("dead fraction (ReLU family)", ACT_DEAD, [], range_y=(0, 1)),
            _per_layer("saturated fraction (sigmoid, tanh)", ACT_SATURATED, [], range_y=(0, 1)),
        ],
    )


def _sweep_overview(parameters: Sequence[str], metric: str | None, networks: Sequence[str]) -> ws.Section:
    outcomes = list(dict.fromkeys([*([metric] if metric else []), *_attenuations(networks)]))
    columns = [_FlatConfigColumn(metric=wr.Config(p)) for p in parameters]
    columns += [wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(key)) for key in outcomes]
    panels: list = [wr.ParallelCoordinatesPlot(title="swept parameters → outcome", columns=columns)]
    if metric:
        panels.append(wr.ParameterImportancePlot(with_respect_to=metric))
    panels.append(wr.RunComparer(diff_only=True))
    return _section("Sweep overview", panels, columns=1)


def _gan() -> ws.Section:
    return _section(
        "GAN",
        [
            _line("losses", ["train/d_loss", "train/g_loss"]),
            _line("discriminator scores on held-out real and fixed-seed fake images", ["val/d_real", "val/d_fake"]),
            _line("total gradient norm per network", [f"{GRAD_NORM_TOTAL}/{n}" for n in GAN_NETWORKS], log_y=True),
            wr.MediaBrowser(title="samples from fixed latents, per validation", media_keys=["val/samples"]),
        ],
    )


def _runset(
    parameters: Sequence[str],
    metric: str | None,
    goal: str,
    networks: Sequence[str],
    *,
    sweep_id: str | None,
    run_group: str | None,
) -> ws.RunsetSettings:
    filters = []
    if sweep_id:
        filters.append(ws.Metric("Sweep") == sweep_id)
    if run_group:
        filters.append(ws.Metric("Group") == run_group)
    summaries = [*([metric] if metric else []), *map(verdict_key, VERDICTS), *_attenuations(networks)]
    # Runs-table columns are `config:<key>.value`: the parameters are flat keys (see _FlatConfigColumn).
    columns = [f"config:{p}.value" for p in parameters] + [f"summary:{key}" for key in dict.fromkeys(summaries)]
    settings = ws.RunsetSettings(filters=filters, pinned_columns=columns)
    if metric:
        settings.order = [ws.Ordering(ws.Summary(metric), ascending=goal == "minimize")]
    return settings


def _per_layer(
    title: str,
    prefix: str,
    layers: list[str],
    *,
    log_y: bool | None = None,
    range_y: tuple[float | None, float | None] = (None, None),
) -> wr.LinePlot:
    """One line per layer under ``prefix``, in ``layers``' order; every key under it when ``layers`` is empty."""
    if layers:
        return _line(title, [prefix + layer for layer in layers], log_y=log_y, range_y=range_y)
    return wr.LinePlot(
        title=title,
        x=wr.Metric(STEP),
        metric_regex=f"^{re.escape(prefix)}.*",
        log_y=log_y,
        range_y=range_y,
    )


def _line(
    title: str,
    keys: Sequence[str],
    *,
    log_y: bool | None = None,
    range_y: tuple[float | None, float | None] = (None, None),
) -> wr.LinePlot:
    # Keys as `wr.Metric`, which is how the library reads them back, so a spec round-trips to an equal workspace.
    return wr.LinePlot(title=title, x=wr.Metric(STEP), y=[wr.Metric(key) for key in keys], log_y=log_y, range_y=range_y)


def _section(name: str, panels: list, *, columns: int = 2) -> ws.Section:
    # Rows enough for every panel: W&B pages the rest of a section away.
    layout = ws.SectionLayoutSettings(columns=columns, rows=math.ceil(len(panels) / columns))
    return ws.Section(name=name, panels=panels, is_open=True, layout_settings=layout)


def _attenuations(networks: Sequence[str]) -> list[str]:
    return [ATTENUATION + _suffix(n) for n in networks]


def _suffix(network: str) -> str:
    return f"/{network}" if network else ""
