"""What the bench scripts share: statistics, child processes' environment, options, the closing line, ``--json``.

Scripts run as ``python bench/<name>.py``, so this folder is on ``sys.path`` and they ``import common``; so do the
processes ``fsdp_overhead.py`` spawns (``spawn`` passes ``sys.path`` on). Nothing heavy is imported at the top: the
sweep and start-up benches measure what the processes they watch import. The training helpers at the end import
torch and Lightning when first called.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
SEED = 0
#: The Trainer's ``log_every_n_steps``, explicit: the model's own logging cadence, the same in every variant.
LOG_EVERY_N_STEPS = 50

T = TypeVar("T")


# --- statistics -------------------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """The median, NaN for no values."""
    return statistics.median(values) if values else math.nan


def p90(values: Sequence[float]) -> float:
    """Nearest-rank 90th percentile, NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def rotate(items: Sequence[T], r: int) -> list[T]:
    """``items`` rotated left by ``r``: the order of interleaved round ``r``, so drift falls on every item alike."""
    items = list(items)
    k = r % len(items) if items else 0
    return items[k:] + items[:k]


# --- processes --------------------------------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a process a bench starts: W&B offline, no W&B service of ours to adopt, no update check."""
    env = dict(os.environ)
    env.pop("WANDB_SERVICE", None)
    env.update(WANDB_MODE="offline", NO_ALBUMENTATIONS_UPDATE="1", **extra)
    return env


# --- options and output -----------------------------------------------------------------------------------------


def add_quick_and_json(parser: argparse.ArgumentParser, quick: str = "a smoke run; numbers meaningless") -> None:
    """``--quick`` (its help: ``quick``) and ``--json PATH``, which every bench takes."""
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every measurement here")


def resolve_defaults(args: argparse.Namespace, defaults: dict[str, tuple[Any, Any]]) -> None:
    """Set each option left unset (``None``) to its ``(full, quick)`` default, by ``args.quick``."""
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)


def write_json(path: Path | None, result: dict[str, Any]) -> None:
    """Write ``result`` to ``path`` (nothing when ``None``); paths and other objects as strings."""
    if path is not None:
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")


def begin() -> float:
    """The opening line, Python's version and the cores; and the time to hand :func:`finish`."""
    print(f"python {platform.python_version()} on {os.cpu_count()} cores", flush=True)
    return time.perf_counter()


def finish(began: float) -> None:
    """The closing line: seconds since ``began`` (``time.perf_counter()``) and the load average to judge them by."""
    elapsed = time.perf_counter() - began
    print(f"took {elapsed:.0f} s; load average over the last 5 minutes: {os.getloadavg()[1]:.2f}", flush=True)


# --- training (gradient_overhead.py, fsdp_overhead.py) ----------------------------------------------------------


def step_timer(cuda: bool) -> Any:
    """A Lightning callback recording ``time.perf_counter()`` at every ``on_train_batch_start`` in ``.starts``.

    On CUDA it synchronizes first, so a step's time (the gap to the next start) covers its kernels.
    """
    import lightning.pytorch as pl
    import torch

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.starts.append(time.perf_counter())

    return StepTimer()


def make_loader(args: argparse.Namespace, steps: int) -> Any:
    """``steps`` batches of random RGB images (``args.image_size``, ``args.batch_size``), ten classes, one epoch."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(SEED)
    n = args.batch_size * steps  # one epoch: no epoch-end work inside the timed window
    x = torch.randn(n, 3, args.image_size, args.image_size, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=args.batch_size, shuffle=False)


def periodic_extra_ms(runs: Any, warmup: int) -> float:
    """Median over runs of the extra time (ms) of steps 49 and 0 (mod 50) over that run's median step, summed.

    ``runs`` is a ``(runs, steps)`` array of step times (s) whose first step is step ``warmup``.
    """
    import numpy as np

    phase = (warmup + np.arange(runs.shape[1])) % LOG_EVERY_N_STEPS
    extras = [
        run[phase == 0].mean() + run[phase == LOG_EVERY_N_STEPS - 1].mean() - 2.0 * np.median(run) for run in runs
    ]
    return 1000.0 * float(np.median(extras))
