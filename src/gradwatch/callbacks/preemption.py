"""Preemption: a run told to stop (a scheduler's SIGTERM, SLURM's warning signal) leaves a checkpoint to resume from."""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from gradwatch.loggers import run_dir
from gradwatch.resume import ResumableCSVLogger
from gradwatch.rundir import CHECKPOINTS_DIR, STOP_FILE

log = logging.getLogger("gradwatch")


@dataclass(frozen=True)
class Preempted:
    """Where a preempted run stopped and what it saved.

    Attributes:
        signal: ``"SIGTERM"`` or ``"SIGUSR1"``.
        step: Optimizer steps taken (``trainer.global_step``).
        epoch: The epoch it was in.
        checkpoint: The checkpoint saved on the way out.
    """

    signal: str
    step: int
    epoch: int
    checkpoint: Path


class Preemption(Callback):
    """Save a resumable checkpoint when the run is told to stop, and keep ``metrics.csv`` in step with checkpoints.

    On SIGTERM, and on SIGUSR1 where Lightning's SLURM auto-requeue has not claimed it, Lightning stops the loop at
    the next batch. This callback then saves ``<run>/checkpoints/preempted.ckpt``, marks the W&B run as preempting,
    and sets :attr:`preempted` (``gradwatch fit`` then exits with status 143 and prints how to resume). A run whose
    folder holds ``stop-requested`` (the local sweep's pruner writes it before its SIGTERM) was stopped on purpose:
    nothing is saved and :attr:`stopped_reason` says why.

    Each checkpoint also records how many rows ``metrics.csv`` held (written by a
    :class:`~gradwatch.resume.ResumableCSVLogger`); a run resumed from it cuts the file back to them, so no step is
    logged twice.

    Args:
        filename: The checkpoint's name in the run's ``checkpoints/`` folder.
    """

    def __init__(self, filename: str = "preempted.ckpt") -> None:
        self.filename = filename
        self.preempted: Preempted | None = None
        self.stopped_reason: str | None = None
        self._run_dir: Path | None = None
        self._csv: ResumableCSVLogger | None = None
        self._signal = "SIGTERM"
        self._previous_usr1: Any = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # Resolved on every process: `trainer.log_dir` is a collective under DDP.
        self._run_dir = run_dir(trainer)
        self._csv = next((lg for lg in trainer.loggers if isinstance(lg, ResumableCSVLogger)), None)
        # SLURM sends SIGUSR1 ahead of its time limit; Lightning handles it only under auto-requeue. Unclaimed, it
        # would kill the process outright: treat it as the SIGTERM that follows.
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGUSR1) in (
            signal.SIG_DFL,
            None,
        ):

            def on_usr1(signum: int, frame: Any) -> None:
                self._signal = "SIGUSR1"
                trainer._signal_connector._sigterm_notifier_fn(signum, frame)

            self._previous_usr1 = signal.signal(signal.SIGUSR1, on_usr1)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._previous_usr1 is not None:
            signal.signal(signal.SIGUSR1, self._previous_usr1)
            self._previous_usr1 = None

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or self._run_dir is None:
            return
        stop = self._run_dir / STOP_FILE
        if stop.exists():
            self.stopped_reason = stop.read_text().strip() or "a stop was requested"
            return
        path = self._run_dir / CHECKPOINTS_DIR / self.filename
        trainer.save_checkpoint(path, weights_only=False)  # every process: the strategy gathers what rank 0 writes
        self.preempted = Preempted(self._signal, trainer.global_step, trainer.current_epoch, path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and trainer.is_global_zero and logger._experiment is not None:
                # W&B then shows the run as preempted rather than finished or crashed.
                logger.experiment.mark_preempting()

    @override
    def state_dict(self) -> dict[str, Any]:
        # Only rank 0's logger writes; elsewhere its experiment is a stand-in without rows.
        if self._csv is None or not _is_writer(self._csv):
            return {}
        return {"csv_rows": self._csv.rows_logged}

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        rows = checkpoint.get("callbacks", {}).get(self.state_key, {}).get("csv_rows")
        csv = next((lg for lg in trainer.loggers if isinstance(lg, ResumableCSVLogger)), None)
        if rows is not None and csv is not None and trainer.is_global_zero:
            csv.truncate(int(rows))


def _is_writer(csv: ResumableCSVLogger) -> bool:
    """Whether this process holds the logger's real writer (rank 0), not Lightning's stand-in."""
    return isinstance(getattr(csv.experiment, "rows_saved", None), int)
