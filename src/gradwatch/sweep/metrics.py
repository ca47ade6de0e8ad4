"""What a trial logged, read back from its CSV metrics file while it runs and after it ends."""

from __future__ import annotations

import contextlib
import csv
import math
from collections.abc import Iterable
from pathlib import Path

VERDICTS = ("vanishing", "exploding", "nonfinite")
#: The hyperparameter where ``GradientMonitor`` records the measured layers in input → output order
#: (``hparams.yaml``, the W&B config): metric keys cannot carry it, CSV headers and W&B panels sort them.
LAYERS_KEY = "gradwatch/layers"


def read_metrics(path: str | Path, keys: Iterable[str] | None = None) -> dict[str, list[float]]:
    """The columns of a Lightning ``metrics.csv`` as the values they hold, in logging order (empty cells skipped).

    A file being rewritten or a row half written is read as far as it is complete; a missing file reads as empty.

    Args:
        path: The CSV file.
        keys: Only these columns (a run with a GradientMonitor has a few per layer); every column when ``None``.
    """
    try:
        text = Path(path).read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return {}
    if not text.endswith("\n"):  # the writer is mid-row: leave the partial row for the next read
        text = text[: text.rfind("\n") + 1]
    rows = csv.reader(text.splitlines())
    header = next(rows, [])
    wanted = set(header) if keys is None else set(keys)
    index = [(i, key) for i, key in enumerate(header) if key in wanted]
    columns: dict[str, list[float]] = {}
    for row in rows:
        for i, key in index:
            cell = row[i] if i < len(row) else ""
            if cell:
                with contextlib.suppress(ValueError):
                    columns.setdefault(key, []).append(float(cell))
    return columns


def health_summary(columns: dict[str, list[float]]) -> dict[str, float]:
    """The last gradient-health readings: layers per verdict (``vanishing``...) and ``attenuation``.

    Networks measured separately (a GAN's ``/generator`` and ``/discriminator``) are summed for verdicts; the
    attenuation is the largest of them.
    """
    summary: dict[str, float] = {}
    for key, values in columns.items():
        if not key.startswith("health/") or not values:
            continue
        name = key.split("/")[1]
        last = values[-1]
        if name in VERDICTS:
            summary[name] = summary.get(name, 0.0) + last
        elif name == "attenuation" and math.isfinite(last):
            summary[name] = max(summary.get(name, -math.inf), last)
    return summary


def describe_health(summary: dict[str, float]) -> str:
    """``healthy``, ``vanishing 9`` or ``exploding 2, nonfinite 1`` (layers named at the last measurement)."""
    if not any(verdict in summary for verdict in VERDICTS):
        return "not measured"
    named = [f"{v} {int(summary[v])}" for v in VERDICTS if summary.get(v)]
    return ", ".join(named) if named else "healthy"
