"""Continuing a run where it stopped, and writing what a run needs to continue so that a fault cannot damage it.

- :class:`ResumableCSVLogger` appends to a run's ``metrics.csv`` instead of starting it over (Lightning's CSV logger
  deletes the file when its folder exists), and can cut it back to the rows a checkpoint had seen, so a resumed run
  logs no step twice.
- :class:`AtomicCheckpointIO` writes each checkpoint beside its final name, then renames it: a full disk or a kill
  mid-save leaves the previous checkpoints loadable and no partial file.
- :func:`find_run` resolves what ``gradwatch fit --resume`` names (a run folder or a run id) and
  :func:`check_checkpoint` refuses a missing, empty or damaged checkpoint file before any run starts.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

from gradwatch.errors import ConfigError
from gradwatch.rundir import CONFIG_FILE, METRICS_FILE, latest_checkpoint, write_atomic


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, continuing an existing ``metrics.csv`` (its header, its rows) instead of deleting it."""

    def __init__(self, log_dir: str) -> None:
        self.rows_saved = 0
        super().__init__(log_dir)

    @override
    def _check_log_dir_exists(self) -> None:
        # Lightning deletes metrics.csv here. Keep it: read its columns, count its rows, and drop a half-written last
        # row (a run killed mid-write), so appended rows line up under the header.
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with path.open(newline="") as f:
            text = f.read()
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
            write_atomic(path, text)
        rows = list(csv.reader(io.StringIO(text)))
        if rows:
            self.metrics_keys = list(rows[0])
            self.rows_saved = len(rows) - 1

    @property
    def rows_logged(self) -> int:
        """Rows logged so far: those in the file and those waiting for the next flush."""
        return self.rows_saved + len(self.metrics)

    @override
    def save(self) -> None:
        waiting = len(self.metrics)
        super().save()
        self.rows_saved += waiting

    @override
    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        # A new key widens every row: rewritten whole or not at all, never half (the old rows are the run's history).
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(Path(self.metrics_file_path), out.getvalue())

    def truncate(self, rows: int) -> None:
        """Keep the header and the first ``rows`` rows: what was logged before the checkpoint a run resumes from."""
        self.save()
        path = Path(self.metrics_file_path)
        if self.rows_saved <= rows or not path.is_file():
            return
        with path.open(newline="") as f:
            lines = f.read().splitlines(keepends=True)
        write_atomic(path, "".join(lines[: rows + 1]))
        self.rows_saved = rows


class ResumableCSVLogger(CSVLogger):
    """A :class:`~lightning.pytorch.loggers.CSVLogger` that continues the ``metrics.csv`` its folder already holds.

    A run resumed into its own folder keeps every row it logged before; new keys widen the file (rewritten
    atomically); :meth:`truncate` cuts it back to the rows logged before the checkpoint the run resumes from.
    """

    @property
    @override
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    @property
    def rows_logged(self) -> int:
        """Rows this run's ``metrics.csv`` holds, counting those not yet flushed."""
        return self.experiment.rows_logged

    def truncate(self, rows: int) -> None:
        """Drop every row after the first ``rows``."""
        self.experiment.truncate(rows)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file in their folder, flushed to disk, then renamed into place.

    Lightning's own writer copies from a temporary folder elsewhere, which leaves a truncated, unloadable file
    behind when the disk fills up.
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        import torch

        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r})")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomic(path, buffer.getbuffer())


def find_run(name: str, roots: list[str]) -> Path:
    """The run folder ``gradwatch fit --resume NAME`` continues: a path to one, or a run id under one of ``roots``.

    Raises:
        ConfigError: nothing by that name, or a folder that is no run of ``gradwatch fit`` (no ``config.yaml``).
    """
    candidates = [Path(name)] + [Path(root) / name for root in roots if os.sep not in name]
    folder = next((path for path in candidates if path.is_dir()), None)
    if folder is None:
        where = " or ".join(str(path) for path in dict.fromkeys(candidates))
        raise ConfigError(f"--resume {name}: no run there (looked for {where})")
    if not (folder / CONFIG_FILE).is_file():
        raise ConfigError(
            f"--resume {name}: {folder} has no {CONFIG_FILE}, so it is no run of `gradwatch fit` (a run folder holds "
            f"{CONFIG_FILE} and {METRICS_FILE})"
        )
    return folder.resolve()


def resume_checkpoint(folder: Path) -> Path:
    """The checkpoint a run resumes from (its newest).

    Raises:
        ConfigError: the run saved none.
    """
    checkpoint = latest_checkpoint(folder)
    if checkpoint is None:
        raise ConfigError(
            f"--resume {folder}: no checkpoint to resume from (it stopped before saving one); start it over with "
            f"`gradwatch fit --config {folder / CONFIG_FILE}`"
        )
    return checkpoint


def check_writable(folder: Path, *, need: int = 0) -> None:
    """Refuse a runs folder that cannot take a run, before the run starts: unwritable, or its disk nearly full.

    Args:
        folder: Where run folders go (``--trainer.default_root_dir``); created if missing.
        need: Bytes the run's checkpoints will take (two of them at a time); 1 MB of logs is added.

    Raises:
        ConfigError: naming the folder and what is wrong.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as f:
            f.write(b"x")
            f.flush()
    except OSError as exc:
        raise ConfigError(f"--trainer.default_root_dir {folder}: cannot write there ({exc.strerror})") from None
    free, wanted = shutil.disk_usage(folder).free, 2 * need + (1 << 20)
    if free < wanted:
        raise ConfigError(
            f"--trainer.default_root_dir {folder}: {free / 1e6:.1f} MB free on its disk; a run of this model needs "
            f"about {wanted / 1e6:.1f} MB for its checkpoints and logs"
        )


def check_checkpoint(path: str | Path) -> None:
    """Refuse a checkpoint file that cannot be loaded, before a run is created to load it into.

    Cheap checks only (the file is not unpickled): it exists, is not empty, and is a whole ``torch.save`` archive
    (a zip whose index, at its end, is intact: a truncated copy has none).

    Raises:
        ConfigError: what is wrong with it.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--ckpt_path {path}: no such file")
    if path.is_dir():
        return  # a distributed checkpoint is a folder; its own loader checks it
    if path.stat().st_size == 0:
        raise ConfigError(f"--ckpt_path {path}: the file is empty (a save that never finished?)")
    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ConfigError(
            f"--ckpt_path {path}: not a whole checkpoint (cut short or damaged: {exc}); pick another from its folder"
        ) from None
