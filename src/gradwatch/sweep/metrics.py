"""What a trial logged, read back from its CSV metrics file while it runs and after it ends."""

from __future__ import annotations

import csv
import math
from pathlib import Path

VERDICTS = ("vanishing", "exploding", "nonfinite")


def read_metrics(path: str | Path) -> dict[str, list[float]]:
    """Every column of a Lightning ``metrics.csv`` as the values it holds, in logging order (empty cells skipped).

    A file being rewritten or a row half written is read as far as it is complete; a missing file reads as empty.
    """
    try:
        text = Path(path).read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return {}
    if not text.endswith("\n"):  # the writer is mid-row: leave the partial row for the next read
        text = text[: text.rfind("\n") + 1]
    columns: dict[str, list[float]] = {}
    for row in csv.DictReader(text.splitlines()):
        for key, cell in row.items():
            if key is None or cell in (None, ""):
                continue
            try:
                columns.setdefault(key, []).append(float(cell))
            except ValueError:
                continue
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
