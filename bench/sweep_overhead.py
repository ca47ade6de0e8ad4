"""What does the local sweep engine cost besides training: its controller per trial, a trial's start-up, and workers?

A by-hand benchmark: CI never runs it, and nothing here asserts on time. The targets we report against (issue 5):

- the controller's own work per trial, with 100 finished trials in a bayes study, under 0.2 s (the trial's
  process excluded);
- ``import gradwatch`` imports none of wandb, optuna, plotly, torch or lightning (a sweep trial and the
  ``gradwatch sweep`` command pay every import at start-up);
- the quickstart sweep with ``--workers 2`` ends at least 1.6× as many trials per hour as with ``--workers 1``.

What it measures
    **Part ``controller``.** A bayes sweep like ``sweeps/cnn-bayes.yaml``, built with ``parse_sweep``:
    ``model.depth`` (int_uniform 2-24), ``model.activation``, ``model.norm``, ``model.residual``, ``model.init``
    (categorical), ``model.optimizer.lr`` (log_uniform_values), ``trainer.max_epochs: 15`` (constant), metric
    ``val/acc`` maximized, hyperband early termination (min_iter 3, eta 3; ``--no-hyperband`` drops it); one
    ``LocalSweep(spec, folder, count=200)`` per sampler, each in its own folder (its own SQLite study, as
    ``gradwatch sweep run`` makes).

    Nothing is trained and no process is started: ``subprocess.Popen`` *inside* ``gradwatch.sweep.local`` is
    replaced by a stand-in process that "runs" until the bench says it exited with code 0 (or the controller
    terminates it). Everything else is the controller's own code, driven the way ``LocalSweep.run`` drives it.
    One trial's cycle, timed by phase:

    - ``ask``: ``study.ask(distributions)`` as ``_launch`` calls it: the sampler, then the storage writes of the new
      trial and its parameters;
    - ``launch``: the rest of ``sweep._launch()``: ``study.get_trials(RUNNING)``, ``sweep.ended()`` and
      ``sweep._start(trial)`` (run id, run folder, config files, the command, ``set_user_attr`` calls, heartbeat);
    - ``idle poll``: one ``sweep._poll()`` while the trial runs and nothing new is logged. It recurs every 0.5 s
      per running trial, so it is shown apart and not added;
    - ``report``: the trial logs one epoch at a time: a synthetic ``metrics.csv`` like ``gradwatch fit``'s on the
      digits (train rows, gradient-monitor rows with per-layer ``grad/*`` and ``health/*`` columns, one ``val/acc``
      row per epoch, rising to the trial's value), written untimed, then one ``sweep._poll()``: the CSV read,
      ``trial.report`` and, with hyperband, ``trial.should_prune()``. Summed over the epochs the trial logs before
      it ends: all 15, or fewer when the pruner stops it (the table gives the mean and how many were pruned);
    - ``finish``: the poll in which the trial ends: after its last epoch the stand-in exits, and ``_finish`` reads
      the CSV, sets the user attributes and calls ``study.tell``. For a pruned trial this is the poll that reports
      the epoch, prunes (``terminate`` on the stand-in) and tells ``PRUNED``;
    - ``collect``: ``gradwatch.sweep.results.collect(study, spec)``, the results table's rows (today once per
      ``gradwatch sweep run``, after the last trial; counted per trial here, the worst case of a live table).

    "Per trial" is ask + launch + report + finish + collect. Only ``ask`` is the sampler's own; the others are the
    same code for every sampler, though ``report`` grows with the epochs a trial lives, which depends on what the
    sampler proposed (better trials are pruned later). The samplers, on identical studies:

    - ``gp``: ``GPSampler`` with the shipped sampler's ``n_startup_trials`` (seeded): Optuna's Gaussian process,
      the closer match to W&B's bayes, measured as the alternative;
    - ``tpe``: ``TPESampler(multivariate=True)``, what ``LocalSweep`` ships for bayes (seeded; Optuna's other
      defaults, ``constant_liar=True`` among them). Under a ``HyperbandPruner`` Optuna's TPE models only the
      trials of the new trial's bracket, as it does in any hyperband study;
    - ``random``: ``RandomSampler``, not a candidate: the floor, what the storage alone costs.

    The first study gets ``--history`` (100) ended trials (finished or pruned) through the same cycle with a
    seeded ``RandomSampler``, synthetic ``val/acc`` a smooth function of the parameters plus noise, so it holds
    the user attributes and intermediate values real trials leave; the other two start from a copy of its
    database file, so all three hold the same trials. Then the measured sampler is set (``study.sampler =
    ...``), one untimed cycle each absorbs first-use costs (printed), and ``--asks`` (20) rounds follow, each
    running one cycle per sampler in an order that rotates by one every round, so drift falls on all alike.
    Each study grows by one trial per cycle: 100 + 1 + 20 at the end. The table gives the median and the p90
    (nearest rank) of every phase, the SQL statements it sends and the transactions among them that write
    (SQLAlchemy's events): on SQLite each write transaction is a journal file and fsyncs, milliseconds however
    small, so the folder's filesystem matters (the bench's folders are under ``$TMPDIR``, ``/tmp`` by default; a
    real sweep's under ``runs/``).

    GPSampler computes with torch, by default one thread per core, in the controller's process: where trials or
    anything else keep the cores busy its asks stall and swing (``--threads 1`` to compare; the table prints the
    thread count and whether ``greenlet``, which lets Optuna batch GPSampler's acquisition search, is installed).

    Then, on the gp study (121 trials): the storage calls the controller repeats, timed alone, ``--asks`` times
    each: ``study.get_trials()``, ``study.get_trials(states=RUNNING)``, ``sweep.ended()``, ``collect`` and one
    ``trial.set_user_attr`` (a write, on one more trial asked for it). And the one-off costs of a fresh controller
    process: ``LocalSweep(...)`` (imports Optuna, creates the schema) and its first cycle (whatever ``_start`` and
    the rest import on first use), with the heavy modules each one imported. ``--profile`` then runs 5 more
    cycles each of gp and tpe under cProfile (untimed; their studies grow by 5) and prints the controller's and
    Optuna's study, sampler and storage functions by cumulative time.

    **Part ``startup``.** Fresh interpreters (``sys.executable``), each run's wall time from spawn to exit; the
    median over ``--repeats`` interleaved rounds after one untimed round (``.pyc`` files, page cache):

    - ``python -c pass`` (the interpreter's floor), then ``python -c "import M"`` for ``gradwatch``,
      ``gradwatch.commands`` (what ``python -m gradwatch`` loads before it dispatches), ``gradwatch.sweep.local``
      (the controller), ``optuna``, ``torch``, ``lightning``, ``wandb`` and ``gradwatch.cli`` (``gradwatch fit``'s
      LightningCLI): the import alone (``perf_counter`` around it, in the child) and which heavy modules are in
      ``sys.modules`` after it. ``-X importtime`` of ``import gradwatch`` once: its largest imports;
    - ``python -m gradwatch fit --config sweeps/configs/cnn-digits.yaml --print_config``: the CLI up to a parsed
      config, nothing instantiated;
    - ``python -m gradwatch fit --config sweeps/configs/cnn-digits.yaml --trainer.max_steps=1`` in a trial's
      environment (W&B offline, ``GRADWATCH_ROOT_DIR`` in a temporary folder), with one more callback,
      ``--trainer.callbacks+=gwbench_stamp.FirstStep``, from a module the bench writes and puts on
      ``PYTHONPATH``. It appends ``time.time()`` to a file when it is imported (the CLI parsing its arguments), at
      ``on_fit_start``, at the first ``on_train_batch_start`` (the first training step: the headline) and at its
      ``on_train_batch_end``; each is given from spawn (the parent's ``time.time()`` just before ``Popen``). The
      wall time to exit adds Lightning's and W&B's teardown.

    **Part ``workers``.** ``python -m gradwatch sweep run sweeps/quickstart.yaml --local --workers K --dir TMP``
    for K = 1, then K = 2, the same ``--count`` (default: the whole grid, 8 trials; ``--quick``: 4), from the
    repository root, W&B offline, without ``WANDB_SERVICE`` and ``OMP_NUM_THREADS`` (the engine gives each of K
    workers cores / K threads; a value in the environment would override that). Trials per hour = trials ended
    (``results.json``) / wall time from spawn to exit × 3600; also from the first "trial started" line to exit,
    which leaves out the controller's start-up and its check of the file against ``gradwatch fit``'s parser. The
    ratio is K = 2's over K = 1's. The mean trial time (``seconds`` in ``results.json``) shows what sharing the
    cores costs each trial. Without GPUs the engine gives a K = 1 trial every core's thread and each K = 2 trial
    one: a 2-thread trial stalls at every parallel region whenever another process takes a core (on a shared
    2-core machine one quickstart trial took 85 s at K = 1 and 18 s at K = 2), so on a busy machine the ratio
    measures the load, not the engine.

How to run
    ``.venv/bin/python bench/sweep_overhead.py`` runs every part: the controller part takes one to three minutes
    (most of it GPSampler's asks), start-up about five, workers about ten (two whole quickstart sweeps; both cores
    busy throughout). ``--part controller|startup|workers|all`` picks one. ``--quick`` is a smoke run with
    meaningless numbers (5 asks, 1 start-up round, 4 trials per worker count): about a minute for the controller,
    two for start-up, several for workers. Options: ``--history``, ``--asks``, ``--threads``, ``--no-hyperband``,
    ``--repeats``, ``--count``, ``--profile``, ``--json PATH``. Run it on an otherwise idle machine: on 2 cores,
    any other process shows up in every number, GPSampler's asks and the worker ratio most of all; the last line
    gives the load average.

How to read it
    The controller's target is the "per trial" row's median; p90 shows how often a trial pays more. The samplers
    differ in ``ask``; what is left is the same code for all, storage round trips, the write transactions (``txn``)
    above all (reads come from Optuna's cache of finished trials and cost a few milliseconds). Start-up
    targets: ``import gradwatch`` near ``python -c pass``, no heavy module listed; the first training step comes
    seconds after spawn, most of it ``import lightning``. A worker ratio under 2 is expected: two trials on two
    cores each get one thread and share memory bandwidth; under 1.6 the controller or start-up eats the gain.
"""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import argparse
import contextlib
import cProfile
import importlib.util
import io
import json
import math
import platform
import pstats
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Nothing heavy at the top: the controller part reports which modules the controller itself imports.
from gradwatch.sweep import local
from gradwatch.sweep.results import collect
from gradwatch.sweep.spec import load_sweep, parse_sweep
from gradwatch.sweep.workers import visible_gpus

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SEED = 0
TARGET_CONTROLLER_S = 0.2
TARGET_WORKER_RATIO = 1.6
PROFILE_CYCLES = 5
#: Must not be imported by `import gradwatch`.
FORBIDDEN = ("wandb", "optuna", "plotly", "torch", "lightning")
#: Listed when loaded, for information.
HEAVY = (*FORBIDDEN, "torchvision", "torchmetrics", "jsonargparse", "scipy", "sklearn", "pandas", "numpy", "sqlalchemy")
FIT_CONFIG = "sweeps/configs/cnn-digits.yaml"
QUICKSTART = ROOT / "sweeps" / "quickstart.yaml"
SAMPLERS = ("gp", "tpe", "random")
SAMPLER_LABELS = {
    "gp": "GPSampler",
    "tpe": "TPESampler(multivariate=True) (LocalSweep's bayes)",
    "random": "RandomSampler (storage floor)",
}

#: Like sweeps/cnn-bayes.yaml (its run_cap left out: the bench sets count).
SPEC = {
    "name": "bench",
    "method": "bayes",
    "metric": {"name": "val/acc", "goal": "maximize"},
    "early_terminate": {"type": "hyperband", "min_iter": 3, "eta": 3},
    "parameters": {
        "model.depth": {"distribution": "int_uniform", "min": 2, "max": 24},
        "model.activation": {"values": ["relu", "leaky_relu", "gelu", "tanh", "sigmoid"]},
        "model.norm": {"values": ["none", "batch", "group"]},
        "model.residual": {"values": [False, True]},
        "model.init": {"values": ["default", "kaiming", "xavier", "orthogonal"]},
        "model.optimizer.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 3e-2},
        "trainer.max_epochs": {"value": 15},
    },
    "command": ["${env}", "${interpreter}", "-m", "gradwatch", "fit", "--config", FIT_CONFIG, "${args}"],
}


# --- small helpers --------------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def p90(values: list[float]) -> float:
    """Nearest-rank 90th percentile."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def heavy_loaded() -> set[str]:
    return {name for name in HEAVY if name in sys.modules}


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a process the bench starts: W&B offline, no W&B service of ours to adopt."""
    env = dict(os.environ)
    env.pop("WANDB_SERVICE", None)
    env.update(WANDB_MODE="offline", NO_ALBUMENTATIONS_UPDATE="1", **extra)
    return env


def rotate(items: tuple[str, ...], r: int) -> tuple[str, ...]:
    return items[r % len(items) :] + items[: r % len(items)]


# --- part 1: the controller -----------------------------------------------------------------------------------------


class StandInProcess:
    """Takes the place of a trial's process: running until ``done`` is set, then exited with code 0."""

    def __init__(self, args: Any, **kwargs: Any) -> None:
        self.args = args
        self.pid = 0
        self.returncode: int | None = None
        self.done = False

    def poll(self) -> int | None:
        if self.done:
            self.returncode = 0
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        self.done = True
        return self.poll()

    def terminate(self) -> None:
        self.done = True

    def kill(self) -> None:
        self.done = True


@contextlib.contextmanager
def no_processes() -> Iterator[None]:
    """Replace ``subprocess.Popen`` as ``gradwatch.sweep.local`` sees it, and only there."""
    real = local.subprocess
    stand_in = types.ModuleType("subprocess")
    stand_in.__dict__.update(vars(real))
    stand_in.Popen = StandInProcess  # type: ignore[attr-defined]
    local.subprocess = stand_in  # type: ignore[attr-defined]
    try:
        yield
    finally:
        local.subprocess = real  # type: ignore[attr-defined]


def synthetic_acc(params: dict[str, Any], number: int) -> float:
    """A smooth function of the parameters plus seeded noise: deep sigmoid nets without help do badly."""
    rng = random.Random(SEED * 100_003 + number)
    depth, lr = params["model.depth"], params["model.optimizer.lr"]
    acc = 0.97 - 0.04 * (math.log10(lr) + 2.5) ** 2
    if params["model.activation"] in ("sigmoid", "tanh") and params["model.norm"] == "none":
        acc -= 0.02 * depth / (2.0 if params["model.residual"] else 1.0)
    acc -= 0.002 * abs(depth - 8) + (0.01 if params["model.init"] == "default" else 0.0)
    return min(1.0, max(0.05, acc + rng.gauss(0.0, 0.01)))


def write_metrics(run_dir: Path, acc: float, epochs: int, total: int, layers: int = 9, steps: int = 23) -> None:
    """``metrics.csv`` after ``epochs`` of ``total`` epochs, shaped like ``gradwatch fit``'s on the digits.

    Train rows every 10 steps, a gradient-monitor row every 50 (``grad/*`` per layer, ``health/*``) and one
    ``val/acc`` row per epoch, rising towards ``acc`` at the last epoch.
    """
    grad = [f"grad/layer{i}/{stat}" for i in range(layers) for stat in ("norm", "rms", "update_ratio")]
    health = ["health/vanishing", "health/exploding", "health/nonfinite", "health/attenuation"]
    columns = ["epoch", "step", "train/acc", "train/loss", "val/acc", "val/loss", *health, *grad]
    rows: list[dict[str, float]] = []
    for epoch in range(epochs):
        frac = (epoch + 1) / total
        for step in range(epoch * steps, (epoch + 1) * steps):
            if step % 10 == 9:
                rows.append({"epoch": epoch, "step": step, "train/acc": acc * frac, "train/loss": 2.3 * (1 - frac)})
            if step % 50 == 0:
                row: dict[str, float] = {"epoch": epoch, "step": step}
                row.update({key: 0.01 * (i + 1) for i, key in enumerate(grad)})
                row.update({"health/vanishing": 0, "health/exploding": 0, "health/nonfinite": 0})
                row["health/attenuation"] = 1.5
                rows.append(row)
        val = acc * (0.8 + 0.2 * frac)
        rows.append({"epoch": epoch, "step": (epoch + 1) * steps - 1, "val/acc": val, "val/loss": 1 - val})
    lines = [",".join(columns)]
    lines += [",".join("" if row.get(c) is None else repr(row[c]) for c in columns) for row in rows]
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")


class SqlCounter:
    """Counts the SQL statements a storage's engine executes and the transactions that write (``commits``).

    On SQLite (rollback journal, ``synchronous=FULL``) every committed write is a journal file and fsyncs; a
    transaction that only read commits for free.
    """

    def __init__(self, study: Any) -> None:
        from sqlalchemy import event

        storage = study._storage
        engine = getattr(getattr(storage, "_backend", storage), "engine", None)
        self.n = 0
        self.commits = 0
        self._dirty = False
        if engine is not None:
            event.listen(engine, "before_cursor_execute", self._count)
            event.listen(engine, "commit", self._commit)
            event.listen(engine, "rollback", self._rollback)

    def _count(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.n += 1
        if statement.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
            self._dirty = True

    def _commit(self, *args: Any) -> None:
        self.commits += self._dirty
        self._dirty = False

    def _rollback(self, *args: Any) -> None:
        self._dirty = False


PHASES = ("ask", "launch", "idle_poll", "report", "finish", "collect")
#: The phases that make "per trial"; one idle poll recurs every 0.5 s while a trial runs, so it is shown apart.
PER_TRIAL = ("ask", "launch", "report", "finish", "collect")


@dataclass
class Controller:
    """One sampler's sweep and its measurements."""

    key: str
    sweep: Any
    sql: SqlCounter
    epochs: int
    times: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})
    statements: dict[str, list[int]] = field(default_factory=lambda: {p: [] for p in PHASES})
    commits: dict[str, list[int]] = field(default_factory=lambda: {p: [] for p in PHASES})
    reported: list[int] = field(default_factory=list)
    pruned: list[bool] = field(default_factory=list)


def cycle(c: Controller, record: bool = True) -> dict[str, float]:
    """One trial through the controller, as ``LocalSweep.run`` drives it; seconds per phase (statements too)."""
    sweep, study = c.sweep, c.sweep.study
    asked: list[tuple[float, int, int]] = []
    real_ask = study.ask

    def timed_ask(*args: Any, **kwargs: Any) -> Any:
        n0, k0, t0 = c.sql.n, c.sql.commits, time.perf_counter()
        trial = real_ask(*args, **kwargs)
        asked.append((time.perf_counter() - t0, c.sql.n - n0, c.sql.commits - k0))
        return trial

    spent = dict.fromkeys(PHASES, 0.0)
    sent = dict.fromkeys(PHASES, 0)
    committed = dict.fromkeys(PHASES, 0)

    def timed(phase: str | Callable[[], str], fn: Callable[[], Any]) -> None:
        n0, k0, t0 = c.sql.n, c.sql.commits, time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
        name = phase if isinstance(phase, str) else phase()
        spent[name] += seconds
        sent[name] += c.sql.n - n0
        committed[name] += c.sql.commits - k0

    study.ask = timed_ask
    try:
        timed("launch", sweep._launch)
    finally:
        del study.ask
    if len(asked) != 1 or len(sweep._running) != 1:
        raise RuntimeError(f"_launch asked {len(asked)} trials, {len(sweep._running)} running; expected 1 and 1")
    running = sweep._running[0]
    if not isinstance(running.process, StandInProcess):
        raise RuntimeError("LocalSweep no longer starts trials through gradwatch.sweep.local.subprocess.Popen")
    spent["ask"], sent["ask"], committed["ask"] = asked[0]
    spent["launch"] -= spent["ask"]
    sent["launch"] -= sent["ask"]
    committed["launch"] -= committed["ask"]
    acc = synthetic_acc(running.params, running.trial.number)
    timed("idle_poll", sweep._poll)  # running, nothing logged yet
    epoch = 0
    while sweep._running:  # one poll per logged epoch: each reports one val/acc (and asks the pruner)
        if epoch < c.epochs:
            epoch += 1
            write_metrics(running.run_dir, acc, epoch, c.epochs)
        if epoch == c.epochs:
            running.process.done = True  # the last epoch is logged: the process exits
        # The poll that ends the trial is "finish" (for a pruned one, the same poll reports, prunes and finishes).
        timed(lambda: "report" if sweep._running else "finish", sweep._poll)
    timed("collect", lambda: collect(study, sweep.spec))
    if record:
        for phase in PHASES:
            c.times[phase].append(spent[phase])
            c.statements[phase].append(sent[phase])
            c.commits[phase].append(committed[phase])
        c.reported.append(running.reported)
        c.pruned.append(running.pruned_at is not None)
    return spent


def measured_sampler(key: str, shipped: Any) -> Any:
    import optuna

    n_startup = getattr(shipped, "_n_startup_trials", 10)
    if key == "gp":
        return optuna.samplers.GPSampler(n_startup_trials=n_startup, seed=SEED)
    if key == "tpe":
        return optuna.samplers.TPESampler(multivariate=True, n_startup_trials=n_startup, seed=SEED)
    return optuna.samplers.RandomSampler(seed=SEED)


def part_controller(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    raw = {k: v for k, v in SPEC.items() if k != "early_terminate" or not args.no_hyperband}
    spec = parse_sweep(raw, "bench.yaml")
    count = max(200, args.history + args.asks + 2 + (PROFILE_CYCLES if args.profile else 0))
    epochs = int(spec.parameters["trainer.max_epochs"].value)
    swept = sum(p.distribution != "constant" for p in spec.parameters.values())
    pruner = "hyperband (min_iter 3, eta 3)" if spec.early_terminate is not None else "no early termination"
    print(
        f"controller: bayes sweep of {swept} parameters like sweeps/cnn-bayes.yaml, {pruner}, val/acc maximized,"
        f" {epochs} epochs a trial, count={count}; {args.history} ended trials, then {args.asks} timed rounds"
    )
    controllers: dict[str, Controller] = {}
    once: dict[str, Any] = {}
    with no_processes():
        for key in SAMPLERS:
            folder = tmp / f"controller-{key}"
            if controllers:  # the same history as the first study: a copy of its database
                folder.mkdir()
                shutil.copyfile(tmp / f"controller-{SAMPLERS[0]}" / "sweep.db", folder / "sweep.db")
            before, t0 = heavy_loaded(), time.perf_counter()
            sweep = local.LocalSweep(spec, folder, count=count, echo=lambda line: None)
            built = time.perf_counter() - t0
            c = Controller(key, sweep, SqlCounter(sweep.study), epochs)
            shipped = sweep.study.sampler
            if not controllers:
                once["LocalSweep() in a fresh process"] = (built, sorted(heavy_loaded() - before))
                once["shipped bayes sampler"] = type(shipped).__name__
                import optuna  # after the first LocalSweep(), whose one-off cost includes importing it

                sweep.study.sampler = optuna.samplers.RandomSampler(seed=SEED)
                t_fill = time.perf_counter()
                for i in range(args.history):
                    before, t0 = heavy_loaded(), time.perf_counter()
                    cycle(c, record=False)
                    if i == 0:
                        first = time.perf_counter() - t0
                        once["first cycle in a fresh process"] = (first, sorted(heavy_loaded() - before))
                fill_s = time.perf_counter() - t_fill
                print(f"  {args.history} ended trials through the controller with RandomSampler: {fill_s:.1f} s")
            sweep.study.sampler = measured_sampler(key, shipped)
            controllers[key] = c
        if args.threads is not None:  # GPSampler computes with torch
            import torch

            torch.set_num_threads(args.threads)
        for key in SAMPLERS:  # untimed: first-use costs of each sampler
            before = heavy_loaded()
            spent = cycle(controllers[key], record=False)
            once[f"first ask, {key}"] = (spent["ask"], sorted(heavy_loaded() - before))
        for r in range(args.asks):
            for key in rotate(SAMPLERS, r):
                cycle(controllers[key])
        probes = storage_probes(controllers["gp"], args.asks)
        profiles = {key: cProfile.Profile() for key in ("gp", "tpe")} if args.profile else {}
        for key, profiler in profiles.items():  # after the timed rounds: cProfile slows what it watches
            profiler.enable()
            for _ in range(PROFILE_CYCLES):
                cycle(controllers[key], record=False)
            profiler.disable()
    threads = None
    if "torch" in sys.modules:
        threads = sys.modules["torch"].get_num_threads()
    summary = report_controller(args, controllers, once, probes, threads)
    for key, profiler in profiles.items():
        print_profile(key, profiler, PROFILE_CYCLES)
    return summary


def storage_probes(c: Controller, repeats: int) -> dict[str, dict[str, float]]:
    from optuna.trial import TrialState

    study, sweep = c.sweep.study, c.sweep
    calls: dict[str, Callable[[], Any]] = {
        "study.get_trials(deepcopy=False)": lambda: study.get_trials(deepcopy=False),
        "study.get_trials(deepcopy=False, states=RUNNING)": lambda: study.get_trials(
            deepcopy=False, states=(TrialState.RUNNING,)
        ),
        "sweep.ended()": sweep.ended,
        "collect(study, spec)": lambda: collect(study, sweep.spec),
    }
    trials = len(study.get_trials(deepcopy=False))
    scratch: list[Any] = []  # one more trial, asked after the reads (no trial runs during them), failed at the end
    calls["trial.set_user_attr (one write)"] = lambda: scratch[0].set_user_attr(f"bench{c.sql.n}", 0)
    out = {}
    for label, fn in calls.items():
        if label.startswith("trial."):
            scratch.append(study.ask())
        samples, statements, commits = [], [], []
        for _ in range(repeats):
            n0, k0, t0 = c.sql.n, c.sql.commits, time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
            statements.append(c.sql.n - n0)
            commits.append(c.sql.commits - k0)
        out[label] = {
            "median_ms": 1e3 * median(samples),
            "p90_ms": 1e3 * p90(samples),
            "sql": median(statements),
            "commits": median(commits),
        }
    study.tell(scratch[0], state=TrialState.FAIL)
    out["_trials"] = {"n": trials}
    return out


def report_controller(
    args: argparse.Namespace,
    controllers: dict[str, Controller],
    once: dict[str, Any],
    probes: dict[str, Any],
    threads: int | None,
) -> dict[str, Any]:
    import optuna

    rows = (
        ("ask", "ask: study.ask(distributions)"),
        ("launch", "launch: _launch less ask, _start"),
        ("report", "report: polls with a new epoch"),
        ("finish", "finish: poll, _finish, tell"),
        ("collect", "collect(study, spec)"),
        ("rest", "rest: all of the above but ask"),
        ("per_trial", "per trial: ask + rest"),
        ("idle_poll", "one idle poll (every 0.5 s)"),
    )
    rest_phases = [p for p in PER_TRIAL if p != "ask"]
    summary: dict[str, Any] = {"samplers": {}, "once": {}, "probes": probes}
    for key, c in controllers.items():
        n = len(c.times["ask"])

        def combined(per_phase: dict[str, list[Any]], phases: list[str] | tuple[str, ...], n: int = n) -> list[Any]:
            return [sum(per_phase[p][i] for p in phases) for i in range(n)]

        everything = {**c.times, "rest": combined(c.times, rest_phases), "per_trial": combined(c.times, PER_TRIAL)}
        counts = {
            what: {**per_phase, "rest": combined(per_phase, rest_phases), "per_trial": combined(per_phase, PER_TRIAL)}
            for what, per_phase in (("sql", c.statements), ("commits", c.commits))
        }
        summary["samplers"][key] = {
            name: {
                "median_ms": 1e3 * median(values),
                "p90_ms": 1e3 * p90(values),
                "sql": median(counts["sql"][name]),
                "commits": median(counts["commits"][name]),
                "samples_ms": [1e3 * v for v in values],
            }
            for name, values in everything.items()
        }
    trials_at_end = probes["_trials"]["n"]
    greenlet = importlib.util.find_spec("greenlet") is not None
    print(
        f"optuna {optuna.__version__}, python {platform.python_version()}, SQLite in {tempfile.gettempdir()};"
        f" torch threads {threads if threads is not None else 'n/a (torch not imported)'};"
        f" greenlet {'installed' if greenlet else 'missing (GPSampler optimizes its acquisition sequentially)'};"
        f" each study ends at {trials_at_end} trials"
    )
    print("  " + "; ".join(f"{key}: {label}" for key, label in SAMPLER_LABELS.items() if key in controllers))
    for key, c in controllers.items():
        summary["samplers"][key]["epochs_reported_mean"] = statistics.fmean(c.reported)
        summary["samplers"][key]["pruned"] = sum(c.pruned)
    print(
        "  timed trials, epochs reported (mean) and pruned: "
        + "; ".join(
            f"{key} {statistics.fmean(c.reported):.1f}, {sum(c.pruned)}/{len(c.pruned)}"
            for key, c in controllers.items()
        )
    )
    print()
    print(f"{'':38}" + "".join(f"{key:^29}" for key in controllers))
    print(f"{'':38}" + f"{'median':>9}{'p90 ms':>9}{'SQL':>5}{'txn':>4}  " * len(controllers))
    for name, label in rows:
        cells = ""
        for key in controllers:
            s = summary["samplers"][key][name]
            cells += f"{s['median_ms']:9.1f}{s['p90_ms']:9.1f}{s['sql']:5.0f}{s['commits']:4.0f}  "
        print(f"{label:38}{cells}")
    print("  (SQL: statements sent; txn: transactions that wrote, each a journal file and fsyncs on SQLite)")
    print()
    verdicts = []
    for key in ("gp", "tpe"):
        med = summary["samplers"][key]["per_trial"]["median_ms"] / 1e3
        verdicts.append(f"{key} {'yes' if med < TARGET_CONTROLLER_S else 'NO'} ({med:.3f} s)")
    print(f"per trial (median) < {TARGET_CONTROLLER_S} s with {args.history} ended trials: {', '.join(verdicts)}")
    gp_ask = summary["samplers"]["gp"]["ask"]["median_ms"]
    tpe_ask = summary["samplers"]["tpe"]["ask"]["median_ms"]
    print(f"ask, GPSampler / TPESampler(multivariate=True): {gp_ask / tpe_ask:.1f}× (medians)")
    print()
    print(f"storage calls alone, {trials_at_end} trials in the gp study ({args.asks} calls each):")
    print(f"  {'':52}{'median':>9}{'p90 ms':>9}{'SQL':>5}{'txn':>4}")
    for label, s in probes.items():
        if not label.startswith("_"):
            print(f"  {label:52}{s['median_ms']:9.1f}{s['p90_ms']:9.1f}{s['sql']:5.0f}{s['commits']:4.0f}")
    print()
    print("one-off costs (single samples), with the heavy modules each newly imported:")
    for label, value in once.items():
        if isinstance(value, tuple):
            seconds, modules = value
            print(f"  {label:40}{seconds:8.3f} s   {', '.join(modules) or '-'}")
            summary["once"][label] = {"s": seconds, "imported": modules}
        else:
            print(f"  {label:40}{value}")
            summary["once"][label] = value
    return summary


def print_profile(key: str, profiler: cProfile.Profile, asks: int) -> None:
    out = io.StringIO()
    pattern = r"gradwatch/sweep|optuna/storages|optuna/study|optuna/samplers/_(gp|tpe)/sampler|optuna/_gp"
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(pattern, 20)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    print()
    print(f"cProfile, {SAMPLER_LABELS[key]}, {asks} cycles (cumulative; the controller's and Optuna's own code):")
    print("\n".join(lines[start:]))


# --- part 2: start-up -------------------------------------------------------------------------------------------

IMPORTS = (
    "",
    "gradwatch",
    "gradwatch.commands",
    "gradwatch.sweep.local",
    "optuna",
    "torch",
    "lightning",
    "wandb",
    "gradwatch.cli",
)
IMPORT_CHILD = """
import json, sys, time
t = time.perf_counter()
{statement}
seconds = time.perf_counter() - t
print(json.dumps({{"import_s": seconds, "loaded": sorted(m for m in {heavy!r} if m in sys.modules)}}))
"""

STAMP_MODULE = '''"""Written by bench/sweep_overhead.py: time.time() at fit's milestones, to $GRADWATCH_BENCH_STAMPS."""

import json
import os
import time

from lightning.pytorch import Callback


def _stamp(event):
    with open(os.environ["GRADWATCH_BENCH_STAMPS"], "a") as f:
        f.write(json.dumps({"event": event, "time": time.time()}) + "\\n")


_stamp("parsing")  # imported while the CLI resolves --trainer.callbacks


class FirstStep(Callback):
    def __init__(self):
        self._seen = set()

    def _once(self, event):
        if event not in self._seen:
            self._seen.add(event)
            _stamp(event)

    def on_fit_start(self, trainer, pl_module):
        self._once("fit_start")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._once("first_step")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._once("first_step_end")
'''
STAMPS = ("parsing", "fit_start", "first_step", "first_step_end")


def run_import(module: str) -> dict[str, Any]:
    statement = f"import {module}" if module else "pass"
    code = IMPORT_CHILD.format(statement=statement, heavy=HEAVY)
    t0 = time.perf_counter()
    done = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=child_env(), cwd=ROOT)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"python -c '{statement}' failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, **result}


def importtime_top(module: str, n: int = 8) -> list[tuple[float, str]]:
    """The largest imports of ``import module`` and its direct imports, by cumulative time (seconds, name).

    From ``python -X importtime``; what the interpreter imports at start-up anyway (``-c pass``) is left out.
    """

    def rows(statement: str) -> list[tuple[float, str, int]]:
        done = subprocess.run(
            [PYTHON, "-X", "importtime", "-c", statement], capture_output=True, text=True, env=child_env(), cwd=ROOT
        )
        out = []
        for line in done.stderr.splitlines():
            m = re.match(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|( *)(\S+)", line)
            if m:
                out.append((int(m.group(2)) / 1e6, m.group(4), len(m.group(3))))
        return out

    startup = {name for _, name, _ in rows("pass")}
    mine = [(s, name) for s, name, indent in rows(f"import {module}") if indent <= 3 and name not in startup]
    return sorted(mine, reverse=True)[:n]


def run_fit(tmp: Path, stamp: bool) -> dict[str, Any]:
    runs = tmp / "runs"
    stamps = tmp / "stamps.jsonl"
    stamps.unlink(missing_ok=True)
    command = [PYTHON, "-m", "gradwatch", "fit", "--config", FIT_CONFIG]
    if stamp:
        command += ["--trainer.max_steps=1", "--trainer.callbacks+=gwbench_stamp.FirstStep"]
    else:
        command += ["--print_config"]
    path = os.pathsep.join(p for p in (str(tmp), os.environ.get("PYTHONPATH", "")) if p)
    env = child_env(GRADWATCH_ROOT_DIR=str(runs), GRADWATCH_BENCH_STAMPS=str(stamps), PYTHONPATH=path)
    env.pop("WANDB_RUN_ID", None)
    spawned = time.time()
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-1500:]}{done.stderr[-3000:]}"
        )
    result: dict[str, Any] = {"wall_s": wall}
    if stamp:
        events = [json.loads(line) for line in stamps.read_text().splitlines()] if stamps.exists() else []
        result.update({e["event"]: e["time"] - spawned for e in events})
        missing = [s for s in STAMPS if s not in result]
        if missing:
            raise RuntimeError(f"the 1-step fit never stamped {missing}; stderr:\n{done.stderr[-3000:]}")
    return result


def part_startup(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    (tmp / "gwbench_stamp.py").write_text(STAMP_MODULE)
    units: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        (f"import:{m}", lambda m=m: run_import(m)) for m in IMPORTS
    ]
    units += [("fit:print_config", lambda: run_fit(tmp, False)), ("fit:one_step", lambda: run_fit(tmp, True))]
    print(f"start-up: {len(units)} commands, 1 untimed round + {args.repeats} interleaved rounds")
    samples: dict[str, list[dict[str, Any]]] = {key: [] for key, _ in units}
    for r in range(args.repeats + 1):
        for key, fn in units[r % len(units) :] + units[: r % len(units)]:
            result = fn()
            if r:
                samples[key].append(result)
        print(f"  round {r + 1}/{args.repeats + 1} done{' (untimed)' if r == 0 else ''}", flush=True)

    def med(key: str, field_: str) -> float:
        return median([s[field_] for s in samples[key]])

    summary: dict[str, Any] = {"imports": {}, "fit": {}, "samples": samples}
    print()
    print(f"{'fresh interpreter, spawn to exit':36}{'wall s':>9}{'import s':>10}  heavy modules loaded")
    for m in IMPORTS:
        key = f"import:{m}"
        loaded = sorted({name for s in samples[key] for name in s["loaded"]})
        label = f"import {m}" if m else "python -c pass"
        wall, imp = med(key, "wall_s"), med(key, "import_s")
        print(f"{label:36}{wall:9.2f}{imp:10.3f}  {', '.join(loaded) or '-'}")
        summary["imports"][m or "pass"] = {"wall_s": wall, "import_s": imp, "loaded": loaded}
    forbidden = [name for name in summary["imports"]["gradwatch"]["loaded"] if name in FORBIDDEN]
    verdict = "yes" if not forbidden else f"NO: {', '.join(forbidden)}"
    print(f"import gradwatch imports none of {', '.join(FORBIDDEN)}: {verdict}")
    top = importtime_top("gradwatch")
    summary["importtime_gradwatch"] = top
    print(
        "  largest imports of `import gradwatch` (-X importtime, cumulative): "
        + ", ".join(f"{n} {s * 1e3:.1f} ms" for s, n in top[:5])
    )
    print()
    print("python -m gradwatch fit --config sweeps/configs/cnn-digits.yaml ..., seconds from spawn (medians):")
    print(f"  --print_config, to exit: {med('fit:print_config', 'wall_s'):.2f}")
    labels = {
        "parsing": "CLI parsing (stamp callback imported)",
        "fit_start": "on_fit_start",
        "first_step": "first training step starts",
        "first_step_end": "first training step ends",
        "wall_s": "exit (teardown: W&B, CSV)",
    }
    for field_, label in labels.items():
        print(f"  --trainer.max_steps=1, {label + ':':40}{med('fit:one_step', field_):7.2f}")
    summary["fit"] = {
        "print_config_wall_s": med("fit:print_config", "wall_s"),
        **{f"one_step_{f}": med("fit:one_step", f) for f in labels},
    }
    return summary


# --- part 3: workers ------------------------------------------------------------------------------------------------


def run_workers(k: int, count: int | None, tmp: Path) -> dict[str, Any]:
    folder = tmp / f"workers-{k}"
    command = [PYTHON, "-m", "gradwatch", "sweep", "run", str(QUICKSTART), "--local", "--workers", str(k)]
    command += ["--dir", str(folder)] + ([] if count is None else ["--count", str(count)])
    env = child_env()
    env.pop("OMP_NUM_THREADS", None)  # the engine's own split: cores / K threads per trial
    env.pop("WANDB_RUN_ID", None)
    share = "one GPU each" if visible_gpus() else f"OMP_NUM_THREADS={max(1, (os.cpu_count() or 1) // k)} each"
    print(f"  K={k} (trials get {share}): {' '.join(command[1:])}", flush=True)
    t0 = time.perf_counter()
    first_start: float | None = None
    tail: list[str] = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.perf_counter() - t0
            tail = [*tail[-40:], line.rstrip()]
            if re.search(r"trial \d+ (started|finished|failed|pruned)", line):
                first_start = now if first_start is None and "started" in line else first_start
                print(f"    {now:7.1f} s  {line.rstrip().removeprefix('gradwatch sweep: ')}", flush=True)
        code = proc.wait()
    wall = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"K={k}: the sweep exited with {code}:\n" + "\n".join(tail))
    results = json.loads((folder / "results.json").read_text())
    ended = [r for r in results if r["state"] in ("finished", "pruned", "failed")]
    failed = [r for r in results if r["state"] == "failed"]
    if failed:
        print(f"    WARNING: {len(failed)} trials failed (see {folder}/runs/*/trial.log)")
    seconds = [r["seconds"] for r in ended if r.get("seconds") is not None]
    since_start = wall - (first_start or 0.0)
    return {
        "workers": k,
        "trials": len(ended),
        "failed": len(failed),
        "wall_s": wall,
        "from_first_start_s": since_start,
        "per_hour": 3600 * len(ended) / wall,
        "per_hour_from_first_start": 3600 * len(ended) / since_start,
        "mean_trial_s": statistics.fmean(seconds) if seconds else math.nan,
    }


def part_workers(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    grid = load_sweep(QUICKSTART).grid_size()
    count = args.count
    print(f"workers: {QUICKSTART.relative_to(ROOT)} ({grid} trials in the grid), {count or grid} trials per run")
    if "OMP_NUM_THREADS" in os.environ:
        print(f"  (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} is not passed on: the engine splits the cores)")
    runs = {k: run_workers(k, count, tmp) for k in (1, 2)}
    print()
    print(
        f"{'':12}{'trials':>8}{'wall s':>9}{'trials/h':>10}{'from 1st start':>16}{'trials/h':>10}{'mean trial s':>14}"
    )
    for k, r in runs.items():
        print(
            f"{f'--workers {k}':12}{r['trials']:8d}{r['wall_s']:9.1f}{r['per_hour']:10.1f}"
            f"{r['from_first_start_s']:16.1f}{r['per_hour_from_first_start']:10.1f}{r['mean_trial_s']:14.1f}"
        )
    ratio = runs[2]["per_hour"] / runs[1]["per_hour"]
    ratio_started = runs[2]["per_hour_from_first_start"] / runs[1]["per_hour_from_first_start"]
    print(
        f"trials per hour, 2 workers / 1: {ratio:.2f}× (from the first start: {ratio_started:.2f}×);"
        f" >= {TARGET_WORKER_RATIO}: {'yes' if ratio >= TARGET_WORKER_RATIO else 'NO'}"
    )
    return {"runs": runs, "ratio": ratio, "ratio_from_first_start": ratio_started}


# --- main ---------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--part", choices=("controller", "startup", "workers", "all"), default="all", help="(default: all)"
    )
    parser.add_argument("--history", type=int, default=100, help="ended trials before timing (default: 100)")
    parser.add_argument("--asks", type=int, help="timed trials per sampler (default: 20; quick: 5)")
    parser.add_argument("--repeats", type=int, help="timed rounds of the start-up commands (default: 5; quick: 1)")
    parser.add_argument("--count", type=int, help="trials per worker count (default: the grid, 8; quick: 4)")
    parser.add_argument("--no-hyperband", action="store_true", help="controller: the bayes sweep without pruning")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads in the controller (default: torch's own)")
    parser.add_argument("--profile", action="store_true", help="also cProfile the controller's gp and tpe cycles")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few minutes; numbers meaningless")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every measurement here")
    args = parser.parse_args(argv)
    defaults = {"asks": (20, 5), "repeats": (5, 1), "count": (None, 4)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.history < 0 or args.asks < 1 or args.repeats < 1 or (args.count is not None and args.count < 1):
        parser.error("--history must be >= 0; --asks, --repeats and --count >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    began = time.perf_counter()
    parts = ("controller", "startup", "workers") if args.part == "all" else (args.part,)
    print(f"python {platform.python_version()} on {os.cpu_count()} cores; parts: {', '.join(parts)}")
    results: dict[str, Any] = {}
    functions = {"controller": part_controller, "startup": part_startup, "workers": part_workers}
    with tempfile.TemporaryDirectory(prefix="gradwatch-sweep-bench-") as tmp_dir:
        for part in parts:
            print()
            folder = Path(tmp_dir) / part
            folder.mkdir()
            results[part] = functions[part](args, folder)
    if args.json is not None:
        result = {
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "python": platform.python_version(),
            "cores": os.cpu_count(),
            **results,
        }
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    elapsed = time.perf_counter() - began
    print()
    print(f"took {elapsed:.0f} s; load average over the last 5 minutes: {os.getloadavg()[1]:.2f}")


if __name__ == "__main__":
    main()
