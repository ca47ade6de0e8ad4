"""Read back what an offline W&B run wrote: its ``run-<id>.wandb`` file, record by record.

The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks of chunks, each
``crc32c (4) | length (2, little-endian) | type (1) | data``, where type FULL / FIRST / MIDDLE / LAST reassembles
records that span blocks. Each record is a ``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

_HEADER = 7
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_records(path: str | Path) -> list[wandb_internal_pb2.Record]:
    """Every record of a ``.wandb`` file, in order."""
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pending, pos = [], b"", _HEADER
    while pos + _HEADER <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _HEADER:  # the block's tail is padding
            pos += left_in_block
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def run_file(run_dir: str | Path, timeout: float = 30.0) -> Path:
    """The one ``run-*.wandb`` file under ``run_dir`` (a gradwatch run folder or W&B's own run folder), finished.

    ``wandb.finish()`` can return before W&B's writer process has flushed the file (seen on a loaded machine), so
    this waits until the file holds the run's exit record.
    """
    deadline = time.monotonic() + timeout
    while not (files := list(Path(run_dir).rglob("run-*.wandb"))):
        assert time.monotonic() < deadline, f"no run-*.wandb under {run_dir} after {timeout} s"
        time.sleep(0.1)
    (found,) = files
    while exit_code(found) is None:
        assert time.monotonic() < deadline, f"{found} has no exit record after {timeout} s"
        time.sleep(0.1)
    return found


def history(path: str | Path) -> list[dict[str, Any]]:
    """The logged rows (``wandb.log`` calls), values decoded from JSON."""
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return rows


def config(path: str | Path) -> dict[str, Any]:
    """The run's config as last updated: the run record's initial config (a sweep's values), then each update."""
    values: dict[str, Any] = {}
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        updates = record.run.config.update if kind == "run" else record.config.update if kind == "config" else ()
        for item in updates:
            values[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return values


def run_group(path: str | Path) -> str:
    """The run's group (``WANDB_RUN_GROUP``)."""
    return next(r.run.run_group for r in read_records(path) if r.WhichOneof("record_type") == "run")


def exit_code(path: str | Path) -> int | None:
    """The exit code the run finished with, or ``None`` while it has not finished."""
    codes = [r.exit.exit_code for r in read_records(path) if r.WhichOneof("record_type") == "exit"]
    return codes[-1] if codes else None


def preempting(path: str | Path) -> bool:
    """Whether the run was marked as preempting (``run.mark_preempting()``) before it exited."""
    return any(r.WhichOneof("record_type") == "preempting" for r in read_records(path))
