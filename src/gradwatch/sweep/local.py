"""The local sweep engine: a W&B sweep file run on Optuna, each trial its own process with W&B offline.

The study lives in the sweep folder (SQLite) or in any Optuna RDB storage shared by several machines. Trials run
the file's ``command`` expanded exactly as ``wandb agent`` expands it, with the environment the agent gives a trial
(``WANDB_RUN_ID``, ``WANDB_SWEEP_PARAM_PATH``), so the same program works under both engines. The controller reads
each trial's ``metrics.csv`` while it runs: the metric goes to the pruner, a pruned trial gets SIGTERM (Lightning
finishes its run cleanly) and is recorded as pruned.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gradwatch.rundir import (
    METRICS_FILE,
    ROOT_DIR_ENV,
    RUNS_DIR,
    STUDY_FILE,
    SWEEP_FILE,
    health_summary,
    read_metrics,
    trial_files,
)
from gradwatch.sweep.command import expand_command
from gradwatch.sweep.spec import SweepError, SweepSpec
from gradwatch.sweep.workers import visible_gpus, worker_env

#: Seconds between heartbeats of running trials; a trial silent for GRACE_PERIOD is taken as interrupted.
HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 60
#: Seconds a trial gets to finish after SIGTERM before SIGKILL (as ``wandb agent`` waits).
KILL_DELAY = 30
POLL_INTERVAL = 0.5


@dataclass
class _Running:
    """A trial whose process is alive."""

    trial: Any  # optuna.Trial
    run_dir: Path
    process: subprocess.Popen
    log: IO[bytes]
    slot: int
    started: float = field(default_factory=time.monotonic)
    reported: int = 0
    csv_stamp: tuple[int, int] = (0, 0)
    pruned_at: int | None = None
    terminated: float | None = None


class LocalSweep:
    """Run a sweep file on Optuna, ``workers`` trials at a time, until ``count`` trials have ended.

    Args:
        spec: The validated sweep.
        folder: The sweep folder: storage (unless ``storage``), trial runs under ``runs/``, results.
        storage: An Optuna RDB URL to share the study between machines; SQLite in ``folder`` when ``None``.
        workers: Trials run at once. Each gets one GPU when there are GPUs, else ``cores / workers`` threads.
        count: Trials to end in total (finished, pruned or failed), across restarts; the grid size or ``run_cap``
            when ``None``, whichever is smaller.
        echo: Where progress lines go.

    Raises:
        SweepError: the storage cannot be opened, it holds a different sweep under this name, another controller
            runs in ``folder``, or a random / bayes sweep has neither ``count`` nor ``run_cap``.
    """

    def __init__(
        self,
        spec: SweepSpec,
        folder: str | Path,
        *,
        storage: str | None = None,
        workers: int = 1,
        count: int | None = None,
        echo: Callable[[str], None] = print,
    ) -> None:
        spec.check_local()
        if workers < 1:
            raise SweepError(f"--workers must be >= 1, got {workers}")
        if count is not None and count < 1:
            raise SweepError(f"--count must be >= 1, got {count}")
        self.spec = spec
        self.folder = Path(folder).resolve()
        self.workers = workers
        self.echo = echo
        self.total = self._total(count)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.folder)
        self.storage_url = with_driver(storage) if storage else f"sqlite:///{(self.folder / STUDY_FILE).resolve()}"
        self._shared = storage is not None
        self.study = self._open_study()
        self._space = self._distributions()
        self._running: list[_Running] = []
        self._target_reached = False
        self._last_heartbeat = 0.0
        self._gpus = visible_gpus()

    def _total(self, count: int | None) -> int:
        caps = [c for c in (count, self.spec.run_cap) if c is not None]
        if self.spec.method == "grid":
            caps.append(self.spec.grid_size())
        if not caps:
            raise SweepError(
                f"{self.spec.path}: a {self.spec.method} sweep runs until stopped on W&B; "
                "locally give --count N or run_cap in the file"
            )
        return min(caps)

    def _open_study(self) -> Any:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # Heartbeats are "experimental" and meant for `Study.optimize`; this controller records them itself.
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        if not self._shared:
            _sqlite_wal(self.folder / STUDY_FILE)
        try:
            storage = optuna.storages.RDBStorage(
                self.storage_url,
                heartbeat_interval=HEARTBEAT_INTERVAL,
                grace_period=GRACE_PERIOD,
                heartbeat_stale_trial_callback=self._retry,
            )
        except Exception as exc:  # SQLAlchemy raises its own types for bad URLs, drivers and unreachable servers
            raise SweepError(f"cannot open --storage {self.storage_url}: {exc}") from None
        metric = self.spec.metric
        study = optuna.create_study(
            storage=storage,
            study_name=self.spec.name,
            direction="maximize" if metric is not None and metric.goal == "maximize" else "minimize",
            sampler=self._sampler(),
            pruner=self._pruner(),
            load_if_exists=True,
        )
        stored = study.user_attrs.get("sweep")
        if stored is None:
            study.set_user_attr("sweep", _jsonable(self.spec.config))
        elif stored != _jsonable(self.spec.config):
            raise SweepError(
                f"{self.storage_url} already holds a different sweep named {self.spec.name!r}: "
                "give this one another --dir (or name), or restore the file it was started with"
            )
        # The file as it runs, named, next to its runs: `gradwatch report` reads the parameters and metric from it.
        named = {**_jsonable(self.spec.config), "name": self.spec.name}
        (self.folder / SWEEP_FILE).write_text(json.dumps(named, indent=2))
        # With its own storage this controller is alone (the folder lock), so every running trial lost its
        # controller; on shared storage only trials whose heartbeat stopped did.
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if not self._shared:
            for trial in running:
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
                self._retry(study, trial)
        else:
            optuna.storages.fail_stale_trials(study)
        return study

    def _sampler(self) -> Any:
        import optuna

        if self.spec.method == "grid":
            return _grid_sampler({p.name: p.grid() for p in self.spec.parameters.values()})
        if self.spec.method == "random":
            return optuna.samplers.RandomSampler()
        # TPE, not GP: at 100 finished trials a GP proposal took 0.6-5 s of the controller's (and the trials') CPU,
        # TPE's 50-150 ms (measured by the phase-by-phase controller bench, bench/README.md).
        return optuna.samplers.TPESampler(multivariate=True, n_startup_trials=min(10, max(2, self.total // 4)))

    def _pruner(self) -> Any:
        import optuna

        hb = self.spec.early_terminate
        if hb is None:
            return optuna.pruners.NopPruner()
        # Steps are the metric's log index (0-based, as W&B's bands): max_iter logs end at step max_iter - 1.
        max_resource = "auto" if hb.max_iter is None else max(hb.min_iter, hb.max_iter - 1)
        return optuna.pruners.HyperbandPruner(
            min_resource=hb.min_iter, max_resource=max_resource, reduction_factor=hb.eta
        )

    def _distributions(self) -> dict[str, Any]:
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        out: dict[str, Any] = {}
        for p in self.spec.parameters.values():
            if self.spec.method == "grid" or p.distribution in ("constant", "categorical"):
                out[p.name] = CategoricalDistribution(p.grid())
            elif p.distribution == "int_uniform":
                out[p.name] = IntDistribution(int(p.min), int(p.max))
            elif p.distribution == "uniform":
                out[p.name] = FloatDistribution(p.min, p.max)
            elif p.distribution == "q_uniform":
                out[p.name] = FloatDistribution(p.min, p.max, step=p.q or 1.0)
            elif p.distribution == "log_uniform":  # W&B: min and max are natural logs
                out[p.name] = FloatDistribution(math.exp(p.min), math.exp(p.max), log=True)
            else:  # log_uniform_values, inv_log_uniform_values: both log-uniform between the values
                out[p.name] = FloatDistribution(p.min, p.max, log=True)
        return out

    @staticmethod
    def _retry(study: Any, trial: Any) -> None:
        """Queue the parameters of a trial that lost its controller again; the new trial names the one it retries."""
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)

    def ended(self) -> int:
        """Trials that ended (finished, pruned, or failed on their own), across every controller of the study."""
        trials = self.study.get_trials(deepcopy=False)
        retried = interrupted(trials)
        return sum(1 for t in trials if t.state.is_finished() and t.number not in retried)

    def run(self) -> None:
        """Run trials until ``count`` have ended or the metric's target is reached; then return.

        SIGINT or SIGTERM stops the running trials cleanly and marks them interrupted, so the next run of the same
        command retries them.
        """
        ended = self.ended()
        if ended >= self.total:
            self.echo(f"sweep {self.spec.name}: all {self.total} trials already ended ({self.folder})")
            return
        self.echo(
            f"sweep {self.spec.name}: {self.total - ended} of {self.total} trials to run, {self.workers} at a time"
        )
        with _stop_on_signals():
            try:
                while True:
                    self._poll()
                    self._launch()
                    if not self._running:
                        break
                    time.sleep(POLL_INTERVAL)
            except KeyboardInterrupt:
                self._interrupt()
                raise

    def _launch(self) -> None:
        from optuna.trial import TrialState

        while len(self._running) < self.workers and not self._target_reached:
            others = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if self.ended() + len(others) >= self.total:
                return
            self._start(self.study.ask(self._space))

    def _start(self, trial: Any) -> None:
        from gradwatch.loggers import fresh_run_id

        params = {name: trial.params[name] for name in self.spec.parameters}
        run_id = fresh_run_id()
        runs = self.folder / RUNS_DIR
        run_dir = runs / run_id
        run_dir.mkdir(parents=True)
        # As `wandb agent` does: the parameters as a W&B config file (loaded and locked by `wandb.init`) and as JSON.
        config_file, json_file = trial_files(self.folder, run_id)
        config_file.parent.mkdir(exist_ok=True)
        config = {name: {"value": value} for name, value in params.items()}
        config["sweep_name"] = {"value": self.spec.name}
        config_file.write_text(json.dumps(config))  # JSON is YAML; W&B reads it as a config file
        json_file.write_text(json.dumps(params))
        command = expand_command(self.spec.command, params, program=self.spec.program, args_json_file=str(json_file))
        slot = min(set(range(self.workers)) - {r.slot for r in self._running})
        env = self._environment(run_id, runs, config_file, slot)
        trial.set_user_attr("run", {"id": run_id, "dir": str(run_dir), "command": command})
        log = (run_dir / "trial.log").open("wb")
        process = subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        self.study._storage.record_heartbeat(trial._trial_id)
        self._running.append(_Running(trial, run_dir, process, log, slot))
        shown = " ".join(f"{k}={v}" for k, v in params.items())
        self.echo(f"trial {trial.number} started: {shown} (run {run_id})")

    def _environment(self, run_id: str, runs: Path, config_file: Path, slot: int) -> dict[str, str]:
        env = dict(os.environ)
        # A W&B service this controller started must not adopt the trial's run: each trial starts its own.
        env.pop("WANDB_SERVICE", None)
        # `${interpreter}` is `python` on PATH: the one of the environment running this sweep comes first.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.update(
            WANDB_MODE="offline",
            WANDB_RUN_ID=run_id,
            WANDB_SWEEP_PARAM_PATH=str(config_file.resolve()),
            WANDB_RUN_GROUP=self.spec.name,
            NO_ALBUMENTATIONS_UPDATE="1",
            **{ROOT_DIR_ENV: str(runs.resolve())},
        )
        env.update(worker_env(slot, self.workers, self._gpus))
        return env

    def _poll(self) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat > HEARTBEAT_INTERVAL / 2:
            for r in self._running:
                self.study._storage.record_heartbeat(r.trial._trial_id)
            self._last_heartbeat = now
            if self._shared:  # another machine's controller may have died since: retry its trials
                import optuna

                optuna.storages.fail_stale_trials(self.study)
        for r in list(self._running):
            self._report(r)
            code = r.process.poll()
            if code is not None:
                self._finish(r, code)
            elif r.terminated is not None and now - r.terminated > KILL_DELAY:
                r.process.kill()

    def _report(self, r: _Running) -> None:
        # Only a pruner reads values while a trial runs; without one the final value is told at the end.
        if self.spec.early_terminate is None or r.pruned_at is not None:
            return
        try:  # a long run's CSV is large: read it again only when it changed
            stat = (r.run_dir / METRICS_FILE).stat()
        except FileNotFoundError:
            return
        if (stat.st_mtime_ns, stat.st_size) == r.csv_stamp:
            return
        r.csv_stamp = (stat.st_mtime_ns, stat.st_size)
        name = self.spec.metric.name
        values = read_metrics(r.run_dir / METRICS_FILE).values(name)
        rungs = [step for step in range(r.reported, len(values)) if self._is_rung(step)]
        r.reported = len(values)
        for step in rungs:
            r.trial.report(values[step], step)
        if rungs and r.trial.should_prune():
            r.pruned_at = r.reported
            r.process.terminate()  # Lightning stops at the next step and finishes the run cleanly
            r.terminated = time.monotonic()

    def _is_rung(self, step: int) -> bool:
        """Whether Hyperband can compare trials at ``step``: ``min_iter × eta^k``, the only steps its brackets read.

        Each report and pruning check is a few storage transactions, so the values between rungs are not sent.
        """
        hb = self.spec.early_terminate
        assert hb is not None
        while step > hb.min_iter and step % hb.eta == 0:
            step //= hb.eta
        return step == hb.min_iter

    def _finish(self, r: _Running, code: int) -> None:
        from optuna.trial import TrialState

        r.log.close()
        self._running.remove(r)
        metrics = read_metrics(r.run_dir / METRICS_FILE)
        trial, seconds = r.trial, time.monotonic() - r.started
        # One write: each storage transaction costs the controller milliseconds.
        outcome = {"exit_code": code, "seconds": round(seconds, 1), "health": health_summary(metrics)}
        metric = self.spec.metric
        values = metrics.values(metric.name) if metric is not None else []
        if r.pruned_at is None and not (code == 0 and (metric is None or values)):
            outcome["error"] = f"exit code {code}" if code else f"{metric.name} was never logged"
        trial.set_user_attr("outcome", outcome)
        if r.pruned_at is not None:
            self.study.tell(trial, state=TrialState.PRUNED)
            self.echo(f"trial {trial.number} pruned after {r.pruned_at} {metric.name} values ({seconds:.0f} s)")
        elif code == 0 and metric is not None and values:
            if self.spec.early_terminate is not None and not self._is_rung(len(values) - 1):
                # The pruner sizes its brackets ("auto" max_iter) from the last step of finished trials.
                trial.report(values[-1], len(values) - 1)
            self.study.tell(trial, values[-1])
            self.echo(f"trial {trial.number} finished: {metric.name} {values[-1]:.4g} ({seconds:.0f} s)")
            if metric.reached(values[-1]):
                self._target_reached = True
                self.echo(f"sweep {self.spec.name}: {metric.name} reached the target {metric.target}; no new trials")
        elif code == 0 and metric is None:
            # Grid and random search need no metric; Optuna needs a value to call a trial complete.
            self.study.tell(trial, 0.0)
            self.echo(f"trial {trial.number} finished ({seconds:.0f} s)")
        else:
            self.study.tell(trial, state=TrialState.FAIL)
            self.echo(f"trial {trial.number} failed: {outcome['error']} (log: {r.run_dir / 'trial.log'})")

    def _interrupt(self) -> None:
        from optuna.trial import TrialState

        for r in self._running:
            r.process.terminate()
        deadline = time.monotonic() + KILL_DELAY
        for r in self._running:
            try:
                r.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                r.process.kill()
                r.process.wait()
            r.log.close()
            self.study.tell(r.trial, state=TrialState.FAIL)
            self._retry(self.study, self.study._storage.get_trial(r.trial._trial_id))
        self.echo(f"sweep {self.spec.name}: interrupted; {len(self._running)} running trials will be retried")
        self._running.clear()


def _grid_sampler(search_space: dict[str, list[Any]]) -> Any:
    """Optuna's grid sampler, minus its ``Study.stop()`` once the grid is visited (valid only inside ``optimize``).

    The controller stops by counting ended trials instead. Seeded, so the grid's order is the same on every run.
    """
    import optuna

    class GridSampler(optuna.samplers.GridSampler):
        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            """Do nothing."""

    return GridSampler(search_space, seed=0)


#: Database URL schemes → (the SQLAlchemy driver gradwatch installs for it, the extra that installs it).
DRIVERS = {"postgresql": ("psycopg", "postgres"), "postgres": ("psycopg", "postgres")}


def with_driver(url: str) -> str:
    """``url`` with the SQLAlchemy driver gradwatch's extra installs, when it names none.

    ``postgresql://`` means SQLAlchemy's psycopg2 by default; the ``postgres`` extra installs psycopg 3, so the URL
    becomes ``postgresql+psycopg://`` unless psycopg2 is importable. A URL naming its driver is left alone.

    Raises:
        SweepError: no driver for the URL's database is installed (the message says how to get one).
    """
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if not sep or "+" in scheme or scheme not in DRIVERS:
        return url
    driver, extra = DRIVERS[scheme]
    if importlib.util.find_spec("psycopg2") is not None:
        return url
    if importlib.util.find_spec(driver) is None:
        raise SweepError(
            f"--storage {url}: no PostgreSQL driver is installed; install gradwatch's {extra!r} extra (psycopg 3; in "
            f"a checkout: .venv/bin/pip install -e '.[{extra}]') or psycopg2"
        )
    return f"postgresql+{driver}://{rest}"


def interrupted(trials: list[Any]) -> set[int]:
    """Numbers of the trials that were interrupted (their controller died or was stopped) and queued again."""
    return {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _lock(folder: Path) -> IO[str]:
    """Hold the folder's lock for this controller's lifetime; the kernel releases it when the process dies."""
    handle = (folder / "controller.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip() or "?"
        raise SweepError(f"another gradwatch sweep controller (pid {pid}) is running in {folder}") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _sqlite_wal(path: Path) -> None:
    """Put the sweep's own SQLite file in write-ahead-log mode (kept in the file).

    Each trial costs the controller a few dozen small transactions; with the default rollback journal each one
    was 8-12 ms of fsync, with WAL 1.5-2.5 ms (bench/README.md, sweep engine). Readers never block the writer either.
    """
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")


def _die_with_parent() -> None:
    """In the trial's process: get SIGTERM when the controller dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while the sweep runs, so both stop the trials cleanly."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
