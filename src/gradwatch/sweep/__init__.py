"""Sweeps: W&B sweep files run on W&B online, or locally on Optuna offline.

Nothing here imports wandb, optuna or torch at import time: the CLI pays for them only when it uses them.
"""

from gradwatch.sweep.spec import Metric, Parameter, SweepError, SweepSpec, load_sweep

__all__ = ["Metric", "Parameter", "SweepError", "SweepSpec", "load_sweep"]
