"""A trial's command line, expanded from the sweep file's ``command`` exactly as ``wandb agent`` expands it."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

_ENVVAR = re.compile(r"\$\{envvar:([A-Za-z0-9_]+)\}")


def macro_values(params: Mapping[str, Any]) -> dict[str, list[str]]:
    """The argument macros for one trial's parameter values, each a list of words (as ``wandb agent`` builds them).

    ``${args}`` is ``--name=value`` with Python's ``str`` of the value (``True``, ``0.001``), ``${args_json}`` one
    JSON word, ``${args_no_boolean_flags}`` drops false booleans and keeps true ones as bare flags.
    """
    flags, no_equals, no_booleans = [], [], []
    for name, value in params.items():
        flags.append(f"--{name}={value}")
        no_equals += [f"--{name}", str(value)]
        if isinstance(value, bool):
            no_booleans += [f"--{name}"] if value else []
        else:
            no_booleans.append(f"--{name}={value}")
    return {
        "args": flags,
        "args_no_equals": no_equals,
        "args_no_hyphens": [flag[2:] for flag in flags],
        "args_no_boolean_flags": no_booleans,
        "args_json": [json.dumps(dict(params))],
        "args_append_hydra": ["+" + flag[2:] for flag in flags],
        "args_override_hydra": ["++" + flag[2:] for flag in flags],
    }


def expand_command(
    command: Sequence[str],
    params: Mapping[str, Any],
    *,
    program: str | None = None,
    args_json_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """Expand a sweep ``command`` for one trial.

    Words that are exactly one macro become that macro's words; ``${envvar:NAME}`` is replaced anywhere in a word
    (by the variable's name when it is unset, as the W&B client does); every other word passes through.

    Args:
        command: The sweep file's ``command``.
        params: The trial's parameter values by dotted name, in the file's order.
        program: The file's ``program`` (``${program}``).
        args_json_file: Where the trial's ``${args_json}`` was written (``${args_json_file}``).
        environ: Environment for ``${envvar:...}``; ``os.environ`` when ``None``.

    Example::

        >>> expand_command(["${env}", "${interpreter}", "-m", "gradwatch", "fit", "${args}"], {"model.depth": 8})
        ['/usr/bin/env', 'python', '-m', 'gradwatch', 'fit', '--model.depth=8']
    """
    environ = os.environ if environ is None else environ
    macros = {
        **macro_values(params),
        # `${interpreter}` is the word `python`, looked up on PATH by `env`, not this process's interpreter.
        "env": ["/usr/bin/env"],
        "interpreter": ["python"],
        "program": [str(program)],
        "args_json_file": [str(args_json_file)],
    }
    words: list[str] = []
    for word in command:
        word = _ENVVAR.sub(lambda m: environ.get(m.group(1), m.group(1)), str(word))
        if word.startswith("${") and word.endswith("}"):
            words += macros.get(word[2:-1]) or []
        else:
            words.append(word)
    return words
