"""Lightning callbacks: thin adapters that wire :mod:`gradwatch.health` to a Trainer's hooks."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ActivationMonitor": "gradwatch.callbacks.activation_monitor",
    "GradientHealthError": "gradwatch.callbacks.gradient_monitor",
    "GradientMonitor": "gradwatch.callbacks.gradient_monitor",
}
__all__ = ["ActivationMonitor", "GradientHealthError", "GradientMonitor"]

if TYPE_CHECKING:
    from gradwatch.callbacks.activation_monitor import ActivationMonitor
    from gradwatch.callbacks.gradient_monitor import GradientHealthError, GradientMonitor


def __getattr__(name: str) -> Any:
    # Each monitor is imported on first use, so one does not pay for (or break on) the other.
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gradwatch.callbacks' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
