"""Small real disks for the fault tests: a size-limited tmpfs, full or read-only, mounted for one test."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(path: Path, size: str = "2m", *, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (created) for the ``with`` block, then unmounted.

    Mounting needs root (CI runs as root); elsewhere the test is skipped, saying so.
    """
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path, leave: int = 16 * 1024) -> None:
    """Fill the disk ``path`` is on, leaving ``leave`` bytes free (another process filling it)."""
    free = shutil.disk_usage(path).free
    with (path / "filler").open("wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(0, free - leave))
