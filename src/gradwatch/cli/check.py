"""Check a sweep's parameters against ``gradwatch fit``'s own parser, before the first trial."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradwatch.rundir import (
    ACT_DEAD,
    ACT_MEAN,
    ACT_SATURATED,
    ACT_STD,
    GRAD_HIST,
    GRAD_NONFINITE,
    GRAD_NORM,
    PARAM_NORM,
    UPDATE_RATIO,
)
from gradwatch.sweep.command import expand_command
from gradwatch.sweep.spec import SweepSpec

if TYPE_CHECKING:
    from gradwatch.cli.fit import FitChecker

#: The keys that end in a layer's name (``grad/norm/<layer>``), by the monitor that logs them.
PER_LAYER = {
    "GradientMonitor": (GRAD_NORM, UPDATE_RATIO, PARAM_NORM, GRAD_NONFINITE, GRAD_HIST),
    "ActivationMonitor": (ACT_DEAD, ACT_SATURATED, ACT_MEAN, ACT_STD),
}
#: Layer names an error shows when the model has no layer of the name asked for.
SHOWN_LAYERS = 6


def gradwatch_args(words: Sequence[str]) -> list[str] | None:
    """The arguments after ``gradwatch`` (``fit ...``) in a trial's command line, or ``None`` if it runs no gradwatch.

    Both ``python -m gradwatch ...`` and the ``gradwatch`` script count.
    """
    for i, word in enumerate(words):
        module = word == "gradwatch" and i > 0 and words[i - 1] == "-m"
        script = Path(word).name == "gradwatch" and (i == 0 or Path(words[i - 1]).name == "env")
        if module or script:
            return list(words[i + 1 :])
    return None


def check_parameters(spec: SweepSpec) -> str | None:
    """Parse every parameter value of ``spec`` with ``gradwatch fit``'s parser and check ``metric.name``.

    Each value is parsed (and its model, DataModule and callbacks instantiated) on the file's command line, alone,
    so an error names exactly the parameter and value behind it; then the first combination is parsed whole and
    ``metric.name`` is checked against the keys its model and monitors log, and a per-layer key
    (``grad/norm/<layer>``) against the layers of that combination's model.

    Returns:
        ``None`` when checked, else why nothing could be checked (the command does not run ``gradwatch``).

    Raises:
        SweepError: an unknown parameter name (with the closest valid one), a value the parser or the class
            rejects, a metric the model never logs, or a per-layer metric of a layer the model does not have.
    """

    def argv(params: dict[str, Any]) -> list[str] | None:
        return gradwatch_args(expand_command(spec.command, params, program=spec.program, args_json_file="args.json"))

    base = argv({})
    if base is None:
        return "parameters not checked: the command does not run gradwatch"
    # Only now: Lightning takes seconds to import, and a command that runs another program needs none of it.
    from gradwatch.cli.fit import FitChecker
    from gradwatch.errors import ConfigError

    try:
        checker = FitChecker(base)
        base_config = checker.check(base)
    except ConfigError as exc:
        raise spec.error("command", f"gradwatch {' '.join(base)}: {exc}") from None
    options = checker.options(base_config)
    for p in spec.parameters.values():
        if p.name not in options:
            close = difflib.get_close_matches(p.name, sorted(options), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise spec.error(f"parameters.{p.name}", f"gradwatch {base[0]} has no option --{p.name}{hint}")
        for value in p.examples():
            try:
                checker.check(argv({p.name: value}))
            except ConfigError as exc:
                raise spec.error(f"parameters.{p.name}", f"value {value!r}: {exc}") from None
    first = {p.name: p.examples()[0] for p in spec.parameters.values()}
    try:
        config = checker.check(argv(first))
    except ConfigError as exc:
        raise spec.error("parameters", f"the first combination {first}: {exc}") from None
    if spec.metric is not None:
        _check_metric(spec, checker, config, first)
    return None


def _check_metric(spec: SweepSpec, checker: FitChecker, config: Any, first: dict[str, Any]) -> None:
    assert spec.metric is not None
    logged = checker.logged_metrics(config)
    if logged is None:
        return
    keys, namespaces = logged
    name = spec.metric.name
    if name in keys:
        return
    if name.startswith(tuple(namespaces)):
        _check_layer(spec, _monitored_layers(checker), first)
        return
    close = difflib.get_close_matches(name, keys, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    per_layer = f"; its monitors log {', '.join(n + '...' for n in namespaces)}" if namespaces else ""
    raise spec.error("metric.name", f"{name!r} is never logged{hint}; the model logs {', '.join(keys)}{per_layer}")


def _check_layer(spec: SweepSpec, layers: dict[str, list[str]], first: dict[str, Any]) -> None:
    """Refuse a per-layer key (``grad/norm/<layer>``) naming a layer its monitor would not find in the model."""
    assert spec.metric is not None
    name = spec.metric.name
    for monitor, prefixes in PER_LAYER.items():
        prefix = next((p for p in prefixes if name.startswith(p)), None)
        if prefix is None or monitor not in layers:
            continue
        layer, valid = name.removeprefix(prefix), layers[monitor]
        if layer in valid:
            return
        close = difflib.get_close_matches(layer, valid, n=1)
        hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
        shown = ", ".join(valid[:SHOWN_LAYERS]) + (f", ... ({len(valid)} in all)" if len(valid) > SHOWN_LAYERS else "")
        values = " ".join(f"{k}={v}" for k, v in first.items() if k.startswith("model."))
        model = f"the model ({values})" if values else "the model"
        raise spec.error(
            "metric.name",
            f"{name!r} is never logged: {model} has no layer {layer!r} that {monitor} watches{hint}; it watches "
            f"{shown or 'none'}",
        )


def _monitored_layers(checker: FitChecker) -> dict[str, list[str]]:
    """The layer names each monitor of the last checked run would log under: ``{"GradientMonitor": [...], ...}``.

    The names are module paths (:func:`gradwatch.health.layers.find_layers`, as the monitor calls it, in the order the
    model registers them), so the model is built first, as the Trainer would build it.
    """
    from gradwatch.callbacks import ActivationMonitor, GradientMonitor
    from gradwatch.health.activations import find_activations
    from gradwatch.health.layers import find_layers

    # FitChecker keeps the last check's instances (the first combination's) for `logged_metrics`, which built its data.
    init = checker.instantiated
    model = init.get("model")
    model.configure_model()
    layers = {}
    gradients = init.get("gradients")
    if isinstance(gradients, GradientMonitor):
        c = gradients.config
        # Every parameter, frozen ones too: a backbone unfrozen after a few epochs is watched from then on.
        found = find_layers(model, include=c.include, exclude=c.exclude, group_depth=c.group_depth)
        layers["GradientMonitor"] = [layer.name for layer in found]
    if any(isinstance(callback, ActivationMonitor) for callback in init.get("trainer.callbacks") or []):
        layers["ActivationMonitor"] = [layer.name for layer in find_activations(model)]
    return layers
