"""The one exception type gradwatch raises for bad configuration."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """A configuration value that cannot work, raised before any training starts.

    It is a ``ValueError`` so plain ``except ValueError`` keeps working. ``param`` names the constructor argument
    that holds the bad value (``"activation"``); the CLI turns it into the flag the user typed
    (``--model.activation``).

    Args:
        message: What is wrong, the bad value and the valid choices.
        param: The argument that carried the bad value, if one did.

    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def unknown_choice(kind: str, value: object, choices: Iterable[str]) -> str:
    """Message for a name that is not among ``choices``, with the closest valid one when there is one."""
    choices = sorted(choices)
    message = f"unknown {kind} {value!r}; valid: {', '.join(choices)}"
    close = difflib.get_close_matches(str(value), choices, n=1)
    return f"{message} (did you mean {close[0]!r}?)" if close else message


def check_positive(owner: str, **values: int | float) -> None:
    """Raise :class:`ConfigError` for the first value that is not ``>= 1``."""
    for param, value in values.items():
        if value < 1:
            raise ConfigError(f"{owner}: {param} must be >= 1, got {value}", param=param)


def check_probability(owner: str, **values: float) -> None:
    """Raise :class:`ConfigError` for the first value outside ``[0, 1)``."""
    for param, value in values.items():
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{owner}: {param} must be in [0, 1), got {value}", param=param)
