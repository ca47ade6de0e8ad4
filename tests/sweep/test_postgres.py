"""Several machines on one local sweep: controllers as real processes, sharing a real PostgreSQL server's study.

Each controller is ``gradwatch sweep run FILE --local --storage postgresql://...`` with a folder of its own, as on
machines that share nothing but the database. The server is a throwaway one (``tests/postgres.py``): without
PostgreSQL's programs or the driver these tests skip, saying what to install; under CI (``$CI`` set) they fail.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from test_local import _alive, finish, results, scripted, sweep_cli

import postgres
from gradwatch.sweep import load_sweep
from gradwatch.sweep.local import LocalSweep, with_driver

#: A controller whose heartbeat is a second and whose grace period is 5 s, not 10 s and a minute, so that a killed
#: controller's trial is taken for lost in seconds. Only the constants differ from `gradwatch`.
QUICK_HEARTBEAT = (
    "import gradwatch.sweep.local as local; local.HEARTBEAT_INTERVAL, local.GRACE_PERIOD = 1, 5; "
    "import runpy; runpy.run_module('gradwatch', run_name='__main__')"
)


@pytest.fixture(scope="session")
def postgres_server():
    """One server per test process (each xdist worker has its own), a fresh database per test."""
    reason = postgres.unavailable()
    if reason is not None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"{reason}; $CI is set, so the PostgreSQL tests may not be skipped")
        pytest.skip(reason)
    with postgres.Server() as server:
        yield server


@pytest.fixture
def database(postgres_server, request) -> str:
    """The URL of an empty database named after the test."""
    return postgres_server.create_database(re.sub(r"\W", "_", request.node.name.lower())[:63])


def quick_controller(*args: str, cwd: Path) -> subprocess.Popen:
    """``gradwatch sweep ARGS`` with a short heartbeat grace period, W&B offline."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("WANDB_SERVICE", None)
    return subprocess.Popen(
        [sys.executable, "-c", QUICK_HEARTBEAT, "sweep", *args], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def trials(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="sweep", storage=with_driver(url)).get_trials()


def complete_params(found: list[optuna.trial.FrozenTrial]) -> list[float]:
    return sorted(t.params["x"] for t in found if t.state == optuna.trial.TrialState.COMPLETE)


def test_two_controllers_share_the_trials_and_run_no_parameter_set_twice(tmp_path, database):
    grid = [1, 2, 3, 4, 5, 6]
    path = scripted(tmp_path, {"x": {"values": grid}, "steps": {"value": 3}, "sleep": {"value": 0.5}})
    machines = [sweep_cli("run", str(path), "--storage", database, "--dir", name, cwd=tmp_path) for name in "ab"]
    outs = [finish(machine, timeout=120) for machine in machines]
    found = trials(database)
    assert complete_params(found) == grid, outs
    assert len(found) == len(grid), "no trial failed, none was retried"
    ran = {name: sorted((tmp_path / name / "runs").iterdir()) for name in "ab"}
    assert all(ran.values()), f"each machine ran trials: {ran}\n{outs}"
    # Each trial's run is in the folder of the machine that ran it; each folder's results list every machine's trials.
    assert sorted(Path(t.user_attrs["run"]["dir"]) for t in found) == sorted(ran["a"] + ran["b"])
    for name in "ab":
        assert [row["state"] for row in results(tmp_path / name)] == ["finished"] * len(grid)


def test_controllers_counting_at_the_same_moment_start_the_last_trial_once(tmp_path, database):
    spec = load_sweep(scripted(tmp_path, {"x": {"values": [1]}, "steps": {"value": 1}, "sleep": {"value": 0}}))
    a, b = (LocalSweep(spec, tmp_path / name, storage=database, echo=lambda line: None) for name in "ab")

    def slow_count() -> int:  # machine a counts, then pauses before it asks for the trial: b counts meanwhile
        ended = LocalSweep.ended(a)
        time.sleep(1.0)
        return ended

    a.ended = slow_count
    # b counts while a pauses; it waits for a's turn to end, then finds the sweep's one trial running. (a starts its
    # trial in this thread: a trial gets SIGTERM when the thread that started it ends.)
    second = threading.Timer(0.3, b._launch)
    second.start()
    a._launch()
    second.join()
    assert (len(a._running), len(b._running)) == (1, 0)
    a.run()
    assert [t.state.name for t in trials(database)] == ["COMPLETE"]


def test_a_killed_controllers_trial_is_retried_once_by_the_other(tmp_path, database):
    # The survivor's own trials end before the killed one is taken for lost: it waits for it, then runs it again.
    grid = [1, 2, 3]
    path = scripted(tmp_path, {"x": {"values": grid}, "steps": {"value": 6}, "sleep": {"value": 0.25}})
    doomed, survivor = (
        quick_controller("run", str(path), "--storage", database, "--dir", n, cwd=tmp_path) for n in "ab"
    )
    started = _wait_for(lambda: next((tmp_path / "a" / "runs").glob("*/trial.json"), None), "a trial on machine a")
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate()
    # Its trial got SIGTERM from the kernel when its controller died (PR_SET_PDEATHSIG) and ended.
    pid = json.loads(started.read_text())["pid"]
    _wait_for(lambda: not _alive(pid), f"the killed controller's trial (pid {pid}) to end")
    assert (started.parent / "terminated").exists()
    out = finish(survivor, timeout=120)
    found = trials(database)
    (killed,) = [t for t in found if t.user_attrs["run"]["dir"] == str(started.parent.resolve())]
    assert killed.state == optuna.trial.TrialState.FAIL, out
    retries = [t for t in found if "retry_of" in t.user_attrs]
    assert [(t.user_attrs["retry_of"], t.params, t.state.name) for t in retries] == [
        (killed.number, killed.params, "COMPLETE")
    ], out
    assert Path(retries[0].user_attrs["run"]["dir"]).parent == (tmp_path / "b" / "runs").resolve()
    assert complete_params(found) == grid, out
    assert len(found) == len(grid) + 1


def _wait_for(condition, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.1)
    return found
