"""What runs wrote locally, read back for reports: run folders, local sweep folders, and folders of either.

A **run folder** holds a Lightning ``metrics.csv``: ``gradwatch fit`` writes ``runs/<id>/``, a user's own ``Trainer``
with a ``CSVLogger`` writes ``<save_dir>/<name>/version_<n>/``. A **sweep folder** is what ``gradwatch sweep run
--local`` writes: ``sweep.yaml``, ``runs/<id>/``, ``trials/config-<id>.json`` (each trial's parameters) and, once the
controller has stopped, ``results.json``.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from gradwatch.errors import ConfigError
from gradwatch.sweep.local import SWEEP_FILE
from gradwatch.sweep.metrics import LAYERS_KEY, VERDICTS, health_summary

#: Runs each extra process must have before reports read metrics in parallel.
RUNS_PER_WORKER = 4
#: Folders a run writes that hold no run of their own.
_NOT_RUNS = {"wandb", "checkpoints", "gradient-flow", "trials", "__pycache__"}


class ReportError(ConfigError):
    """A path that holds nothing a report can read; the message names the path and what was looked for."""


@dataclass(frozen=True)
class Metrics:
    """The columns of a ``metrics.csv``: one float array per key, NaN where a row did not log the key.

    Attributes:
        step: Each row's global step.
        columns: Every other column by key.
    """

    step: np.ndarray
    columns: dict[str, np.ndarray]

    def keys(self, prefix: str) -> list[str]:
        """The keys under ``prefix`` (``"grad/norm/"``), with the prefix removed."""
        return [key[len(prefix) :] for key in self.columns if key.startswith(prefix)]

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """The steps at which ``key`` was logged and its values there (empty arrays when it never was)."""
        values = self.columns.get(key)
        if values is None:
            return np.empty(0), np.empty(0)
        logged = ~np.isnan(values)
        return self.step[logged], values[logged]

    def last(self, key: str) -> float | None:
        """The last value logged under ``key``."""
        _, values = self.series(key)
        return float(values[-1]) if len(values) else None


def read_metrics_csv(path: Path) -> Metrics:
    """Parse a Lightning ``metrics.csv`` (one row per logging call, empty cells where a key was not logged).

    A row still being written is left out, so a run in progress reads as far as it got.
    """
    try:
        data = path.read_bytes()
    except OSError:
        return Metrics(np.empty(0), {})
    header, _, body = data.replace(b"\r", b"").partition(b"\n")  # csv writes \r\n
    names = header.decode("utf-8", "replace").strip().split(",") if header.strip() else []
    body = body[: body.rfind(b"\n") + 1]  # drop a half-written last row
    rows = body.count(b"\n")
    if not names or not rows:
        return Metrics(np.empty(0), dict.fromkeys((n for n in names if n not in ("step", "epoch")), np.empty(0)))
    table = _fast_table(body, rows, len(names))
    if table is None:  # a cell that is not a number (a string a user logged), or a ragged row
        table = _tolerant_table(body.decode("utf-8", "replace"), len(names))
    columns = {name: table[:, i] for i, name in enumerate(names)}
    step = columns.pop("step", np.arange(rows, dtype=np.float64))
    columns.pop("epoch", None)
    return Metrics(step, columns)


def _fast_table(body: bytes, rows: int, width: int) -> np.ndarray | None:
    """The cells as a ``(rows, width)`` array through numpy's C number parser; ``None`` if they are not all numbers.

    Most cells are empty (each logging call is a row of its own), so only the filled ones are parsed and put in
    place: a 64-run sweep of 2,000 steps is 175 MB of CSV, which ``np.loadtxt`` reads in 4 times as long.
    """
    text = np.frombuffer(body, dtype=np.uint8)
    separator = (text == ord(",")) | (text == ord("\n"))
    ends = np.flatnonzero(separator)
    if len(ends) != rows * width:
        return None
    filled = np.diff(ends, prepend=-1) > 1
    keep = ~separator
    keep[ends[filled]] = True  # each filled cell keeps its separator, as a comma
    numbers = text[keep]
    numbers[numbers == ord("\n")] = ord(",")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # text that is not a number: caught by the size check
        values = np.fromstring(numbers.tobytes(), dtype=np.float64, sep=",")
    if values.size != int(filled.sum()):
        return None
    table = np.full(rows * width, np.nan)
    table[filled] = values
    return table.reshape(rows, width)


def _tolerant_table(text: str, width: int) -> np.ndarray:
    rows = [line.split(",") for line in text.splitlines() if line]
    table = np.full((len(rows), width), np.nan)
    for r, cells in enumerate(rows):
        for c, cell in enumerate(cells[:width]):
            try:
                table[r, c] = float(cell)
            except ValueError:
                continue
    return table


def read_layers(run_dir: str | Path) -> list[str]:
    """The measured layers of a run, input → output.

    ``GradientMonitor`` records the order as the hyperparameter ``gradwatch/layers`` (``hparams.yaml``). Runs
    without it (older runs, other monitors) get their ``grad/norm/<layer>`` columns in natural order, which puts
    ``blocks.2`` before ``blocks.10`` but cannot know that a ``stem`` comes first.

    Args:
        run_dir: A run folder (holding ``metrics.csv``).

    Raises:
        ReportError: ``run_dir`` is not a run folder.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.csv").is_file():
        raise ReportError(f"{run_dir}: not a run folder (no metrics.csv)")
    layers = _read_yaml(run_dir / "hparams.yaml").get(LAYERS_KEY)
    if isinstance(layers, list) and layers:
        return [str(layer) for layer in layers]
    header = (run_dir / "metrics.csv").open().readline().strip().split(",")
    return natural_sorted(key[len("grad/norm/") :] for key in header if key.startswith("grad/norm/"))


def natural_key(name: str) -> list[tuple[int, int, str]]:
    """A sort key comparing the numbers in ``name`` as numbers (``blocks.2`` before ``blocks.10``)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def natural_sorted(names: Any) -> list[str]:
    """``names`` in :func:`natural_key` order."""
    return sorted(names, key=natural_key)


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        # libyaml's loader when PyYAML has it: a sweep's hparams and configs are thousands of lines.
        loaded = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys; LightningCLI's ``class_path`` / ``init_args`` pairs fold into their key.

    Example::

        >>> flatten({"model": {"class_path": "gradwatch.CNN", "init_args": {"depth": 8}}, "seed_everything": 0})
        {'model': 'gradwatch.CNN', 'model.depth': 8, 'seed_everything': 0}
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and "class_path" in value:
            flat[name] = value["class_path"]
            flat.update(flatten(value.get("init_args") or {}, f"{name}."))
        elif isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


@dataclass
class Run:
    """One run folder as a report shows it.

    Attributes:
        id: The run's name: its W&B run id under ``gradwatch fit`` and sweeps, else its path below the report's root.
        dir: The run folder.
        params: The swept values (a sweep's run), by dotted name.
        state: ``finished``, ``pruned``, ``failed``... as the sweep recorded it; ``None`` when nothing recorded one.
        error: Why a failed trial failed.
    """

    id: str
    dir: Path
    params: dict[str, Any] = field(default_factory=dict)
    state: str | None = None
    error: str | None = None

    @cached_property
    def metrics(self) -> Metrics:
        """The run's ``metrics.csv``, read once."""
        return read_metrics_csv(self.dir / "metrics.csv")

    @cached_property
    def layers(self) -> list[str]:
        """Measured layers, input → output, as far as the run logged them."""
        logged = set(self.metrics.keys("grad/norm/"))
        return [layer for layer in read_layers(self.dir) if layer in logged]

    @cached_property
    def config(self) -> dict[str, Any]:
        """The run's configuration, dotted: LightningCLI's ``config.yaml``, else the logger's ``hparams.yaml``."""
        saved = _read_yaml(self.dir / "config.yaml")
        if saved:
            return flatten(saved)
        return {key: value for key, value in _read_yaml(self.dir / "hparams.yaml").items() if key != LAYERS_KEY}

    def health(self) -> dict[str, float]:
        """The last gradient-health readings: layers per verdict (summed over a GAN's networks) and attenuation."""
        logged = {
            key: self.metrics.series(key)[1].tolist() for key in self.metrics.columns if key.startswith("health/")
        }
        return health_summary(logged)

    def verdicts(self) -> list[str]:
        """The verdicts standing at the run's last measurement (``["vanishing"]``), empty when healthy."""
        health = self.health()
        return [verdict for verdict in VERDICTS if health.get(verdict, 0) > 0]


@dataclass
class Sweep:
    """A local sweep folder.

    Attributes:
        name: The sweep's name.
        dir: The sweep folder.
        parameters: The swept parameters' dotted names, in the file's order.
        metric: The metric the sweep optimizes, if it names one.
        goal: ``maximize`` or ``minimize``.
        runs: The trials' runs, in the order they started.
    """

    name: str
    dir: Path
    parameters: list[str]
    metric: str | None
    goal: str
    runs: list[Run]

    def value(self, run: Run) -> float | None:
        """The sweep's metric for ``run``: its last logged value, as the sweep itself reads it."""
        return run.metrics.last(self.metric) if self.metric else None

    def ranked(self) -> list[Run]:
        """The runs best first by the metric; runs without a value last, in start order."""
        sign = -1.0 if self.goal == "maximize" else 1.0
        values = {run.id: self.value(run) for run in self.runs}
        return sorted(self.runs, key=lambda r: (values[r.id] is None, sign * (values[r.id] or 0.0)))


@dataclass
class Collection:
    """Everything found under a report's path: sweeps, and runs outside any sweep."""

    path: Path
    sweeps: list[Sweep]
    runs: list[Run]

    def all_runs(self) -> list[Run]:
        """Every run, sweeps' first."""
        return [run for sweep in self.sweeps for run in sweep.runs] + self.runs


def is_sweep_folder(path: Path) -> bool:
    """Whether ``path`` is a local sweep's folder."""
    return (path / "runs").is_dir() and any((path / name).exists() for name in (SWEEP_FILE, "sweep.db", "results.json"))


def find(path: str | Path) -> Collection:
    """The sweeps and runs under ``path``: a run folder, a sweep folder, or a folder holding any number of either.

    Raises:
        ReportError: ``path`` does not exist, or nothing under it has metrics to show.
    """
    root = Path(path)
    if not root.exists():
        raise ReportError(f"{root}: no such file or folder")
    if root.is_file():
        if root.name != "metrics.csv":
            raise ReportError(f"{root}: not a run folder, a sweep folder or a metrics.csv")
        root = root.parent
    sweeps: list[Sweep] = []
    runs: list[Run] = []
    for folder in _walk(root):
        if is_sweep_folder(folder):
            sweeps.append(read_sweep(folder))
        else:
            runs.append(Run(id=_run_name(folder, root), dir=folder))
    found = Collection(root, [s for s in sweeps if s.runs], runs)
    read_all(found.all_runs())
    if not any(len(run.metrics.step) for run in found.all_runs()):
        raise ReportError(
            f"{root}: nothing to report: no run folder (a metrics.csv from `gradwatch fit` or a Lightning CSVLogger) "
            "and no sweep folder (from `gradwatch sweep run --local`) with logged metrics under it"
        )
    return found


def read_all(runs: list[Run]) -> None:
    """Read the runs' metrics now, on every core when there are many: parsing numbers is most of a report's time."""
    workers = min(os.cpu_count() or 1, len(runs) // RUNS_PER_WORKER)
    if workers < 2:
        return  # each run reads its file when first asked
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers) as pool:
        tables = pool.map(read_metrics_csv, [run.dir / "metrics.csv" for run in runs], chunksize=RUNS_PER_WORKER)
        for run, metrics in zip(runs, tables, strict=True):
            run.__dict__["metrics"] = metrics  # what the cached property would have computed


def _walk(root: Path) -> list[Path]:
    """Run and sweep folders under ``root``, in path order; nothing below one is searched."""
    found = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        if "metrics.csv" in files or is_sweep_folder(here):
            found.append(here)
            dirs.clear()
            continue
        dirs[:] = sorted(d for d in dirs if d not in _NOT_RUNS and not d.startswith("."))
    return found


def _run_name(folder: Path, root: Path) -> str:
    if folder == root:
        return folder.resolve().name
    return str(folder.relative_to(root))


def read_sweep(folder: Path) -> Sweep:
    """A local sweep folder: its file's parameters and metric, each trial's parameters and, if saved, its outcome."""
    spec = _read_yaml(folder / SWEEP_FILE)
    metric = spec.get("metric") if isinstance(spec.get("metric"), dict) else {}
    parameters = list(spec.get("parameters") or {})
    outcomes = {}
    try:
        for row in json.loads((folder / "results.json").read_text()):
            outcomes[Path(row["run_dir"]).name] = row
    except (OSError, ValueError, KeyError, TypeError):
        pass  # a sweep still running, or one stopped before it wrote its results
    runs = []
    for run_dir in sorted(p for p in (folder / "runs").iterdir() if p.is_dir()):
        params = _read_json(folder / "trials" / f"config-{run_dir.name}.json")
        outcome = outcomes.get(run_dir.name, {})
        if not params:
            params = outcome.get("params") or {}
        for name in params:
            if name not in parameters:
                parameters.append(name)
        runs.append(Run(run_dir.name, run_dir, params, outcome.get("state"), outcome.get("error")))
    # Start order: each trial's parameter file is written once, as it starts.
    runs.sort(key=lambda run: _mtime(folder / "trials" / f"config-{run.id}.json") or _mtime(run.dir))
    return Sweep(
        name=str(spec.get("name") or folder.resolve().name),
        dir=folder,
        parameters=parameters,
        metric=metric.get("name"),
        goal=metric.get("goal", "minimize"),
        runs=runs,
    )


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _read_json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}
