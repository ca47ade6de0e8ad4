"""The run folder's vocabulary: file names, metric and verdict keys, the one ``metrics.csv`` reader, ranking, health.

What ``gradwatch fit``, the monitors and the local sweep engine write, and what the sweep table, the report and the
dashboard read, is named here once; every other module asks this one. No torch, no Lightning: the report and the
sweep controller import it in light processes.

A **run folder** (``gradwatch fit``: ``<root>/<run id>/``; a user's CSVLogger: ``<save_dir>/<name>/version_<n>/``)::

    metrics.csv      every logged metric, one row per logging call (Lightning's CSV logger)
    hparams.yaml     the model's hyperparameters, and the layer order under LAYERS_KEY
    config.yaml      the whole LightningCLI config (gradwatch fit)
    verdicts.jsonl   every verdict line the GradientMonitor said, with its likely cause and remedy
    gradient-flow/   flow images; samples/ a GAN's grids; checkpoints/; wandb/ the offline W&B run

A **sweep folder** (``gradwatch sweep run --local``: ``<root>/sweeps/<name>/``)::

    sweep.yaml       the sweep file as it runs, with its name (JSON, which is YAML)
    sweep.db         the Optuna study (unless --storage)
    runs/<run id>/   each trial's run folder
    trials/          config-<run id>.yaml (the W&B config file a trial loads), config-<run id>.json (its values)
    results.csv, results.json   one row per trial, best first, once the controller stops
"""

from __future__ import annotations

import codecs
import errno
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

# --- where things are -------------------------------------------------------------------------------------------------

#: Where ``gradwatch fit`` puts run folders when ``--trainer.default_root_dir`` is not given; the local sweep engine
#: sets it for each trial, so a trial's run lands in ``<sweep>/runs/<run id>/``.
ROOT_DIR_ENV = "GRADWATCH_ROOT_DIR"
DEFAULT_ROOT_DIR = "runs"

METRICS_FILE = "metrics.csv"
HPARAMS_FILE = "hparams.yaml"
CONFIG_FILE = "config.yaml"
FLOW_DIR = "gradient-flow"
SAMPLES_DIR = "samples"
SWEEP_FILE = "sweep.yaml"
STUDY_FILE = "sweep.db"
RUNS_DIR = "runs"
TRIALS_DIR = "trials"
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
#: One JSON object a line for each verdict line the GradientMonitor said: step, verdict, network, layers, line and
#: advice (its ``likely cause: ...; try ...`` part).
VERDICTS_FILE = "verdicts.jsonl"
#: The reproducer of a run's first non-finite step, which ``gradwatch replay`` re-runs: ``step`` is the step and
#: ``rank`` ``""`` in one process, ``-rank<r>`` under DDP (``nonfinite-step12.pt``, ``nonfinite-step12-rank1.pt``).
REPRODUCER_FILE = "nonfinite-step{step}{rank}.pt"
CHECKPOINTS_DIR = "checkpoints"
#: Folders inside a run folder that hold no run of their own.
NOT_RUNS = frozenset({"wandb", CHECKPOINTS_DIR, FLOW_DIR, SAMPLES_DIR, TRIALS_DIR, "__pycache__"})
#: Written into a run folder by whoever stops the run on purpose (the local sweep's pruner) before sending SIGTERM:
#: the run then ends as stopped (exit 0), not as preempted.
STOP_FILE = "stop-requested"
#: Exit status of a run that SIGTERM (or SLURM's requeue signal) interrupted: 128 + SIGTERM, as a shell reports it.
#: The run saved a checkpoint first and can be resumed.
PREEMPTED_EXIT = 143
#: A run folder for ``gradwatch fit`` to resume, as ``--resume`` names one; the local sweep engine sets it when it
#: runs a preempted trial again.
RESUME_ENV = "GRADWATCH_RESUME"


def root_dir() -> str:
    """The runs folder when none is configured: ``$GRADWATCH_ROOT_DIR`` (the local sweep engine's), else ``runs``."""
    return os.environ.get(ROOT_DIR_ENV) or DEFAULT_ROOT_DIR


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a run resumes from: the newest ``*.ckpt`` in its ``checkpoints/`` (None when there is none)."""
    found = [path for path in (Path(run_dir) / CHECKPOINTS_DIR).glob("*.ckpt") if path.is_file()]
    return max(found, key=lambda path: path.stat().st_mtime_ns, default=None)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``path`` whole or not at all: a temporary file beside it, flushed to disk, then renamed over it.

    A full disk or a kill mid-write leaves the previous file intact (and no partial one).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc  # a failed write names no file: name it
    finally:
        tmp.unlink(missing_ok=True)


def trial_files(sweep_folder: Path, run_id: str) -> tuple[Path, Path]:
    """A trial's W&B config file (``config-<id>.yaml``, loaded by ``wandb.init``) and its values (``.json``)."""
    config = sweep_folder / TRIALS_DIR / f"config-{run_id}.yaml"
    return config, config.with_suffix(".json")


def is_sweep_folder(path: Path) -> bool:
    """Whether ``path`` is a local sweep's folder."""
    return (path / RUNS_DIR).is_dir() and any((path / name).exists() for name in (SWEEP_FILE, STUDY_FILE, RESULTS_JSON))


# --- keys -------------------------------------------------------------------------------------------------------------

#: The verdicts, in the order every table and summary lists them; ``health/<verdict>`` counts the layers named
#: (``stalled`` names the network: 1).
VERDICTS = ("vanishing", "exploding", "nonfinite", "stalled")
#: The hyperparameter where ``GradientMonitor`` records the measured layers in input → output order
#: (``hparams.yaml``, the W&B config): metric keys cannot carry it, CSV headers and W&B panels sort them.
LAYERS_KEY = "gradwatch/layers"
GRAD_NORM = "grad/norm/"  # + layer
GRAD_NORM_TOTAL = "grad/norm_total"  # + /network under several optimizers
UPDATE_RATIO = "grad/update_ratio/"  # + layer
PARAM_NORM = "param/norm/"  # + layer
GRAD_NONFINITE = "grad/nonfinite/"  # + layer
GRAD_HIST = "grad/hist/"  # + layer
CLIP_NORM, CLIP_RATE, SCALER_SKIPS = "grad/clip_norm", "grad/clip_rate", "grad/scaler_skips"  # + /network
ATTENUATION = "health/attenuation"  # + /network
ACT_DEAD, ACT_SATURATED, ACT_MEAN, ACT_STD = "act/dead/", "act/saturated/", "act/mean/", "act/std/"  # + layer
#: What each monitor logs per layer (a sweep metric under one of them is checked against the monitor's presence).
MONITOR_NAMESPACES = {"gradients": ("grad/", "param/", "health/"), "activations": ("act/",)}


def verdict_key(verdict: str) -> str:
    """``health/<verdict>``: the number of layers the verdict names (0 when it does not stand; ``stalled``: 1)."""
    return f"health/{verdict}"


#: What a sweep's metric can aim for.
GOALS = ("minimize", "maximize")
#: A trial's states in ranking order: finished trials first, then pruned, running, failed, interrupted. Runs outside a
#: recorded sweep have no state (``None``) and rank as finished.
STATES = ("finished", "pruned", "running", "failed", "interrupted")


# --- metrics.csv ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metrics:
    """The columns of a ``metrics.csv``: one float array per key, NaN where a row did not log the key.

    Attributes:
        step: Each row's global step.
        columns: Every other column by key.
        unreadable: Why the file could not be read at all (``"metrics.csv is not a CSV file (binary data)"``), its
            columns then empty; ``None`` when it could, or when it does not exist yet.
    """

    step: np.ndarray
    columns: dict[str, np.ndarray]
    unreadable: str | None = None

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

    def values(self, key: str) -> list[float]:
        """Every value logged under ``key``, in logging order."""
        return self.series(key)[1].tolist()

    def last(self, key: str) -> float | None:
        """The last value logged under ``key``."""
        _, values = self.series(key)
        return float(values[-1]) if len(values) else None


def read_metrics(path: str | Path) -> Metrics:
    """Parse a Lightning ``metrics.csv`` (one row per logging call, empty cells where a key was not logged).

    A row still being written is left out, so a run in progress reads as far as it got; a missing file reads as
    empty. A value that is not a number (a string a user logged) reads as NaN, and a row whose step is not a number
    is left out (it cannot be placed). A file that cannot be read, or is not text, reads as empty and says why in
    :attr:`Metrics.unreadable`; nothing in the file makes this raise.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Metrics(np.empty(0), {})
    except OSError as exc:
        return Metrics(np.empty(0), {}, f"{path.name} {why_unreadable(exc)}")
    header, _, body = data.removeprefix(codecs.BOM_UTF8).replace(b"\r", b"").partition(b"\n")  # csv writes \r\n
    names = _column_names(header)
    if names is None:
        return Metrics(np.empty(0), {}, f"{path.name} is not a CSV file (binary data)")
    body = body[: body.rfind(b"\n") + 1]  # drop a half-written last row
    rows = body.count(b"\n")
    if not names or not rows:
        return Metrics(np.empty(0), dict.fromkeys((n for n in names if n not in ("step", "epoch")), np.empty(0)))
    table = _fast_table(body, rows, len(names))
    if table is None:  # a cell that is not a number, or a ragged row
        table = _tolerant_table(body.decode("utf-8", "replace"), len(names))
    columns = {name: table[:, i] for i, name in enumerate(names)}
    step = columns.pop("step", np.arange(rows, dtype=np.float64))
    columns.pop("epoch", None)
    placed = np.isfinite(step)
    if not placed.all():
        step, columns = step[placed], {name: values[placed] for name, values in columns.items()}
    return Metrics(step, columns)


def _column_names(header: bytes) -> list[str] | None:
    """The names in a header line; ``None`` when the line is not text: another file, or the zeros of a lost write."""
    if b"\0" in header:
        return None
    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text.strip().split(",") if text.strip() else []


def why_unreadable(exc: OSError) -> str:
    """Why a path cannot be read, to follow its name: ``is a folder, not a file``, ``cannot be read (...)``..."""
    if exc.errno == errno.EISDIR:
        return "is a folder, not a file"
    if exc.errno == errno.ELOOP:
        return "is a symlink loop"
    if exc.errno == errno.ENOENT:  # a path that was listed and is not there: a link to nothing
        return "is a broken symlink"
    return f"cannot be read ({exc.strerror or exc})"


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
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # numpy 1.x: parses up to the text, warns
            values = np.fromstring(numbers.tobytes(), dtype=np.float64, sep=",")
    except ValueError:  # numpy 2.x: text that is not a number raises
        return None
    if values.size != int(filled.sum()):
        return None
    table = np.full(rows * width, np.nan)
    table[filled] = values
    return table.reshape(rows, width)


def _tolerant_table(text: str, width: int) -> np.ndarray:
    """The cells as a ``(rows, width)`` array, one per line of ``text``, NaN wherever a cell is not a number.

    Lines are split at newlines alone, as the fast path counts them (``str.splitlines`` would also split at the
    other line breaks a damaged file may hold, and the rows would no longer match the steps).
    """
    rows = [line.split(",") for line in text.split("\n")[:-1]]  # the text ends with a newline
    table = np.full((len(rows), width), np.nan)
    for r, cells in enumerate(rows):
        for c, cell in enumerate(cells[:width]):
            try:
                table[r, c] = float(cell)
            except ValueError:
                continue
    return table


# --- the other files --------------------------------------------------------------------------------------------------


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML (or JSON) mapping; ``{}`` for a missing, unreadable, non-YAML (binary) or non-mapping file."""
    import yaml

    try:
        # libyaml's loader when PyYAML has it: a sweep's hparams and configs are thousands of lines.
        loaded = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, ValueError, yaml.YAMLError):  # ValueError: bytes that are not UTF-8
        return {}
    return loaded if isinstance(loaded, dict) else {}


def read_json(path: Path) -> Any:
    """A JSON file's content, or ``None`` when it is missing, unreadable or not JSON (a file still being written)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
        return None


def read_layers(run_dir: Path) -> list[str]:
    """The measured layers of a run, input → output: ``LAYERS_KEY`` in ``hparams.yaml``, else natural order.

    Runs without the key (older runs, other monitors) get their ``grad/norm/<layer>`` columns in natural order,
    which puts ``blocks.2`` before ``blocks.10`` but cannot know that a ``stem`` comes first.
    """
    layers = read_yaml(run_dir / HPARAMS_FILE).get(LAYERS_KEY)
    if isinstance(layers, list) and layers:
        return [str(layer) for layer in layers]
    try:
        with (run_dir / METRICS_FILE).open(encoding="utf-8-sig", errors="replace") as f:
            header = f.readline().strip().split(",")
    except OSError:
        return []
    return natural_sorted(key[len(GRAD_NORM) :] for key in header if key.startswith(GRAD_NORM))


def natural_key(name: str) -> list[tuple[int, int, str]]:
    """A sort key comparing the numbers in ``name`` as numbers (``blocks.2`` before ``blocks.10``)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def natural_sorted(names: Iterable[str]) -> list[str]:
    """``names`` in :func:`natural_key` order."""
    return sorted(names, key=natural_key)


@dataclass(frozen=True)
class SweepInfo:
    """What readers need of a sweep file: its name, its parameters and the metric it optimizes.

    Attributes:
        name: The sweep's name.
        parameters: The swept parameters' dotted names, in the file's order, constants (``value:``) included.
        constants: Those of them with one value, which are no axis to compare runs along.
        metric: The metric's name, if the file names one.
        goal: ``minimize`` or ``maximize``.
    """

    name: str
    parameters: list[str]
    constants: frozenset[str]
    metric: str | None
    goal: str

    @property
    def axes(self) -> list[str]:
        """The parameters that vary from run to run."""
        return [name for name in self.parameters if name not in self.constants]

    @classmethod
    def from_config(cls, config: Mapping[str, Any], name: str) -> SweepInfo:
        """Read a W&B sweep config (a file as loaded, a local sweep's ``sweep.yaml``, W&B's own copy).

        Args:
            config: The config.
            name: The name to use when the config holds none.
        """
        metric = config.get("metric") if isinstance(config.get("metric"), Mapping) else {}
        parameters = config.get("parameters") if isinstance(config.get("parameters"), Mapping) else {}
        constants = frozenset(key for key, p in parameters.items() if isinstance(p, Mapping) and "value" in p)
        goal = metric.get("goal", "minimize")
        return cls(str(config.get("name") or name), list(parameters), constants, metric.get("name"), goal)


def append_verdict(run_dir: Path, entry: Mapping[str, Any]) -> None:
    """Add one verdict line to the run's :data:`VERDICTS_FILE` (written as the monitor says it)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / VERDICTS_FILE).open("a") as f:
        f.write(json.dumps(dict(entry)) + "\n")


def read_verdicts(run_dir: Path) -> list[dict[str, Any]]:
    """The verdict lines a run's monitor said, oldest first; other lines (a half-written last one) are left out."""
    try:
        lines = (run_dir / VERDICTS_FILE).read_bytes().split(b"\n")
    except OSError:
        return []
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):  # a half-written line, or not JSON at all
            continue
        if isinstance(entry, dict) and isinstance(entry.get("verdict"), str) and isinstance(entry.get("advice"), str):
            entries.append(entry)
    return entries


def read_results(sweep_folder: Path) -> dict[str, dict[str, Any]]:
    """The rows of a sweep's ``results.json`` by run id; empty while the sweep runs (it is written at the end)."""
    rows = read_json(sweep_folder / RESULTS_JSON)
    if not isinstance(rows, list):
        return {}
    return {Path(row["run_dir"]).name: row for row in rows if isinstance(row, dict) and row.get("run_dir")}


# --- what a run's numbers say -----------------------------------------------------------------------------------------


def health_summary(metrics: Metrics) -> dict[str, float]:
    """The last gradient-health readings: layers per verdict (``vanishing``...) and ``attenuation``.

    ``health/<verdict>`` counts the layers of every network at once (a GAN's generator and discriminator log the
    same total at their own steps), so the last value is the count. Attenuation is per network
    (``health/attenuation/generator``): the largest of their last values.
    """
    summary: dict[str, float] = {}
    for verdict in VERDICTS:
        last = metrics.last(verdict_key(verdict))
        if last is not None:
            summary[verdict] = last
    last_attenuation = [metrics.last(key) for key in metrics.columns if key.split("/")[:2] == ["health", "attenuation"]]
    finite = [value for value in last_attenuation if value is not None and math.isfinite(value)]
    if finite:
        summary["attenuation"] = max(finite)
    return summary


def describe_health(summary: Mapping[str, float]) -> str:
    """``healthy``, ``vanishing 9``, ``exploding 2, nonfinite 1`` (layers named at the last measurement) or ``stalled``.

    A count that is not finite is shown as it is (``vanishing inf``).
    """
    if not any(verdict in summary for verdict in VERDICTS):
        return "not measured"
    named = [v if v == "stalled" else f"{v} {summary[v]:g}" for v in VERDICTS if summary.get(v)]
    return ", ".join(named) if named else "healthy"


T = TypeVar("T")


def ranked(
    items: Sequence[T], *, value: Callable[[T], float | None], state: Callable[[T], str | None], goal: str
) -> list[T]:
    """``items`` best first: the one ranking rule of the sweep table, the report and the dashboard.

    By state first (:data:`STATES`: a trial pruned or failed never outranks a finished one, whatever its last value),
    then by value in the goal's direction, runs without a value last; ties keep the given order.

    Example::

        >>> runs = [("a", 0.9, "pruned"), ("b", 0.7, "finished"), ("c", None, "finished"), ("d", 0.8, None)]
        >>> [r[0] for r in ranked(runs, value=lambda r: r[1], state=lambda r: r[2], goal="maximize")]
        ['d', 'b', 'c', 'a']
    """
    sign = -1.0 if goal == "maximize" else 1.0
    order = {name: i for i, name in enumerate(STATES)}

    def key(item: T) -> tuple[int, bool, float]:
        v = value(item)
        missing = v is None or math.isnan(v)
        return order.get(state(item) or "finished", len(STATES)), missing, 0.0 if missing else sign * v

    return sorted(items, key=key)
