"""What does the local sweep controller cost per trial, the trial's own process excluded? Public API only.

``LocalSweep(...).run()`` on a bayes sweep (TPE, what ships) and a random one (the floor) with hyperband, whose
trials are ``stand_in_trial.py`` (no training); after ``--history`` ended trials, the controller process's CPU time
(user + sys) per ended trial. Target: under 0.2 s at 100 finished trials. ``.venv/bin/python
bench/sweep_controller.py`` (three to four minutes on 2 cores); ``--quick`` is a smoke run; ``--json PATH``. What it
measures and how to read it: ``bench/README.md``.
"""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "offline")

import argparse
import gc
import itertools
import platform
import re
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from common import ROOT, add_quick_and_json, begin, finish, median, p90, resolve_defaults, rotate, write_json

# Nothing heavier than the controller's own imports: its process is this one, and `gradwatch sweep run` imports
# no torch. Optuna first, here: importing it keeps the frames of whatever imports it first alive for good (its
# optional redis import keeps a traceback), and a LocalSweep kept alive keeps its folder's lock.
from gradwatch.sweep.local import LocalSweep
from gradwatch.sweep.spec import SweepSpec, parse_sweep

TARGET_CPU_S = 0.2
METHODS = ("bayes", "random")
LABELS = {"bayes": "bayes (TPE, shipped)", "random": "random (the floor)"}
STAND_IN = ROOT / "bench" / "stand_in_trial.py"
#: The heavy modules listed when the controller's process holds them, for information.
HEAVY = ("torch", "lightning", "wandb", "plotly", "numpy", "optuna", "sqlalchemy", "scipy")
ENDED = re.compile(r"^trial (\d+) (finished|pruned|failed)")


def sweep_config(method: str, epoch_seconds: float, hyperband: bool) -> dict[str, Any]:
    """Like ``sweeps/cnn-bayes.yaml`` (its ``run_cap`` left out: the bench sets ``count``), run by the stand-in."""
    config: dict[str, Any] = {
        "name": f"controller-{method}",
        "method": method,
        "metric": {"name": "val/acc", "goal": "maximize"},
        "parameters": {
            "model.depth": {"distribution": "int_uniform", "min": 2, "max": 24},
            "model.activation": {"values": ["relu", "leaky_relu", "gelu", "tanh", "sigmoid"]},
            "model.norm": {"values": ["none", "batch", "group"]},
            "model.residual": {"values": [False, True]},
            "model.init": {"values": ["default", "kaiming", "xavier", "orthogonal"]},
            "model.optimizer.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 3e-2},
            "trainer.max_epochs": {"value": 15},
            "stand_in.epoch_seconds": {"value": epoch_seconds},
        },
        "command": ["${env}", "${interpreter}", str(STAND_IN), "${args}"],
    }
    if hyperband:
        config["early_terminate"] = {"type": "hyperband", "min_iter": 3, "eta": 3}
    return config


class SqlCounter:
    """SQL statements sent and transactions that wrote (``txn``), through SQLAlchemy's events on every Engine.

    On SQLite each committed write is a journal append and fsyncs, milliseconds however small; a transaction that
    only read commits for free.
    """

    def __init__(self) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        self.statements = 0
        self.writes = 0
        self._dirty = False
        event.listen(Engine, "before_cursor_execute", self._execute)
        event.listen(Engine, "commit", self._commit)
        event.listen(Engine, "rollback", self._rollback)

    def _execute(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements += 1
        if statement.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
            self._dirty = True

    def _commit(self, conn: Any) -> None:
        self.writes += self._dirty
        self._dirty = False

    def _rollback(self, conn: Any) -> None:
        self._dirty = False


def cpu_seconds() -> float:
    """This process's CPU time so far, user + sys (its children, the trials, excluded)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Mark:
    """The counters at one moment: CPU, wall clock, SQL."""

    cpu: float
    wall: float
    statements: int
    writes: int

    @classmethod
    def now(cls, sql: SqlCounter) -> Mark:
        return cls(cpu_seconds(), time.perf_counter(), sql.statements, sql.writes)

    def since(self, earlier: Mark) -> dict[str, float]:
        return {
            "cpu_s": self.cpu - earlier.cpu,
            "wall_s": self.wall - earlier.wall,
            "sql": self.statements - earlier.statements,
            "txn": self.writes - earlier.writes,
        }


@dataclass
class Phase:
    """One ``run()`` of a ``LocalSweep``: the counters at its start, at each trial's end line and at its end."""

    start: Mark
    ends: list[Mark] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    end: Mark | None = None

    def per_trial(self) -> list[dict[str, float]]:
        """Each ended trial's share: from the previous trial's end (or the run's start) to its own end."""
        marks = [self.start, *self.ends]
        return [later.since(earlier) for earlier, later in itertools.pairwise(marks)]


def run_sweep(spec: SweepSpec, folder: Path, count: int, workers: int, sql: SqlCounter) -> tuple[Phase, float]:
    """``LocalSweep(spec, folder, count=count, workers=workers).run()``, counted; and the constructor's seconds."""
    t0 = time.perf_counter()
    phase: Phase | None = None

    def echo(line: str) -> None:
        m = ENDED.match(line)
        if m and phase is not None:
            phase.ends.append(Mark.now(sql))
            phase.states.append(m.group(2))
            if m.group(2) == "failed":
                print(f"    WARNING: {line}", flush=True)

    sweep = LocalSweep(spec, folder, count=count, workers=workers, echo=echo)
    built = time.perf_counter() - t0
    phase = Phase(Mark.now(sql))
    sweep.run()
    phase.end = Mark.now(sql)
    del sweep  # its folder lock goes with it: the next LocalSweep on this folder resumes the study
    gc.collect()
    return phase, built


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    sql = SqlCounter()
    specs = {m: parse_sweep(sweep_config(m, args.epoch_seconds, not args.no_hyperband), f"{m}.yaml") for m in METHODS}
    pruner = "no early termination" if args.no_hyperband else "hyperband (min_iter 3, eta 3)"
    print(
        f"controller: 6 swept parameters like sweeps/cnn-bayes.yaml, {pruner}, val/acc maximized; trials are"
        f" bench/stand_in_trial.py: 15 epochs, {args.epoch_seconds} s apart"
    )
    history: dict[str, Any] = {}
    for method in METHODS:
        t0 = time.perf_counter()
        phase, _ = run_sweep(specs[method], tmp / method, args.history, args.workers, sql)
        history[method] = {"trials": len(phase.ends), "wall_s": time.perf_counter() - t0}
        print(
            f"  history, {method}: {len(phase.ends)} ended trials, {args.workers} at a time, untimed:"
            f" {history[method]['wall_s']:.0f} s",
            flush=True,
        )
    per_round = -(-args.asks // args.rounds)
    phases: dict[str, list[Phase]] = {m: [] for m in METHODS}
    built: dict[str, list[float]] = {m: [] for m in METHODS}
    ended = dict.fromkeys(METHODS, args.history)
    for r in range(args.rounds):
        for method in rotate(METHODS, r):
            ended[method] = min(args.history + args.asks, ended[method] + per_round)
            phase, seconds = run_sweep(specs[method], tmp / method, ended[method], 1, sql)
            phases[method].append(phase)
            built[method].append(seconds)
        print(f"  timed round {r + 1}/{args.rounds} done", flush=True)
    return {"history": history, "methods": {m: summarize(phases[m], built[m]) for m in METHODS}}


def summarize(phases: list[Phase], built: list[float]) -> dict[str, Any]:
    trials = [t for p in phases for t in p.per_trial()]
    states = [s for p in phases for s in p.states]
    runs = [p.end.since(p.start) for p in phases if p.end is not None]
    n = len(trials)
    whole = {key: sum(r[key] for r in runs) / max(1, n) for key in ("cpu_s", "wall_s", "sql", "txn")}
    return {
        "trials": n,
        "pruned": states.count("pruned"),
        "failed": states.count("failed"),
        "per_run": whole,
        "per_trial": {
            key: {"median": median([t[key] for t in trials]), "p90": p90([t[key] for t in trials])}
            for key in ("cpu_s", "wall_s", "sql", "txn")
        },
        "samples": trials,
        "constructor_s": {"median": median(built), "max": max(built, default=float("nan"))},
    }


def report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    import sqlalchemy

    methods = results["methods"]
    print()
    print(
        f"optuna {optuna.__version__}, sqlalchemy {sqlalchemy.__version__}, python {platform.python_version()},"
        f" SQLite in {tempfile.gettempdir()}; timed trials one at a time, {args.rounds} interleaved rounds"
    )
    heavy = [name for name in HEAVY if name in sys.modules]
    print(f"  heavy modules in the controller's process: {', '.join(heavy) or '-'}")
    print()
    print(f"{'per ended trial':24}{'CPU s':^25}{'wall s':>9}{'SQL':>7}{'txn':>7}   trials")
    print(f"{'':24}{'run()':>9}{'median':>8}{'p90':>8}{'run()':>9}{'median':>7}{'median':>7}")
    for method, s in methods.items():
        t = s["per_trial"]
        print(
            f"{LABELS[method]:24}{s['per_run']['cpu_s']:9.3f}{t['cpu_s']['median']:8.3f}{t['cpu_s']['p90']:8.3f}"
            f"{s['per_run']['wall_s']:9.2f}{t['sql']['median']:7.0f}{t['txn']['median']:7.0f}"
            f"   {s['trials']} ({s['pruned']} pruned, {s['failed']} failed)"
        )
    print(
        "  (run(): the timed run()s' totals over the trials they ended; median, p90: from one trial's end line to the"
        " next; SQL: statements sent; txn: transactions that wrote)"
    )
    for method, s in methods.items():
        c = s["constructor_s"]
        print(f"  LocalSweep() resuming the {method} study: {c['median']:.2f} s median, {c['max']:.2f} s max (wall)")
    bayes = methods["bayes"]["per_trial"]["cpu_s"]["median"]
    verdict = "yes" if bayes < TARGET_CPU_S else "NO"
    print()
    print(f"controller CPU per trial (median) < {TARGET_CPU_S} s at {args.history} ended trials, bayes: {verdict}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, help="ended trials before timing (default: 100; quick: 6)")
    parser.add_argument("--asks", type=int, help="timed trials per method (default: 20; quick: 4)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds the timed trials come in (default: 4; quick: 2)")
    parser.add_argument("--workers", type=int, default=2, help="stand-in trials at once in the history (default: 2)")
    parser.add_argument(
        "--epoch-seconds", type=float, help="the stand-in's pause between epochs (default: 0.1; quick: 0.05)"
    )
    parser.add_argument("--no-hyperband", action="store_true", help="the sweeps without early termination")
    add_quick_and_json(parser, "a smoke run of under a minute; numbers meaningless")
    args = parser.parse_args(argv)
    defaults = {"history": (100, 6), "asks": (20, 4), "rounds": (4, 2), "epoch_seconds": (0.1, 0.05)}
    resolve_defaults(args, defaults)
    if args.history < 1 or args.asks < 1 or args.workers < 1 or not 1 <= args.rounds <= args.asks:
        parser.error("--history, --asks and --workers must be >= 1, --rounds between 1 and --asks")
    if args.epoch_seconds < 0:
        parser.error("--epoch-seconds must be >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    began = begin()
    with tempfile.TemporaryDirectory(prefix="gradwatch-controller-bench-") as tmp:
        results = measure(args, Path(tmp))
    report(args, results)
    write_json(args.json, {"config": vars(args), "cores": os.cpu_count(), **results})
    finish(began)


if __name__ == "__main__":
    main()
