"""Check a sweep's parameters against ``gradwatch fit``'s own parser, before the first trial."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradwatch.sweep.command import expand_command
from gradwatch.sweep.spec import SweepSpec


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
    ``metric.name`` is checked against the keys its model and monitors log.

    Returns:
        ``None`` when checked, else why nothing could be checked (the command does not run ``gradwatch``).

    Raises:
        SweepError: an unknown parameter name (with the closest valid one), a value the parser or the class
            rejects, or a metric the model never logs.
    """
    from gradwatch.cli.fit import FitChecker
    from gradwatch.errors import ConfigError

    def argv(params: dict[str, Any]) -> list[str] | None:
        return gradwatch_args(expand_command(spec.command, params, program=spec.program, args_json_file="args.json"))

    base = argv({})
    if base is None:
        return "parameters not checked: the command does not run gradwatch"
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
        _check_metric(spec, checker.logged_metrics(config))
    return None


def _check_metric(spec: SweepSpec, logged: tuple[list[str], list[str]] | None) -> None:
    assert spec.metric is not None
    if logged is None:
        return
    keys, namespaces = logged
    name = spec.metric.name
    if name in keys or name.startswith(tuple(namespaces)):
        return
    close = difflib.get_close_matches(name, keys, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    per_layer = f"; its monitors log {', '.join(n + '...' for n in namespaces)}" if namespaces else ""
    raise spec.error("metric.name", f"{name!r} is never logged{hint}; the model logs {', '.join(keys)}{per_layer}")
