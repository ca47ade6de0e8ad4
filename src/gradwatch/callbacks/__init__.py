"""Lightning callbacks: thin adapters that wire :mod:`gradwatch.health` to a Trainer's hooks."""

from gradwatch.callbacks.activation_monitor import ActivationMonitor
from gradwatch.callbacks.gradient_monitor import GradientHealthError, GradientMonitor
from gradwatch.callbacks.preemption import Preempted, Preemption

__all__ = ["ActivationMonitor", "GradientHealthError", "GradientMonitor", "Preempted", "Preemption"]
