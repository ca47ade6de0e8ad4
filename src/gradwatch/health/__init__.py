"""Trainer-free gradient health: layers in forward order, fused statistics, verdicts and advice.

Nothing here imports Lightning: :mod:`gradwatch.callbacks` wires these objects to a Trainer's hooks, and the same
objects work in a plain PyTorch loop.
"""

from gradwatch.health.advice import advise
from gradwatch.health.layers import Layer, find_layers, forward_order
from gradwatch.health.stats import GradientStatistics, Measurement
from gradwatch.health.verdicts import Finding, HealthDetector, StallDetector, Verdict

__all__ = [
    "Finding",
    "GradientStatistics",
    "HealthDetector",
    "Layer",
    "Measurement",
    "StallDetector",
    "Verdict",
    "advise",
    "find_layers",
    "forward_order",
]
