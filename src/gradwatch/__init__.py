"""gradwatch: Lightning plugins for studying and catching vanishing / exploding gradients.

Names are imported on first use (PEP 562), so ``import gradwatch`` costs nothing until a model, a DataModule
or the CLI is touched: every sweep trial pays its start-up time.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "CNN": "gradwatch.models",
    "RNN": "gradwatch.models",
    "GAN": "gradwatch.models",
    "GradwatchModule": "gradwatch.models",
    "DigitsDataModule": "gradwatch.data",
    "MNISTDataModule": "gradwatch.data",
    "FashionMNISTDataModule": "gradwatch.data",
    "CIFAR10DataModule": "gradwatch.data",
    "ImageFolderDataModule": "gradwatch.data",
    "AddingProblemDataModule": "gradwatch.data",
    "CopyMemoryDataModule": "gradwatch.data",
    "SequentialDigitsDataModule": "gradwatch.data",
    "GradientMonitor": "gradwatch.callbacks",
    "ActivationMonitor": "gradwatch.callbacks",
    "ConfigError": "gradwatch.errors",
    "default_loggers": "gradwatch.loggers",
}

__all__ = [
    "CNN",
    "GAN",
    "RNN",
    "ActivationMonitor",
    "AddingProblemDataModule",
    "CIFAR10DataModule",
    "ConfigError",
    "CopyMemoryDataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "GradientMonitor",
    "GradwatchModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "SequentialDigitsDataModule",
    "default_loggers",
]

if TYPE_CHECKING:
    from gradwatch.callbacks import ActivationMonitor, GradientMonitor
    from gradwatch.data import (
        AddingProblemDataModule,
        CIFAR10DataModule,
        CopyMemoryDataModule,
        DigitsDataModule,
        FashionMNISTDataModule,
        ImageFolderDataModule,
        MNISTDataModule,
        SequentialDigitsDataModule,
    )
    from gradwatch.errors import ConfigError
    from gradwatch.loggers import default_loggers
    from gradwatch.models import CNN, GAN, RNN, GradwatchModule


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gradwatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
