"""The local engine: a sweep file on Optuna, trials as real processes, W&B offline, resumable."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from conftest import column, read_metrics
from gradwatch.sweep import SweepError, load_sweep
from gradwatch.sweep.local import LocalSweep
from gradwatch.sweep.results import collect
from wandb_records import config, exit_code, run_file, run_group

SCRIPT = Path(__file__).with_name("scripted_trial.py")
CONFIGS = Path(__file__).parents[2] / "sweeps" / "configs"
# A CNN small enough that a trial is mostly process start-up.
TINY_CNN = ["--model.width=8", "--data.batch_size=128", "--trainer.enable_checkpointing=false"]


def write_sweep(folder: Path, **raw) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def scripted(folder: Path, parameters: dict, **raw) -> Path:
    command = ["${env}", "${interpreter}", str(SCRIPT), "${args}"]
    metric = raw.pop("metric", {"name": "val/loss", "goal": "minimize"})
    return write_sweep(folder, method=raw.pop("method", "grid"), metric=metric, parameters=parameters,
                       command=command, **raw)  # fmt: skip


def sweep_cli(*args: str, cwd: Path, **popen) -> subprocess.Popen:
    """``gradwatch sweep ARGS`` as a user runs it, W&B offline."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("WANDB_SERVICE", None)  # a W&B service of this test worker must not adopt the trials' runs
    return subprocess.Popen(
        [sys.executable, "-m", "gradwatch", "sweep", *args], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen,
    )  # fmt: skip


def finish(process: subprocess.Popen, timeout: float = 400) -> str:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out
    return out


def results(folder: Path) -> list[dict]:
    return json.loads((folder / "results.json").read_text())


@pytest.mark.slow
def test_grid_of_four_on_digits_two_workers_end_to_end(tmp_path):
    path = write_sweep(
        tmp_path,
        name="digits-grid",
        method="grid",
        metric={"name": "val/acc", "goal": "maximize"},
        parameters={"model.activation": {"values": ["relu", "sigmoid"]}, "model.residual": {"values": [False, True]},
                    "model.depth": {"value": 3}, "trainer.max_epochs": {"value": 2}},
        command=["${env}", "${interpreter}", "-m", "gradwatch", "fit", "--config", str(CONFIGS / "cnn-digits.yaml"),
                 *TINY_CNN, "${args}"],
    )  # fmt: skip
    out = finish(sweep_cli("run", str(path), "--local", "--workers", "2", "--dir", "out", cwd=tmp_path))
    folder = tmp_path / "out"
    rows = results(folder)
    assert [r["state"] for r in rows] == ["finished"] * 4, out
    assert {(r["params"]["model.activation"], r["params"]["model.residual"]) for r in rows} == {
        ("relu", False),
        ("relu", True),
        ("sigmoid", False),
        ("sigmoid", True),
    }
    metrics = [r["metric"] for r in rows]
    assert metrics == sorted(metrics, reverse=True)  # best first under goal: maximize
    # Two at a time: the second trial starts before the first one ends.
    lines = [line for line in out.splitlines() if re.search(r"trial \d+ (started|finished)", line)]
    assert ["started" in line for line in lines[:2]] == [True, True], out
    for row in rows:
        run_dir = Path(row["run_dir"])
        assert run_dir.parent == folder.resolve() / "runs"
        acc = column(read_metrics(run_dir / "metrics.csv"), "val/acc")
        assert row["metric"] == pytest.approx(acc[-1])
        assert row["health"] == "healthy" or row["health"].startswith("vanishing"), row
        # The offline W&B run holds the trial's parameters and the sweep's name, for `wandb sync` to group.
        wandb_file = run_file(run_dir)
        assert exit_code(wandb_file) == 0
        cfg = config(wandb_file)
        assert cfg["model.activation"] == row["params"]["model.activation"]
        assert cfg["model.residual"] == row["params"]["model.residual"]
        assert cfg["sweep_name"] == "digits-grid"
        assert run_group(wandb_file) == "digits-grid"
    table = out[out.index("sweep digits-grid: 4 trials") :]
    for column_name in ("val/acc ↑", "gradients", "atten.", "state", "run"):
        assert column_name in table
    with (folder / "results.csv").open() as f:
        header = f.readline().strip().split(",")
    assert header[:6] == ["trial", "state", "model.activation", "model.residual", "model.depth", "trainer.max_epochs"]
    # Run again: nothing left to do, nothing rerun.
    again = finish(sweep_cli("run", str(path), "--local", "--dir", "out", cwd=tmp_path))
    assert "all 4 trials already ended" in again
    assert len(list((folder / "runs").iterdir())) == 4


@pytest.mark.slow
def test_hyperband_stops_a_vanishing_trial_early_and_keeps_its_run(tmp_path):
    path = write_sweep(
        tmp_path,
        method="grid",
        metric={"name": "val/acc", "goal": "maximize"},
        # One band at the third val/acc (max_iter 6 / eta 3 = 2, counted from 0), as W&B computes it.
        early_terminate={"type": "hyperband", "max_iter": 6, "s": 1, "eta": 3},
        # Optuna's grid order for these two values (seed 0) runs relu first, so the sigmoid trial has a rival. The
        # epochs after the band leave the controller seconds to stop it on a loaded machine.
        parameters={"model.activation": {"values": ["sigmoid", "relu"]}, "model.norm": {"value": "none"},
                    "trainer.max_epochs": {"value": 20}},
        command=["${env}", "${interpreter}", "-m", "gradwatch", "fit", "--config", str(CONFIGS / "cnn-digits.yaml"),
                 *TINY_CNN, "${args}"],
    )  # fmt: skip
    out = finish(sweep_cli("run", str(path), "--local", "--dir", "out", cwd=tmp_path))
    # Both trials forked from the warm worker, which imported while the file was checked: the check's own imports
    # (Lightning sets KMP_DUPLICATE_LIB_OK) did not leak into the trials' environment and start them fresh.
    assert "fresh process" not in out
    by_activation = {r["params"]["model.activation"]: r for r in results(tmp_path / "out")}
    assert by_activation["relu"]["state"] == "finished", out
    bad = by_activation["sigmoid"]
    assert bad["state"] == "pruned", out
    assert "vanishing" in bad["health"]
    acc = column(read_metrics(Path(bad["run_dir"]) / "metrics.csv"), "val/acc")
    assert 3 <= len(acc) < 20, "stopped after the band, before its last epoch"
    # Stopped gracefully: Lightning caught SIGTERM and W&B finished the run.
    assert exit_code(run_file(bad["run_dir"])) == 0
    log = (Path(bad["run_dir"]) / "trial.log").read_text()
    assert "Received SIGTERM" in log
    # A stop request, not preemption: `gradwatch fit` read stop-requested, saved no checkpoint and exited 0.
    stop = (Path(bad["run_dir"]) / "stop-requested").read_text().strip()
    assert re.fullmatch(
        r"stopped by gradwatch sweep sweep: trial \d+ pruned by Hyperband after \d+ val/acc values", stop
    )
    assert "stopped at step" in log
    assert "preempted" not in log
    assert not (Path(bad["run_dir"]) / "checkpoints" / "preempted.ckpt").exists()
    assert not (Path(by_activation["relu"]["run_dir"]) / "stop-requested").exists()
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{tmp_path / 'out' / 'sweep.db'}")
    assert study.trials[bad["trial"]].user_attrs["outcome"]["exit_code"] == 0


def test_bayes_proposes_within_bounds_and_learns_from_results(tmp_path):
    path = scripted(
        tmp_path,
        {"x": {"distribution": "log_uniform_values", "min": 0.01, "max": 10.0}, "steps": {"value": 2},
         "sleep": {"value": 0.0}},
        method="bayes",
    )  # fmt: skip
    sweep = LocalSweep(load_sweep(path), tmp_path / "out", count=4, echo=lambda line: None)
    sweep.run()
    rows = collect(sweep.study, sweep.spec)
    assert [r.state for r in rows] == ["finished"] * 4
    assert all(0.01 <= r.params["x"] <= 10.0 for r in rows)
    assert [r.metric for r in rows] == sorted(r.metric for r in rows)  # minimize: best first
    assert rows[0].metric == pytest.approx(rows[0].params["x"] + 0.5)  # the last logged value
    assert type(sweep.study.sampler).__name__ == "TPESampler"


def test_trials_get_the_wandb_agent_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SERVICE", "2-123-tcp-localhost-1")
    path = scripted(tmp_path, {"x": {"values": [1]}, "steps": {"value": 1}}, name="env-check")
    sweep = LocalSweep(load_sweep(path), tmp_path / "out", workers=2, echo=lambda line: None)
    sweep.run()
    (row,) = collect(sweep.study, sweep.spec)
    seen = json.loads((Path(row.run_dir) / "trial.json").read_text())
    env = seen["env"]
    assert env["WANDB_RUN_ID"] == Path(row.run_dir).name
    assert (env["WANDB_MODE"], env["WANDB_RUN_GROUP"]) == ("offline", "env-check")
    assert "WANDB_SERVICE" not in env
    assert env["OMP_NUM_THREADS"] == "1"  # set by the test suite, kept: the user's choice wins
    assert yaml.safe_load(Path(env["WANDB_SWEEP_PARAM_PATH"]).read_text()) == {
        "x": {"value": 1}, "steps": {"value": 1}, "sweep_name": {"value": "env-check"}
    }  # fmt: skip
    assert seen["argv"][1:] == ["--x=1", "--steps=1"]
    assert Path(sys.executable).parent.as_posix() == env["PATH"].split(os.pathsep)[0]


def test_run_cap_count_and_target_bound_the_sweep(tmp_path):
    grid = {"x": {"min": 1, "max": 8}, "steps": {"value": 1}, "sleep": {"value": 0.0}}
    capped = LocalSweep(load_sweep(scripted(tmp_path, grid, run_cap=3)), tmp_path / "a", echo=lambda line: None)
    assert capped.total == 3
    assert LocalSweep(load_sweep(scripted(tmp_path, grid)), tmp_path / "b", count=2, echo=print).total == 2
    assert LocalSweep(load_sweep(scripted(tmp_path, grid)), tmp_path / "c", echo=print).total == 8
    # The first trial meets the target (every x gives loss x + 1 <= 9.5): no new trial starts.
    target = scripted(tmp_path, grid, metric={"name": "val/loss", "goal": "minimize", "target": 9.5})
    sweep = LocalSweep(load_sweep(target), tmp_path / "d", echo=lambda line: None)
    sweep.run()
    assert [r.state for r in collect(sweep.study, sweep.spec)] == ["finished"]
    random = load_sweep(scripted(tmp_path, {"x": {"min": 0.0, "max": 1.0}}, method="random"))
    with pytest.raises(SweepError, match="give --count N or run_cap"):
        LocalSweep(random, tmp_path / "e")


def test_failed_trials_say_why_and_count_as_ended(tmp_path):
    path = scripted(tmp_path, {"x": {"values": [1, 2]}, "exit": {"value": 3}, "steps": {"value": 1}})
    lines: list[str] = []
    sweep = LocalSweep(load_sweep(path), tmp_path / "out", echo=lines.append)
    sweep.run()
    rows = collect(sweep.study, sweep.spec)
    assert [(r.state, r.error) for r in rows] == [("failed", "exit code 3")] * 2
    assert any("failed: exit code 3 (log: " in line for line in lines)
    silent = scripted(tmp_path, {"x": {"values": [1]}, "steps": {"value": 1}}, metric={"name": "val/acc"})
    sweep = LocalSweep(load_sweep(silent), tmp_path / "silent", echo=lines.append)
    sweep.run()
    assert [r.error for r in collect(sweep.study, sweep.spec)] == ["val/acc was never logged"]


def test_a_changed_file_or_a_second_controller_is_refused(tmp_path):
    path = scripted(tmp_path, {"x": {"values": [1, 2]}, "steps": {"value": 1}})
    first = LocalSweep(load_sweep(path), tmp_path / "out", echo=lambda line: None)
    with pytest.raises(SweepError, match=r"another gradwatch sweep controller \(pid \d+\) is running"):
        LocalSweep(load_sweep(path), tmp_path / "out")
    first._lock.close()
    changed = scripted(tmp_path, {"x": {"values": [1, 2, 3]}, "steps": {"value": 1}})
    with pytest.raises(SweepError, match="already holds a different sweep named 'sweep'"):
        LocalSweep(load_sweep(changed), tmp_path / "out")


@pytest.mark.parametrize("url", ["sqlite:////no/such/folder/sweep.db", "nosuchdb://host/db"])
def test_an_unreachable_storage_is_named(tmp_path, url):
    path = scripted(tmp_path, {"x": {"values": [1]}})
    with pytest.raises(SweepError, match=re.escape(f"cannot open --storage {url}: ")):
        LocalSweep(load_sweep(path), tmp_path / "out", storage=url)


def test_a_postgresql_storage_names_its_driver_or_the_server_it_cannot_reach(tmp_path):
    import importlib.util

    path = scripted(tmp_path, {"x": {"values": [1]}})
    url = "postgresql://nobody:secret@127.0.0.1:1/none"
    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is None:
        expected = "no PostgreSQL driver is installed; install gradwatch's 'postgres' extra"
    else:  # with the driver the URL gets it, and the closed port is named
        # As typed (the driver implied), and never with its password.
        expected = "cannot open --storage postgresql://nobody:***@127.0.0.1:1/none: "
    with pytest.raises(SweepError, match=re.escape(expected)):
        LocalSweep(load_sweep(path), tmp_path / "out", storage=url)


def test_shared_storage_retries_only_trials_whose_controller_stopped_beating(tmp_path, monkeypatch):
    monkeypatch.setattr("gradwatch.sweep.local.HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr("gradwatch.sweep.local.GRACE_PERIOD", 2)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    spec = load_sweep(scripted(tmp_path, {"x": {"values": [1, 2, 3]}, "steps": {"value": 1}, "sleep": {"value": 0}}))
    # Machine A starts two trials; one controller dies (no more heartbeats), the other keeps beating.
    a = LocalSweep(spec, tmp_path / "a", storage=url, echo=lambda line: None)
    dead, live = (a.study.ask(a._distributions()) for _ in range(2))
    for trial in (dead, live):
        a.study._storage.record_heartbeat(trial._trial_id)
    time.sleep(3.5)  # SQLite's clock has whole seconds
    a.study._storage.record_heartbeat(live._trial_id)
    # Machine B joins the same study: the dead trial is retried, the live one left alone.
    b = LocalSweep(spec, tmp_path / "b", storage=url, echo=lambda line: None)
    states = {t.number: t.state.name for t in b.study.get_trials()}
    assert (states[dead.number], states[live.number]) == ("FAIL", "RUNNING")
    waiting = [t for t in b.study.get_trials() if t.state.name == "WAITING"]
    assert [(t.system_attrs["fixed_params"], t.user_attrs["retry_of"]) for t in waiting] == [(dead.params, dead.number)]
    # B ends the sweep's 3 trials (the live one counts as running) and A's live trial finishes.
    a.study.tell(live, 1.0)
    b.run()
    rows = collect(b.study, spec)
    assert sorted(r.state for r in rows) == ["finished", "finished", "finished", "interrupted"]


def test_sigkill_of_the_controller_then_resume(tmp_path):
    path = scripted(tmp_path, {"x": {"min": 1, "max": 8}, "steps": {"value": 6}, "sleep": {"value": 0.5}})
    args = ["run", str(path), "--local", "--workers", "2", "--count", "5", "--dir", "out"]
    controller = sweep_cli(*args, cwd=tmp_path)
    finished: list[str] = []
    deadline = time.monotonic() + 120
    for line in controller.stdout:  # kill it as soon as two trials finished and two others run
        finished += re.findall(r"trial (\d+) finished", line)
        if len(finished) == 2 or time.monotonic() > deadline:
            break
    assert len(finished) == 2
    time.sleep(1.0)  # the next two trials start
    controller.send_signal(signal.SIGKILL)
    controller.wait()
    runs = tmp_path / "out" / "runs"
    pids = [json.loads(p.read_text())["pid"] for p in runs.glob("*/trial.json")]
    time.sleep(1.0)
    # The orphaned trials got SIGTERM when their controller died and ended cleanly.
    assert not [pid for pid in pids if _alive(pid)]
    before = {p.name: (p / "metrics.csv").read_text() for p in runs.iterdir()}
    out = finish(sweep_cli(*args, cwd=tmp_path))
    rows = results(tmp_path / "out")
    states = sorted(r["state"] for r in rows)
    assert states.count("finished") == 5, out
    interrupted = [r for r in rows if r["state"] == "interrupted"]
    assert interrupted, "the trials running at the kill are marked interrupted"
    retried = {r["params"]["x"] for r in rows if r["state"] == "finished"}
    assert {r["params"]["x"] for r in interrupted} <= retried  # and their parameters ran again
    for r in rows:  # nothing that finished before the kill ran again, and nothing logged was lost
        if Path(r["run_dir"]).name in before and r["state"] == "finished":
            assert (Path(r["run_dir"]) / "metrics.csv").read_text() == before[Path(r["run_dir"]).name]
    assert len([r for r in rows if r["state"] == "finished" and Path(r["run_dir"]).name in before]) == 2
    for r in interrupted:
        assert (Path(r["run_dir"]) / "terminated").exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent (gone) could reap it.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()
