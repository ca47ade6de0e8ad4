"""What runs wrote locally, read back for reports: run folders, local sweep folders, and folders of either.

A **run folder** holds a Lightning ``metrics.csv``: ``gradwatch fit`` writes ``runs/<id>/``, a user's own ``Trainer``
with a ``CSVLogger`` writes ``<save_dir>/<name>/version_<n>/``. A **sweep folder** is what ``gradwatch sweep run
--local`` writes: ``sweep.yaml``, ``runs/<id>/``, ``trials/config-<id>.json`` (each trial's parameters) and, once the
controller has stopped, ``results.json``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from gradwatch.errors import ConfigError
from gradwatch.rundir import (
    CONFIG_FILE,
    HPARAMS_FILE,
    LAYERS_KEY,
    METRICS_FILE,
    NOT_RUNS,
    RUNS_DIR,
    SWEEP_FILE,
    VERDICTS,
    Metrics,
    SweepInfo,
    health_summary,
    is_sweep_folder,
    ranked,
    read_json,
    read_layers,
    read_metrics,
    read_results,
    read_verdicts,
    read_yaml,
    trial_files,
    why_unreadable,
)

#: Runs each extra process must have before reports read metrics in parallel.
RUNS_PER_WORKER = 4


@dataclass(frozen=True)
class Skipped:
    """Something under a report's path that it leaves out, and why: a run it cannot read, a link it cannot follow.

    Attributes:
        path: The run folder or the link, as reached from the report's path.
        why: What is wrong with it (``metrics.csv is not a CSV file (binary data)``, ``it is a symlink loop``).
    """

    path: Path
    why: str

    def __str__(self) -> str:
        return f"{self.path}: {self.why}"


class ReportError(ConfigError):
    """A path that holds nothing a report can read; the message names the path and what was looked for.

    Args:
        message: The path and what is wrong with it.
        skipped: What was found under the path and left out, each with its reason.
    """

    def __init__(self, message: str, skipped: Sequence[Skipped] = ()) -> None:
        super().__init__(message)
        self.skipped = list(skipped)


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
            init_args = value.get("init_args")
            flat.update(flatten(init_args if isinstance(init_args, dict) else {}, f"{name}."))
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
        return read_metrics(self.dir / METRICS_FILE)

    @cached_property
    def layers(self) -> list[str]:
        """Measured layers, input → output, as far as the run logged them."""
        logged = set(self.metrics.keys("grad/norm/"))
        return [layer for layer in read_layers(self.dir) if layer in logged]

    @cached_property
    def config(self) -> dict[str, Any]:
        """The run's configuration, dotted: LightningCLI's ``config.yaml``, else the logger's ``hparams.yaml``."""
        saved = read_yaml(self.dir / CONFIG_FILE)
        if saved:
            try:
                return flatten(saved)
            except RecursionError:  # a YAML alias inside itself (``&a {x: *a}``) is a mapping without end
                pass
        return {key: value for key, value in read_yaml(self.dir / HPARAMS_FILE).items() if key != LAYERS_KEY}

    def health(self) -> dict[str, float]:
        """The last gradient-health readings: layers per verdict and attenuation (:func:`rundir.health_summary`)."""
        return health_summary(self.metrics)

    def verdicts(self) -> list[str]:
        """The verdicts standing at the run's last measurement (``["vanishing"]``), empty when healthy."""
        health = self.health()
        return [verdict for verdict in VERDICTS if health.get(verdict, 0) > 0]

    def advice(self) -> dict[str, str]:
        """Per standing verdict, the likely cause and remedy the run's monitor said last (``verdicts.jsonl``)."""
        said = {entry["verdict"]: entry["advice"] for entry in read_verdicts(self.dir)}
        return {verdict: said[verdict] for verdict in self.verdicts() if said.get(verdict)}

    def origins(self) -> list[str]:
        """Where the run's first non-finite values appeared (``verdicts.jsonl`` lines with an ``origin``).

        Shown whether or not the verdict still stands: under ``on_nonfinite="skip"`` a run recovers, and the origin
        is what there is to fix.
        """
        return [e["line"] for e in read_verdicts(self.dir) if e.get("origin") and isinstance(e.get("line"), str)]


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
        constants: The parameters with one value for every run (no axis to compare runs along).
    """

    name: str
    dir: Path
    parameters: list[str]
    metric: str | None
    goal: str
    runs: list[Run]
    constants: frozenset[str] = frozenset()

    @property
    def axes(self) -> list[str]:
        """The parameters that vary from run to run."""
        return [name for name in self.parameters if name not in self.constants]

    def value(self, run: Run) -> float | None:
        """The sweep's metric for ``run``: its last logged value, as the sweep itself reads it."""
        return run.metrics.last(self.metric) if self.metric else None

    def ranked(self) -> list[Run]:
        """The runs best first by the sweep table's rule (:func:`rundir.ranked`): by state, then the metric."""
        values = {run.id: self.value(run) for run in self.runs}
        return ranked(self.runs, value=lambda run: values[run.id], state=lambda run: run.state, goal=self.goal)


@dataclass
class Collection:
    """Everything found under a report's path: sweeps, runs outside any sweep, and what was left out."""

    path: Path
    sweeps: list[Sweep]
    runs: list[Run]
    skipped: list[Skipped] = field(default_factory=list)

    def all_runs(self) -> list[Run]:
        """Every run, sweeps' first."""
        return [run for sweep in self.sweeps for run in sweep.runs] + self.runs


def find(path: str | Path) -> Collection:
    """The sweeps and runs under ``path``: a run folder, a sweep folder, or a folder holding any number of either.

    A run whose ``metrics.csv`` cannot be read, and a link that leads nowhere, are left out and listed in
    :attr:`Collection.skipped`: one bad run never hides the others.

    Raises:
        ReportError: ``path`` does not exist, or nothing under it has metrics to show.
    """
    root = Path(path)
    try:
        root.stat()
    except FileNotFoundError:
        raise ReportError(f"{root}: no such file or folder") from None
    except OSError as exc:
        raise ReportError(f"{root} {why_unreadable(exc)}") from None
    if root.is_file():
        if root.name != METRICS_FILE:
            raise ReportError(f"{root}: not a run folder, a sweep folder or a metrics.csv")
        root = root.parent
    sweeps: list[Sweep] = []
    runs: list[Run] = []
    skipped: list[Skipped] = []
    for folder in _walk(root, skipped):
        if is_sweep_folder(folder):
            sweeps.append(read_sweep(folder, skipped))
        else:
            runs.append(Run(id=_run_name(folder, root), dir=folder))
    read_all([run for sweep in sweeps for run in sweep.runs] + runs)
    for sweep in sweeps:
        sweep.runs = _readable(sweep.runs, skipped)
    found = Collection(root, [s for s in sweeps if s.runs], _readable(runs, skipped), sorted(skipped, key=str))
    if not any(len(run.metrics.step) for run in found.all_runs()):
        if found.skipped:
            raise ReportError(f"{root}: nothing to report: every run under it was left out (above)", found.skipped)
        raise ReportError(
            f"{root}: nothing to report: no run folder (a metrics.csv from `gradwatch fit` or a Lightning CSVLogger) "
            "and no sweep folder (from `gradwatch sweep run --local`) with logged metrics under it"
        )
    return found


def _readable(runs: list[Run], skipped: list[Skipped]) -> list[Run]:
    """``runs`` less those whose ``metrics.csv`` cannot be read, which are added to ``skipped``."""
    skipped += [Skipped(run.dir, run.metrics.unreadable) for run in runs if run.metrics.unreadable]
    return [run for run in runs if not run.metrics.unreadable]


def read_all(runs: list[Run]) -> None:
    """Read the runs' metrics now, on every core when there are many: parsing numbers is most of a report's time."""
    workers = min(os.cpu_count() or 1, len(runs) // RUNS_PER_WORKER)
    if workers < 2:
        return  # each run reads its file when first asked
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers) as pool:
        tables = pool.map(read_metrics, [run.dir / METRICS_FILE for run in runs], chunksize=RUNS_PER_WORKER)
        for run, metrics in zip(runs, tables, strict=True):
            run.__dict__["metrics"] = metrics  # what the cached property would have computed


def _walk(folder: Path, skipped: list[Skipped]) -> list[Path]:
    """Run and sweep folders under ``folder``, in path order; nothing below one is searched.

    Links to folders are not followed (a link to a dataset would be walked whole, a link to a parent forever).
    """
    entries = _listing(folder, skipped)
    if entries is None:
        return []
    if any(entry.name == METRICS_FILE for entry in entries) or is_sweep_folder(folder):
        return [folder]
    candidates = [entry for entry in entries if entry.name not in NOT_RUNS and not entry.name.startswith(".")]
    return [run for below in _folders(candidates, skipped, follow_links=False) for run in _walk(below, skipped)]


def _listing(folder: Path, skipped: list[Skipped]) -> list[os.DirEntry[str]] | None:
    """``folder``'s entries by name; ``None``, with ``folder`` added to ``skipped``, when it cannot be listed."""
    try:
        with os.scandir(folder) as listing:
            return sorted(listing, key=lambda entry: entry.name)
    except OSError as exc:
        skipped.append(Skipped(folder, f"it {why_unreadable(exc)}"))
        return None


def _folders(entries: list[os.DirEntry[str]], skipped: list[Skipped], *, follow_links: bool) -> list[Path]:
    """The folders among ``entries``; a link that leads nowhere (a loop, a missing target) is added to ``skipped``."""
    folders = []
    for entry in entries:
        if entry.is_symlink():
            try:
                os.stat(entry.path)
            except OSError as exc:
                skipped.append(Skipped(Path(entry.path), f"it {why_unreadable(exc)}"))
                continue
        if entry.is_dir(follow_symlinks=follow_links):
            folders.append(Path(entry.path))
    return folders


def _run_name(folder: Path, root: Path) -> str:
    if folder == root:
        return folder.resolve().name
    return str(folder.relative_to(root))


def read_sweep(folder: Path, skipped: list[Skipped]) -> Sweep:
    """A local sweep folder: its file's parameters and metric, each trial's parameters and, if saved, its outcome.

    Args:
        folder: The sweep folder.
        skipped: Where a trial's link that leads nowhere, or a ``runs/`` that cannot be listed, is added.
    """
    info = SweepInfo.from_config(read_yaml(folder / SWEEP_FILE), name=folder.resolve().name)
    parameters = list(info.parameters)
    outcomes = read_results(folder)  # empty while the sweep runs, or if it stopped before writing them
    runs = []
    for run_dir in _folders(_listing(folder / RUNS_DIR, skipped) or [], skipped, follow_links=True):
        params = read_json(trial_files(folder, run_dir.name)[1])
        outcome = outcomes.get(run_dir.name, {})
        if not isinstance(params, dict) or not params:
            params = outcome.get("params")
        params = params if isinstance(params, dict) else {}
        parameters += [name for name in params if name not in parameters]
        runs.append(Run(run_dir.name, run_dir, params, outcome.get("state"), outcome.get("error")))
    # Start order: each trial's parameter file is written once, as it starts.
    runs.sort(key=lambda run: _mtime(trial_files(folder, run.id)[1]) or _mtime(run.dir))
    return Sweep(info.name, folder, parameters, info.metric, info.goal, runs, info.constants)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
