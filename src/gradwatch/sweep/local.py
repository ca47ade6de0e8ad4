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
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gradwatch.rundir import (
    CHECKPOINTS_DIR,
    METRICS_FILE,
    PREEMPTED_EXIT,
    RESUME_ENV,
    ROOT_DIR_ENV,
    RUNS_DIR,
    STOP_FILE,
    STUDY_FILE,
    SWEEP_FILE,
    health_summary,
    latest_checkpoint,
    read_metrics,
    trial_files,
    write_atomic,
)
from gradwatch.sweep.command import expand_command
from gradwatch.sweep.recover import queue_again, rebuild, recovery_hint, started_runs
from gradwatch.sweep.results import collect, save
from gradwatch.sweep.spec import MAX_GRID, SweepError, SweepSpec
from gradwatch.sweep.warm import WarmProcess, WarmWorkers
from gradwatch.sweep.workers import visible_gpus, worker_env

#: Seconds between heartbeats of running trials; a trial silent for GRACE_PERIOD is taken as interrupted.
HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 60
#: Seconds a trial gets to finish after SIGTERM before SIGKILL (as ``wandb agent`` waits).
KILL_DELAY = 30
POLL_INTERVAL = 0.5
#: Times in a row a trial may be preempted (exit 143) and run again before it counts as failed.
MAX_PREEMPTIONS = 3
#: The first key of gradwatch's PostgreSQL advisory locks ("gwsw"); the second is 0 (the schema) or a study's id.
LOCK_NAMESPACE = int.from_bytes(b"gwsw", "big")


@dataclass
class _Running:
    """A trial whose process is alive."""

    trial: Any  # optuna.Trial
    run_dir: Path
    process: subprocess.Popen | WarmProcess
    log: IO[bytes]
    slot: int
    started: float = field(default_factory=time.monotonic)
    reported: int = 0
    csv_stamp: tuple[int, int] = (0, 0)
    pruned_at: int | None = None
    terminated: float | None = None


@dataclass(frozen=True)
class Progress:
    """Where a local sweep stands (:meth:`LocalSweep.progress`).

    Attributes:
        total: Trials the sweep runs in all.
        ended: Trials that ended (finished, pruned or failed), on every machine.
        running: Trials this controller runs now.
        elsewhere: Trials other controllers of a shared study run now.
        best: The best finished value of the metric so far and its trial number.
        elapsed: Seconds since :meth:`LocalSweep.run` started.
        ended_here: Trials this controller ended since then: the pace the ETA is drawn from.
    """

    total: int
    ended: int
    running: int
    elsewhere: int
    best: tuple[float, int] | None
    elapsed: float
    ended_here: int

    @property
    def queued(self) -> int:
        """Trials not started yet."""
        return max(self.total - self.ended - self.running - self.elsewhere, 0)

    @property
    def eta(self) -> float | None:
        """Seconds until the last trial ends at the pace so far; ``None`` before a trial ended here."""
        if not self.ended_here:
            return None
        return self.elapsed / self.ended_here * max(self.total - self.ended, 0)


class LocalSweep:
    """Run a sweep file on Optuna, ``workers`` trials at a time, until ``count`` trials have ended.

    Args:
        spec: The validated sweep.
        folder: The sweep folder: storage (unless ``storage``), trial runs under ``runs/``, results.
        storage: An Optuna RDB URL to share the study between machines; SQLite in ``folder`` when ``None``.
        workers: Trials run at once. Each gets one GPU when there are GPUs, else ``cores / workers`` threads.
        count: Trials to end in total (finished, pruned or failed), across restarts; the grid size or ``run_cap``
            when ``None``, whichever is smaller.
        max_grid: The most combinations a grid sweep may have (``--max-grid``).
        echo: Where progress lines go.
        on_event: Where the lines of routine events go (a trial started, finished or pruned); ``echo`` when
            ``None``. A live status line shows them in place instead of printing each.
        warm: Start trials of gradwatch's own command from a warm worker that has imported torch and Lightning
            (:mod:`gradwatch.sweep.warm`), or from this one, already launched; ``False``: every trial is a fresh
            process.
        environ: The environment trials start from (before the engine's own variables); this process's by
            default. A controller passes the one it was started with: what its own imports set in ``os.environ``
            (Lightning sets ``KMP_DUPLICATE_LIB_OK``) is not the user's, and would tell trials from the warm worker.

    Raises:
        SweepError: before the folder is made: the file asks what the engine cannot run, its program is missing, the
            shared storage cannot be opened or holds a different sweep under this name, or a random / bayes sweep has
            neither ``count`` nor ``run_cap``. In an existing folder: another controller runs there, or its
            ``sweep.db`` is damaged or lost with nothing to rebuild it from.
    """

    def __init__(
        self,
        spec: SweepSpec,
        folder: str | Path,
        *,
        storage: str | None = None,
        workers: int = 1,
        count: int | None = None,
        max_grid: int = MAX_GRID,
        echo: Callable[[str], None] = print,
        on_event: Callable[[str], None] | None = None,
        warm: bool | WarmWorkers = True,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        spec.check_local(max_grid)
        if workers < 1:
            raise SweepError(f"--workers must be >= 1, got {workers}")
        if count is not None and count < 1:
            raise SweepError(f"--count must be >= 1, got {count}")
        check_command(spec)
        self.spec = spec
        self.folder = Path(folder).resolve()
        self.workers = workers
        self.echo = echo
        self.on_event = on_event or echo
        self.total = self._total(count)
        self._space = self._distributions()
        self._shared = storage is not None
        self.storage_url = with_driver(storage) if storage else f"sqlite:///{self.folder / STUDY_FILE}"
        self._storage_given = storage or self.storage_url
        # Whatever can fail is tried before the folder exists, so a refused start leaves nothing behind. The sweep's
        # own SQLite file needs its folder first, and can only fail to open when a folder was there already.
        shared = self._open_study() if self._shared else None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SweepError(f"cannot create the sweep folder {self.folder}: {exc.strerror}") from None
        self._lock = _lock(self.folder)
        self.study = shared if shared is not None else self._open_own_study()
        self._adopt()
        self._running: list[_Running] = []
        self._run_started, self._ended_here = time.monotonic(), 0
        self._target_reached = False
        self._waiting = False
        self._last_heartbeat = 0.0
        self._gpus = visible_gpus()
        self._environ = dict(environ if environ is not None else os.environ)
        self._warm = (
            warm if isinstance(warm, WarmWorkers) else WarmWorkers(echo=echo, environ=self._environ) if warm else None
        )
        if self._warm is not None:
            self._warm.echo = echo

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
        """Load (or create) the study in its storage, refusing one that holds a different sweep under this name."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # Heartbeats are "experimental" and meant for `Study.optimize`; this controller records them itself.
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        metric = self.spec.metric
        try:
            import sqlalchemy

            # Controllers that start at once on a new database would all create Optuna's tables: one at a time.
            schema = sqlalchemy.create_engine(self.storage_url, poolclass=sqlalchemy.pool.NullPool)
            with _one_at_a_time(schema, 0):
                storage = optuna.storages.RDBStorage(
                    self.storage_url,
                    heartbeat_interval=HEARTBEAT_INTERVAL,
                    grace_period=GRACE_PERIOD,
                    heartbeat_stale_trial_callback=self._retry,
                )
                study = optuna.create_study(
                    storage=storage,
                    study_name=self.spec.name,
                    direction="maximize" if metric is not None and metric.goal == "maximize" else "minimize",
                    sampler=self._sampler(),
                    pruner=self._pruner(),
                    load_if_exists=True,
                )
            self._engine = storage.engine
        except Exception as exc:  # SQLAlchemy raises its own types for bad URLs, drivers, servers and damaged files
            raise self._unreadable(exc) from None
        stored = study.user_attrs.get("sweep")
        if stored is None:
            study.set_user_attr("sweep", _jsonable(self.spec.config))
        elif stored != _jsonable(self.spec.config):
            raise SweepError(
                f"{self.shown_url} already holds a different sweep named {self.spec.name!r}: "
                "give this one another --dir (or name), or restore the file it was started with"
            )
        return study

    def _open_own_study(self) -> Any:
        """The study in the folder's SQLite file; rebuilt from the folder when the file lost it (emptied, deleted)."""
        try:
            _sqlite_wal(self.folder / STUDY_FILE)
        except sqlite3.Error as exc:
            raise self._unreadable(exc) from None
        study = self._open_study()
        if not study.get_trials(deepcopy=False) and started_runs(self.folder):
            self.echo(rebuild(study, self.spec, self.folder, self._space, self._named()))
        return study

    def _unreadable(self, exc: BaseException) -> SweepError:
        """One line for a storage that cannot be opened (SQLAlchemy's own messages run to several)."""
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if self._shared:
            return SweepError(f"cannot open --storage {self.shown_url}: {why}")
        db = self.folder / STUDY_FILE
        return SweepError(f"{db}: cannot read the sweep's study ({why}): {recovery_hint(self.folder)}")

    @property
    def shown_url(self) -> str:
        """The storage URL as the user wrote it, its password hidden: what messages name."""
        import sqlalchemy

        try:
            return sqlalchemy.make_url(self._storage_given).render_as_string(hide_password=True)
        except sqlalchemy.exc.ArgumentError:  # not a URL at all: SQLAlchemy says so in the message itself
            return self._storage_given

    def _named(self) -> dict[str, Any]:
        """The sweep file as it runs, with its name: ``sweep.yaml``'s content."""
        return {**_jsonable(self.spec.config), "name": self.spec.name}

    def _adopt(self) -> None:
        """Take the study over: write ``sweep.yaml`` and queue again the trials whose controller is gone."""
        import optuna

        study = self.study
        # The file as it runs, named, next to its runs: `gradwatch report` reads the parameters and metric from it.
        write_atomic(self.folder / SWEEP_FILE, json.dumps(self._named(), indent=2))
        # With its own storage this controller is alone (the folder lock), so every running trial lost its
        # controller; on shared storage only trials whose heartbeat stopped did.
        if self._shared:
            optuna.storages.fail_stale_trials(study)
            return
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            self._retry(study, trial)

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
        queue_again(study, trial.params, trial.number)

    def ended(self) -> int:
        """Trials that ended (finished, pruned, or failed on their own), across every controller of the study."""
        trials = self.study.get_trials(deepcopy=False)
        retried = interrupted(trials)
        return sum(1 for t in trials if t.state.is_finished() and t.number not in retried)

    def progress(self) -> Progress:
        """Where the sweep stands: trials ended, running here and elsewhere, the best value so far, the pace."""
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        retried = interrupted(trials)
        running = sum(1 for t in trials if t.state == TrialState.RUNNING)
        values = [(t.value, t.number) for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        metric = self.spec.metric
        best = None
        if metric is not None and values:
            best = (max if metric.goal == "maximize" else min)(values, key=lambda v: v[0])
        return Progress(
            total=self.total,
            ended=sum(1 for t in trials if t.state.is_finished() and t.number not in retried),
            running=len(self._running),
            elsewhere=max(running - len(self._running), 0),
            best=best,
            elapsed=time.monotonic() - self._run_started,
            ended_here=self._ended_here,
        )

    def run(self, tick: Callable[[], None] | None = None) -> None:
        """Run trials until ``count`` have ended or the metric's target is reached; then return.

        SIGINT or SIGTERM stops the running trials cleanly and marks them interrupted, so the next run of the same
        command retries them.

        Args:
            tick: Called after every round of checking the trials (twice a second), e.g. to redraw a status line.
        """
        self._run_started, self._ended_here = time.monotonic(), 0
        ended = self.ended()
        if ended >= self.total:
            self.echo(f"sweep {self.spec.name}: all {self.total} trials already ended ({self.folder})")
            return
        self.echo(
            f"sweep {self.spec.name}: {self.total - ended} of {self.total} trials to run, {self.workers} at a time"
        )
        with _stop_on_signals(), self._warm or contextlib.nullcontext():
            try:
                while True:
                    self._poll()
                    self._launch()
                    if tick is not None:
                        tick()
                    if not self._running and not self._others_running():
                        break
                    time.sleep(POLL_INTERVAL)
            except KeyboardInterrupt:
                self._interrupt()
                raise

    def _launch(self) -> None:
        from optuna.trial import TrialState

        while len(self._running) < self.workers and not self._target_reached:
            # On shared storage another controller may count and ask at the same moment: both would start the last
            # trial (a grid's last point twice). They take turns; the heartbeat makes a trial whose controller dies
            # from here on one that the others retry.
            with _one_at_a_time(self._engine, self.study._study_id):
                others = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if self.ended() + len(others) >= self.total:
                    return
                trial = self.study.ask(self._space)
                self.study._storage.record_heartbeat(trial._trial_id)
            self._start(trial)

    def _others_running(self) -> bool:
        """Whether trials of other controllers run on the shared storage (this one has none running).

        Until they end, this controller stays: if their controller dies, it retries them.
        """
        from optuna.trial import TrialState

        if not self._shared or self._target_reached:
            return False
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if running and not self._waiting:
            self._waiting = True
            self.echo(f"sweep {self.spec.name}: waiting for {len(running)} trials running on other machines")
        return bool(running)

    def _start(self, trial: Any) -> None:
        from gradwatch.loggers import fresh_run_id

        params = {name: trial.params[name] for name in self.spec.parameters}
        resume = self._resumable(trial)
        run_id = resume.name if resume is not None else fresh_run_id()
        runs = self.folder / RUNS_DIR
        run_dir = runs / run_id
        run_dir.mkdir(parents=True, exist_ok=resume is not None)
        if resume is not None:  # a stop request belongs to the attempt it stopped
            (run_dir / STOP_FILE).unlink(missing_ok=True)
        # As `wandb agent` does: the parameters as a W&B config file (loaded and locked by `wandb.init`) and as JSON.
        config_file, json_file = trial_files(self.folder, run_id)
        config_file.parent.mkdir(exist_ok=True)
        config = {name: {"value": value} for name, value in params.items()}
        config["sweep_name"] = {"value": self.spec.name}
        config_file.write_text(json.dumps(config))  # JSON is YAML; W&B reads it as a config file
        json_file.write_text(json.dumps(params))
        command = expand_command(self.spec.command, params, program=self.spec.program, args_json_file=str(json_file))
        slot = min(set(range(self.workers)) - {r.slot for r in self._running})
        env = self._environment(run_id, runs, config_file, slot, resume)
        trial.set_user_attr("run", {"id": run_id, "dir": str(run_dir), "command": command})
        log = (run_dir / "trial.log").open("ab")  # a resumed run's log goes on after the earlier attempt's
        try:
            # gradwatch's own command forks from the warm worker; any other, or one it cannot take, starts afresh.
            process = self._warm.popen(command, env=env, stdout=log) if self._warm is not None else None
            process = process or subprocess.Popen(
                command,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:  # the program vanished or lost its permissions since the sweep started
            log.close()
            self._fail(trial, f"cannot start {command[0]}: {exc.strerror}", {"seconds": 0.0}, run_dir)
            return
        self.study._storage.record_heartbeat(trial._trial_id)
        self._running.append(_Running(trial, run_dir, process, log, slot))
        shown = " ".join(f"{k}={v}" for k, v in params.items())
        how = f"resuming run {run_id} from {CHECKPOINTS_DIR}/" if resume is not None else f"run {run_id}"
        self.on_event(f"trial {trial.number} started: {shown} ({how})")

    def _resumable(self, trial: Any) -> Path | None:
        """The run folder a retried trial continues: the one it retries, when that saved a checkpoint."""
        origin = trial.user_attrs.get("retry_of")
        if origin is None:
            return None
        storage, study_id = self.study._storage, self.study._study_id
        earlier = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, origin))
        run_dir = earlier.user_attrs.get("run", {}).get("dir")
        # On shared storage the run may have been on another machine: then its folder is not here, and it starts over.
        return Path(run_dir) if run_dir and latest_checkpoint(Path(run_dir)) is not None else None

    def _environment(
        self, run_id: str, runs: Path, config_file: Path, slot: int, resume: Path | None
    ) -> dict[str, str]:
        env = dict(self._environ)
        # A W&B service this controller started must not adopt the trial's run: each trial starts its own.
        env.pop("WANDB_SERVICE", None)
        # `gradwatch fit` continues the run folder this names (same run id); only a retried trial with a checkpoint.
        env.pop(RESUME_ENV, None)
        if resume is not None:
            env[RESUME_ENV] = str(resume)
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
                self._ended_here += 1
                self._save_results()
            elif r.terminated is not None and now - r.terminated > KILL_DELAY:
                r.process.kill()

    def _save_results(self) -> None:
        """Write ``results.csv`` and ``results.json`` now: a lost ``sweep.db`` is rebuilt from every trial that ended.

        A full disk only costs the files' freshness (the study holds the trials), so it does not stop the sweep.
        """
        try:
            save(collect(self.study, self.spec), self.folder)
        except OSError as exc:
            self.echo(f"warning: cannot write the results ({exc.strerror}: {exc.filename}); the study keeps them")

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
        # Only the steps Hyperband's brackets read: each report and pruning check is a few storage transactions.
        rungs = [step for step in range(r.reported, len(values)) if self.spec.early_terminate.is_rung(step)]
        r.reported = len(values)
        for step in rungs:
            r.trial.report(values[step], step)
        if rungs and r.trial.should_prune():
            r.pruned_at = r.reported
            # Without this file `gradwatch fit` takes SIGTERM for preemption (checkpoint, exit 143); with it, it stops
            # the run cleanly and finishes the W&B run, as a pruned trial should.
            why = f"trial {r.trial.number} pruned by Hyperband after {r.reported} {name} values"
            write_atomic(r.run_dir / STOP_FILE, f"stopped by gradwatch sweep {self.spec.name}: {why}\n")
            r.process.terminate()
            r.terminated = time.monotonic()

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
        if r.pruned_at is None and code == PREEMPTED_EXIT and self._preempted(trial, outcome):
            return
        if r.pruned_at is None and not (code == 0 and (metric is None or values)):
            error = outcome.get("error") or (f"exit code {code}" if code else f"{metric.name} was never logged")
            self._fail(trial, error, outcome, r.run_dir)
            return
        trial.set_user_attr("outcome", outcome)
        if r.pruned_at is not None:
            self.study.tell(trial, state=TrialState.PRUNED)
            self.on_event(f"trial {trial.number} pruned after {r.pruned_at} {metric.name} values ({seconds:.0f} s)")
        elif metric is not None:
            if self.spec.early_terminate is not None and not self.spec.early_terminate.is_rung(len(values) - 1):
                # The pruner sizes its brackets ("auto" max_iter) from the last step of finished trials.
                trial.report(values[-1], len(values) - 1)
            self.study.tell(trial, values[-1])
            self.on_event(f"trial {trial.number} finished: {metric.name} {values[-1]:.4g} ({seconds:.0f} s)")
            if metric.reached(values[-1]):
                self._target_reached = True
                self.echo(f"sweep {self.spec.name}: {metric.name} reached the target {metric.target}; no new trials")
        else:
            # Grid and random search need no metric; Optuna needs a value to call a trial complete.
            self.study.tell(trial, 0.0)
            self.on_event(f"trial {trial.number} finished ({seconds:.0f} s)")

    def _preempted(self, trial: Any, outcome: dict[str, Any]) -> bool:
        """Queue a preempted trial again (it resumes from its checkpoint); ``False`` once it was preempted too often.

        Only something outside the sweep preempts one trial while its controller runs on; a program that always
        exits 143 must not run forever.
        """
        from optuna.trial import TrialState

        preempted = trial.user_attrs.get("preempted", 0) + 1
        if preempted > MAX_PREEMPTIONS:
            outcome["error"] = f"preempted {preempted} times in a row (exit code {PREEMPTED_EXIT})"
            return False
        trial.set_user_attr("outcome", {**outcome, "error": "preempted"})
        self.study.tell(trial, state=TrialState.FAIL)
        queue_again(self.study, trial.params, trial.number, preempted)
        self.echo(f"trial {trial.number} preempted (exit {PREEMPTED_EXIT}); it runs again, from its checkpoint if any")
        return True

    def _fail(self, trial: Any, error: str, outcome: dict[str, Any], run_dir: Path) -> None:
        from optuna.trial import TrialState

        trial.set_user_attr("outcome", {**outcome, "error": error})
        self.study.tell(trial, state=TrialState.FAIL)
        self.echo(f"trial {trial.number} failed: {error} (log: {run_dir / 'trial.log'})")

    def _interrupt(self) -> None:
        from optuna.trial import TrialState

        for r in self._running:
            r.process.terminate()
        retried = 0
        deadline = time.monotonic() + KILL_DELAY
        for r in self._running:
            try:
                r.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                r.process.kill()
                r.process.wait()
            r.log.close()
            if r.pruned_at is not None:  # pruned before the interrupt: that decision stands
                self.study.tell(r.trial, state=TrialState.PRUNED)
                continue
            # SIGTERM without a stop request is preemption to `gradwatch fit`: it saved a checkpoint to resume from.
            self.study.tell(r.trial, state=TrialState.FAIL)
            self._retry(self.study, r.trial)
            retried += 1
        self.echo(f"sweep {self.spec.name}: interrupted; {retried} running trials run again next time")
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


def check_command(spec: SweepSpec) -> None:
    """Refuse a command whose program is not there, before any trial fails on it.

    Checks the first word (and the program ``env`` runs) on ``PATH`` as a trial gets it, and ``${program}``'s file.

    Raises:
        SweepError: naming the word and where it was looked for.
    """
    words = expand_command(spec.command, {}, program=spec.program)
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    if words and Path(words[0]).name == "env":  # `env NAME=value -i program ...`: the program is the first plain word
        words = [word for word in words[1:] if "=" not in word and not word.startswith("-")]
    if words and shutil.which(words[0], path=path) is None:
        raise spec.error("command", f"{words[0]!r} is not a program on PATH (nor a file that can run)")
    if "${program}" in spec.command and not Path(str(spec.program)).is_file():
        raise spec.error("program", f"{spec.program!r} is not a file (looked in {Path.cwd()})")


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
def _one_at_a_time(engine: Any, key: int) -> Iterator[None]:
    """Hold PostgreSQL's advisory lock ``(LOCK_NAMESPACE, key)`` in ``engine``'s database for the block.

    Controllers on several machines take turns through it. It is a transaction's lock: released when the block ends,
    or when the controller dies and its connection with it. Other databases (SQLite) go through without one.
    """
    if engine.dialect.name != "postgresql":
        yield
        return
    import sqlalchemy

    with engine.begin() as db:
        db.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:space, :key)"), {"space": LOCK_NAMESPACE, "key": key})
        yield


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
