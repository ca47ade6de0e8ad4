"""Faults lose nothing: what `gradwatch sweep` says and leaves on disk when its input, storage or trials go wrong.

Each test runs the real command (trials are `scripted_trial.py`, a second each) and checks the one line the user
reads, the exit status, and the sweep folder afterwards.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from test_local import CONFIGS, TINY_CNN, results, scripted, sweep_cli, write_sweep
from test_sweep_cli import gradwatch

from disks import fill, small_disk
from gradwatch.rundir import RESUME_ENV, STUDY_FILE
from gradwatch.sweep.local import MAX_PREEMPTIONS
from gradwatch.sweep.results import TrialResult, save

QUICK = {"steps": {"value": 1}, "sleep": {"value": 0}}


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its content, but the controller's lock (it holds the last one's pid)."""
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "controller.lock")
    return {str(p.relative_to(folder)): p.read_bytes() for p in found}


def metrics_text(run_dir: Path) -> str | None:
    """A run's ``metrics.csv``; ``None`` before the trial wrote one."""
    metrics = run_dir / "metrics.csv"
    return metrics.read_text() if metrics.exists() else None


def last_line(done: subprocess.CompletedProcess) -> str:
    return done.stdout.strip().splitlines()[-1]


def test_a_name_that_leaves_the_sweeps_folder_is_refused_and_nothing_is_written(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    path = scripted(project, {"x": {"values": [1]}, **QUICK}, name="../../../escaped")
    before = sorted(tmp_path.rglob("*"))
    done = gradwatch("sweep", "run", str(path), "--local", cwd=project)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == (
        f"gradwatch sweep: error: {path}: name: '../../../escaped' is not a folder name: a local sweep runs in "
        "runs/sweeps/<name>, so the name cannot hold '/' or '\\' or be '.' or '..' (--dir chooses another folder)"
    )
    # Nothing at all: no runs/ in the project, and no tmp_path/escaped (runs/sweeps/../../../escaped).
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.slow
def test_a_metric_of_a_layer_the_model_lacks_is_refused_before_any_trial(tmp_path):
    path = write_sweep(
        tmp_path,
        method="grid",
        metric={"name": "grad/norm/backbone.blocks.5.conv", "goal": "minimize"},
        parameters={"model.depth": {"values": [2, 3]}},
        command=["${env}", "${interpreter}", "-m", "gradwatch", "fit", "--config", str(CONFIGS / "cnn-digits.yaml"),
                 *TINY_CNN, "${args}"],
    )  # fmt: skip
    done = gradwatch("sweep", "run", str(path), "--local", "--dir", "out", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(
        f"gradwatch sweep: error: {path}: metric.name: 'grad/norm/backbone.blocks.5.conv' is never logged: the model "
        "(model.depth=2) has no layer 'backbone.blocks.5.conv' that GradientMonitor watches (did you mean "
        "'grad/norm/backbone.blocks.1.conv'?); it watches backbone.stem.conv, backbone.stem.norm, "
    ), line
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "runs").exists()


def test_a_grid_of_a_million_is_refused_at_once_and_max_grid_lets_a_larger_grid_through(tmp_path):
    million = scripted(tmp_path, {"x": {"min": 1, "max": 1000}, "y": {"min": 1, "max": 1000}, **QUICK})
    done = gradwatch("sweep", "run", str(million), "--local", "--dir", "out", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == (
        f"gradwatch sweep: error: {million}: parameters: the grid has 1,000,000 combinations (x 1,000 × y 1,000), "
        "more than the local engine enumerates (10,000): narrow it, sample it with method: random and run_cap, or "
        "raise --max-grid"
    )
    assert not (tmp_path / "out").exists()
    larger = scripted(tmp_path, {"x": {"min": 1, "max": 120}, "y": {"min": 1, "max": 100}, **QUICK})
    refused = gradwatch("sweep", "run", str(larger), "--local", "--dir", "out", "--count", "1", cwd=tmp_path)
    assert refused.returncode == 2
    assert "the grid has 12,000 combinations" in refused.stderr
    done = gradwatch(
        "sweep", "run", str(larger), "--local", "--dir", "out", "--count", "1", "--max-grid", "12000", cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert [r["state"] for r in results(tmp_path / "out")] == ["finished"]


@pytest.mark.parametrize(
    ("storage", "words"),
    [
        ("nosuchdb://host/db", "cannot open --storage nosuchdb://host/db: "),
        ("postgresql://nobody@127.0.0.1:1/none", "nobody@127.0.0.1:1/none"),
        ("sqlite:///garbage.db", "cannot open --storage sqlite:///garbage.db: (sqlite3.DatabaseError) file is not a"),
    ],
    ids=["bad-url", "unreachable-postgres", "garbage-file"],
)
def test_a_storage_that_cannot_be_opened_leaves_no_sweep_folder(tmp_path, storage, words):
    garbage = os.urandom(4096)
    (tmp_path / "garbage.db").write_bytes(garbage)
    path = scripted(tmp_path, {"x": {"values": [1]}, **QUICK})
    done = gradwatch("sweep", "run", str(path), "--storage", storage, "--dir", "out", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("gradwatch sweep: error: "), line
    assert words in line
    assert not (tmp_path / "out").exists()
    assert (tmp_path / "garbage.db").read_bytes() == garbage


@pytest.fixture
def ended_sweep(tmp_path) -> tuple[Path, Path]:
    """A finished sweep of two trials in ``tmp_path/out``: (its file, its folder)."""
    path = scripted(tmp_path, {"x": {"values": [1, 2]}, **QUICK})
    done = gradwatch("sweep", "run", str(path), "--local", "--dir", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not list((tmp_path / "out").glob(".*.tmp"))  # results written whole, no temporary file left
    return path, tmp_path / "out"


def test_a_sweep_db_of_garbage_is_named_with_what_to_do_and_the_results_are_kept(ended_sweep):
    path, folder = ended_sweep
    (folder / STUDY_FILE).write_bytes(os.urandom(8192))
    before = files(folder)
    done = gradwatch("sweep", "run", str(path), "--local", "--dir", "out", cwd=folder.parent)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == (
        f"gradwatch sweep: error: {folder / STUDY_FILE}: cannot read the sweep's study (file is not a database): "
        f"move {STUDY_FILE} aside and run the same command again to rebuild the study from results.json"
    )
    assert files(folder) == before


@pytest.mark.parametrize("loss", ["emptied", "deleted"])
def test_a_lost_sweep_db_is_rebuilt_and_no_finished_trial_runs_again(ended_sweep, loss):
    path, folder = ended_sweep
    if loss == "emptied":
        (folder / STUDY_FILE).write_bytes(b"")
    else:
        (folder / STUDY_FILE).unlink()
    runs = files(folder / "runs")
    before = sorted((r["state"], r["run_dir"], r["metric"]) for r in results(folder))
    done = gradwatch("sweep", "run", str(path), "--local", "--dir", "out", cwd=folder.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        "gradwatch sweep: sweep sweep: sweep.db held no trials; rebuilt the study from results.json and trials/ "
        "(2 finished); 0 interrupted trials run again\n"
        f"gradwatch sweep: sweep sweep: all 2 trials already ended ({folder})\n"
    ) in done.stdout
    assert files(folder / "runs") == runs  # no trial ran again
    assert sorted((r["state"], r["run_dir"], r["metric"]) for r in results(folder)) == before
    with (folder / "results.csv").open() as f:
        listed = sorted((r["state"], r["run_dir"]) for r in csv.DictReader(f))
    assert listed == [(state, run_dir) for state, run_dir, _ in before]


def test_a_sweep_whose_every_trial_failed_exits_1_and_points_to_a_log(tmp_path):
    path = scripted(tmp_path, {"x": {"values": [1, 2]}, "exit": {"value": 3}, **QUICK})
    done = gradwatch("sweep", "run", str(path), "--local", "--dir", "out", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    first = min(results(tmp_path / "out"), key=lambda r: r["trial"])
    log = Path(first["run_dir"]) / "trial.log"
    assert last_line(done) == (
        f"gradwatch sweep: no trial finished (2 failed; results in {tmp_path / 'out' / 'results.csv'}); "
        f"trial {first['trial']} failed: exit code 3; see {log}"
    )
    assert log.is_file()


def test_ctrl_c_exits_130_even_when_every_trial_so_far_failed(tmp_path):
    parameters = {"x": {"values": [1, 2, 3]}, "exit": {"value": 3}, "steps": {"value": 10}, "sleep": {"value": 0.1}}
    controller = sweep_cli("run", str(scripted(tmp_path, parameters)), "--local", "--dir", "out", cwd=tmp_path)
    assert controller.stdout is not None
    for line in controller.stdout:  # stop it once a trial failed and the next one runs
        if "trial 1 started" in line:
            break
    controller.send_signal(signal.SIGINT)
    out, _ = controller.communicate(timeout=120)
    assert controller.returncode == 130, out
    assert out.strip().splitlines()[-1].endswith("; run the same command to resume")


def test_results_are_replaced_whole_and_a_full_disk_keeps_the_previous_ones(tmp_path):
    def rows(n: int) -> list[TrialResult]:
        return [
            TrialResult(i, "finished", {"x": i}, 1.0 / (i + 1), "healthy", -0.5, f"runs/{i:08d}", 1.0, None)
            for i in range(n)
        ]

    with small_disk(tmp_path / "disk", "1m") as disk:
        save(rows(3), disk)
        kept = files(disk)
        assert [r["trial"] for r in json.loads(kept["results.json"])] == [0, 1, 2]
        assert len(kept["results.csv"].decode().splitlines()) == 4
        fill(disk, leave=4096)
        with pytest.raises(OSError, match="No space left on device"):
            save(rows(300), disk)
        assert {name: data for name, data in files(disk).items() if name != "filler"} == kept  # no temporary file


@pytest.fixture
def preempted_sweep(tmp_path):
    """Run a sweep of one scripted trial preempted ``--preempt`` times; (the CLI's output, its exit status, rows)."""

    def run(preempt: str) -> tuple[str, int, list[dict]]:
        parameters = {"x": {"values": [1]}, "preempt": {"value": preempt}, "steps": {"value": 6}, "sleep": {"value": 0}}
        controller = sweep_cli("run", str(scripted(tmp_path, parameters)), "--local", "--dir", "out", cwd=tmp_path)
        out, _ = controller.communicate(timeout=300)
        return out, controller.returncode, results(tmp_path / "out")

    return run


def test_a_preempted_trial_runs_again_in_the_same_run_from_its_checkpoint(preempted_sweep):
    out, code, rows = preempted_sweep("1")
    assert code == 0, out
    (row,) = rows  # one row for the run, not one per attempt
    assert row["state"] == "finished", out
    run_dir = Path(row["run_dir"])
    attempts = [json.loads(line) for line in (run_dir / "attempts.jsonl").read_text().splitlines()]
    assert attempts == [{"run_id": run_dir.name, "resume": None}, {"run_id": run_dir.name, "resume": str(run_dir)}]
    assert "trial 0 preempted (exit 143); it runs again, from its checkpoint if any" in out
    assert f"trial 1 started: x=1 preempt=1 steps=6 sleep=0 (resuming run {run_dir.name} from checkpoints/)" in out
    steps = [line.split(",")[0] for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [str(step) for step in range(6)]  # the retry went on from the preempted step
    assert row["metric"] == pytest.approx(1 + 1 / 6)
    assert len(list(run_dir.parent.iterdir())) == 1
    assert json.loads((run_dir / "trial.json").read_text())["env"][RESUME_ENV] == str(run_dir)


def test_a_trial_preempted_every_time_fails_after_max_preemptions(preempted_sweep):
    out, code, rows = preempted_sweep("always")
    assert code == 1, out
    (row,) = rows
    assert row["state"] == "failed"
    assert row["error"] == f"preempted {MAX_PREEMPTIONS + 1} times in a row (exit code 143)"
    attempts = (Path(row["run_dir"]) / "attempts.jsonl").read_text().splitlines()
    assert len(attempts) == MAX_PREEMPTIONS + 1
    assert out.count("preempted (exit 143); it runs again") == MAX_PREEMPTIONS


def test_a_sweep_db_lost_after_a_sigkill_keeps_every_trial_that_ended(tmp_path):
    path = scripted(tmp_path, {"x": {"values": [1, 2, 3]}, "steps": {"value": 4}, "sleep": {"value": 0.2}})
    controller = sweep_cli("run", str(path), "--local", "--dir", "out", cwd=tmp_path)
    assert controller.stdout is not None
    for line in controller.stdout:  # two trials ended, the third runs
        if "trial 2 started" in line:
            break
    controller.kill()
    controller.wait()
    folder = tmp_path / "out"
    for lost in folder.glob(f"{STUDY_FILE}*"):  # the file and its write-ahead log
        lost.unlink()
    before = {run.name: metrics_text(run) for run in (folder / "runs").iterdir()}
    done = gradwatch("sweep", "run", str(path), "--local", "--dir", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rebuilt the study from results.json and trials/ (2 finished); 1 interrupted trials run again" in done.stdout
    rows = results(folder)
    assert sorted(r["state"] for r in rows) == ["finished", "finished", "finished", "interrupted"]
    assert sorted(r["params"]["x"] for r in rows if r["state"] == "finished") == [1, 2, 3]
    # The runs from before the kill are all still shown, untouched; only the interrupted trial ran again, in a new run.
    old = {Path(r["run_dir"]).name: r["state"] for r in rows if Path(r["run_dir"]).name in before}
    assert sorted(old.values()) == ["finished", "finished", "interrupted"]
    assert {name: metrics_text(folder / "runs" / name) for name in before} == before
