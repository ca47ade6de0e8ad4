"""How gradwatch's callbacks hand metrics and figures to Lightning: every logger, and ``callback_metrics``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger


def logging_step(trainer: pl.Trainer) -> int:
    """The step Lightning logs the current batch under (optimizer steps taken, counted once per batch)."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def log_metrics(trainer: pl.Trainer, metrics: Mapping[str, float]) -> None:
    """Log ``metrics`` through every attached logger and publish them in ``trainer.callback_metrics``.

    ``callback_metrics`` is what ``EarlyStopping`` and ``ModelCheckpoint`` monitor, so a callback's metric can be
    monitored like one the model logs. Loggers log from rank 0 only (Lightning makes them no-ops elsewhere).
    """
    if not metrics:
        return
    step = logging_step(trainer)
    for logger in trainer.loggers:
        logger.log_metrics(dict(metrics), step=step)
    # One tensor split into views: a tensor per key costs 5× more, at every logging step.
    values = torch.tensor([float(value) for value in metrics.values()], dtype=torch.float32).unbind(0)
    trainer.callback_metrics.update(zip(metrics, values, strict=True))


def log_histograms(trainer: pl.Trainer, histograms: Mapping[str, np.ndarray]) -> None:
    """Log log10 |grad| histograms (:class:`~gradwatch.health.Measurement`'s layout) to W&B and TensorBoard.

    The zero bucket becomes the leftmost bin, half a decade wide, just below the smallest edge.
    """
    from gradwatch.health.stats import HISTOGRAM_EDGES

    edges = np.concatenate([[HISTOGRAM_EDGES[0] - 0.5], HISTOGRAM_EDGES])
    step = logging_step(trainer)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            logger.log_metrics(
                {key: wandb.Histogram(np_histogram=(counts, edges)) for key, counts in histograms.items()}, step=step
            )
        elif isinstance(logger, TensorBoardLogger):
            for key, counts in histograms.items():
                centers = (edges[:-1] + edges[1:]) / 2
                logger.experiment.add_histogram_raw(
                    key,
                    min=float(edges[0]),
                    max=float(edges[-1]),
                    num=float(counts.sum()),
                    sum=float((counts * centers).sum()),
                    sum_squares=float((counts * centers**2).sum()),
                    bucket_limits=edges[1:].tolist(),
                    bucket_counts=counts.tolist(),
                    global_step=step,
                )


def log_wandb_bars(trainer: pl.Trainer, key: str, table: Mapping[str, Sequence[Any]], x: str, y: str) -> None:
    """Log ``table`` (column → values) to W&B as a table and a native bar chart of ``y`` over ``x``, if W&B is on."""
    logger = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
    if logger is None or not trainer.is_global_zero:
        return
    import wandb

    columns = list(table)
    data = wandb.Table(columns=columns, data=[list(row) for row in zip(*table.values(), strict=True)])
    logger.log_metrics({key: wandb.plot.bar(data, x, y, title=key)}, step=logging_step(trainer))


def run_dir(trainer: pl.Trainer) -> Path:
    """The folder a run's files go into: the first logger's ``log_dir``, else ``default_root_dir``.

    Under DDP ``trainer.log_dir`` is a collective (a broadcast from rank 0): call this on every process, at the
    same point, never behind an ``is_global_zero`` check.
    """
    return Path(trainer.log_dir or trainer.default_root_dir)


def log_images(trainer: pl.Trainer, images: Mapping[str, np.ndarray], folder: Path) -> list[Path]:
    """Log RGB ``(H, W, 3)`` uint8 images to the loggers that show images, and save each as a PNG in ``folder``.

    The PNGs are named ``<key with / as ->-<step>.png``, so a run logged only to CSV keeps its figures too. Only
    rank 0 writes; ``folder`` comes from :func:`run_dir`, resolved on every process.

    Returns:
        The paths of the saved PNGs (empty on ranks other than 0).
    """
    if not images or not trainer.is_global_zero:
        return []
    from PIL import Image

    step = logging_step(trainer)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            # Through log_metrics, so the row carries `trainer/global_step` like every other metric.
            logger.log_metrics({key: wandb.Image(image) for key, image in images.items()}, step=step)
        elif isinstance(logger, TensorBoardLogger):
            for key, image in images.items():
                logger.experiment.add_image(key, image, global_step=step, dataformats="HWC")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for key, image in images.items():
        path = folder / f"{key.replace('/', '-')}-{step}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths
