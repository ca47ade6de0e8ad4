"""gradwatch's loggers: which ones a run gets, and how callbacks and models hand them metrics and figures.

A run gets W&B (online when logged in, else offline) and a CSV file of every metric. Metrics go to every logger and
into ``trainer.callback_metrics``; images to the loggers that show them and as PNGs into the run folder. Lightning is
imported only where loggers are made or fed: the sweep controller needs only the helpers at the top.
"""

from __future__ import annotations

import netrc
import os
import secrets
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np

if TYPE_CHECKING:  # Lightning is imported where loggers are made or fed: the sweep controller needs only the helpers
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import Logger

DEFAULT_PROJECT = "gradwatch"


def wandb_logged_in() -> bool:
    """Whether W&B credentials are on this machine (``WANDB_API_KEY`` or ``wandb login``'s netrc entry).

    Checked without the network: a run that cannot reach W&B later still finishes offline and can be synced.
    """
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_offline() -> bool:
    """Offline unless ``WANDB_MODE`` asks otherwise or, when unset, unless credentials are present."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode in ("offline", "dryrun")
    return not wandb_logged_in()


def fresh_run_id() -> str:
    """A new W&B-style run id: 8 lowercase letters and digits."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def new_run_id() -> str:
    """The W&B run id: the agent's (``WANDB_RUN_ID``) in a sweep trial, else a fresh one."""
    return os.environ.get("WANDB_RUN_ID") or fresh_run_id()


def default_loggers(
    root_dir: str | Path, *, run_id: str | None = None, project: str | None = None, resume: bool = False
) -> list[Logger]:
    """A CSV logger and a W&B logger that write one run into ``root_dir/<run_id>/``.

    The CSV logger comes first, so Lightning puts checkpoints and the CLI's ``config.yaml`` in the same folder:
    ``metrics.csv``, ``hparams.yaml``, ``config.yaml``, ``checkpoints/`` and ``wandb/`` side by side.

    Args:
        root_dir: Folder of all runs.
        run_id: The run's id, shared by both loggers; a new one when ``None``.
        project: W&B project; ``WANDB_PROJECT`` or ``"gradwatch"`` when ``None``.
        resume: Continue the run ``run_id``: its ``metrics.csv`` is appended to (never started over, whatever the
            flag) and its W&B run resumed (online; offline, a second offline run of the same id, which
            ``wandb sync`` uploads as one run).
    """
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    from gradwatch.resume import ResumableCSVLogger

    run_id = run_id or new_run_id()
    run_dir = Path(root_dir) / run_id
    project = project or os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT)
    offline = wandb_offline()
    # git_root: W&B looks for the code's git repository in the run folder, which does not exist yet; the code is
    # where the command runs. quiet: offline, W&B's banner and summary would bury the line saying where the run went.
    settings = wandb.Settings(git_root=os.getcwd(), quiet=offline)
    extra = {"resume": "allow"} if resume else {}
    wandb_logger = WandbLogger(
        save_dir=str(run_dir), id=run_id, project=project, offline=offline, settings=settings, **extra
    )
    # Lightning passes `anonymous=None` to wandb.init, which W&B 0.19+ answers with a deprecation warning every run.
    getattr(wandb_logger, "_wandb_init", {}).pop("anonymous", None)
    return [
        # Flushing every 10 steps lets a report read a run that is still training.
        ResumableCSVLogger(save_dir=root_dir, name="", version=run_id, flush_logs_every_n_steps=10),
        wandb_logger,
    ]


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
    import torch

    # One tensor split into views: a tensor per key costs 5× more, at every logging step.
    values = torch.tensor([float(value) for value in metrics.values()], dtype=torch.float32).unbind(0)
    trainer.callback_metrics.update(zip(metrics, values, strict=True))


def log_histograms(trainer: pl.Trainer, histograms: Mapping[str, np.ndarray]) -> None:
    """Log log10 |grad| histograms (:class:`~gradwatch.health.Measurement`'s layout) to W&B and TensorBoard.

    The zero bucket becomes the leftmost bin, half a decade wide, just below the smallest edge.
    """
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

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
    from lightning.pytorch.loggers import WandbLogger

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
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
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
