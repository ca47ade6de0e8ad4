"""Preemption as schedulers do it: real signals to a real ``gradwatch fit``, then ``gradwatch fit --resume``."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_cli import QUICK, gradwatch
from wandb_records import exit_code, preempting, run_file

#: Trains far longer than any test waits: only a signal ends it.
TRAIN = [
    "fit", "--model", "CNN", "--data", "DigitsDataModule", "--model.depth", "2", "--model.width", "8",
    "--trainer.max_epochs", "1000", "--trainer.log_every_n_steps", "5", *QUICK,
]  # fmt: skip

pytestmark = pytest.mark.slow


def start(cwd: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("WANDB_SERVICE", None)
    out = (cwd / "out.txt").open("w")
    return subprocess.Popen([sys.executable, "-m", "gradwatch", *args], cwd=cwd, env=env, stdout=out, stderr=out)


def run_folder(cwd: Path) -> Path:
    (folder,) = (cwd / "runs").iterdir()
    return folder


def rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def wait_for_rows(cwd: Path, process: subprocess.Popen, count: int, timeout: float = 120) -> None:
    """Until the run has flushed ``count`` rows of metrics (it is well into training)."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, (cwd / "out.txt").read_text()[-3000:]
        assert time.monotonic() < deadline, f"fewer than {count} rows after {timeout} s"
        files = list((cwd / "runs").glob("*/metrics.csv"))
        if files and len(files[0].read_text().splitlines()) > count:
            return
        time.sleep(0.2)


def stop(cwd: Path, process: subprocess.Popen, signum: int) -> tuple[int, str]:
    process.send_signal(signum)
    code = process.wait(timeout=120)
    return code, (cwd / "out.txt").read_text()


def logged_twice(table: list[dict[str, str]]) -> list[tuple[str, str]]:
    """(step, key) pairs with a value in more than one row: a step logged twice."""
    seen, twice = set(), []
    for row in table:
        for key, value in row.items():
            if value and key not in ("step", "epoch"):
                twice += [(row["step"], key)] if (row["step"], key) in seen else []
                seen.add((row["step"], key))
    return twice


def test_sigterm_saves_a_checkpoint_exits_143_and_resume_continues_the_same_run(tmp_path):
    process = start(tmp_path, *TRAIN)
    wait_for_rows(tmp_path, process, 60)
    code, said = stop(tmp_path, process, signal.SIGTERM)

    folder = run_folder(tmp_path)
    assert code == 143, said[-3000:]
    assert "Traceback" not in said
    (line,) = [line for line in said.splitlines() if line.startswith("gradwatch: preempted")]
    match = re.match(r"gradwatch: preempted \(SIGTERM\) at step (\d+), epoch (\d+); checkpoint (\S+); ", line)
    assert match, line
    step, epoch, checkpoint = int(match[1]), int(match[2]), Path(match[3])
    assert f"resume with `gradwatch fit --resume runs/{folder.name}`" in line
    saved = torch.load(tmp_path / checkpoint, map_location="cpu", weights_only=False)
    assert (saved["global_step"], saved["epoch"]) == (step, epoch)
    first = run_file(folder)
    assert exit_code(first) == 143
    assert preempting(first)
    before = rows(folder)

    resumed = gradwatch("fit", "--resume", f"runs/{folder.name}", "--trainer.max_epochs", str(epoch + 2), cwd=tmp_path)

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [folder.name]  # the same run, no second folder
    after = rows(folder)
    assert after[: len(before)] == before  # every row logged before the preemption, kept as it was
    assert logged_twice(after) == []
    steps = [int(row["step"]) for row in after[len(before) :]]
    assert steps
    assert min(steps) >= step - 1
    assert max(steps) > step
    # The W&B run continues: a second offline run of the same id, both named for `wandb sync` to upload as one.
    pieces = sorted(p.relative_to(tmp_path) for p in (folder / "wandb").glob(f"offline-run-*-{folder.name}"))
    assert len(pieces) == 2
    assert f"upload: wandb sync {pieces[0]} {pieces[1]})" in resumed.stdout


def test_sigusr1_is_a_preemption_too(tmp_path):
    process = start(tmp_path, *TRAIN)
    wait_for_rows(tmp_path, process, 30)
    code, said = stop(tmp_path, process, signal.SIGUSR1)

    assert code == 143, said[-3000:]
    assert "gradwatch: preempted (SIGUSR1) at step" in said
    assert (run_folder(tmp_path) / "checkpoints" / "preempted.ckpt").is_file()


def test_a_stop_the_sweep_asked_for_ends_the_run_cleanly_with_nothing_to_resume(tmp_path):
    process = start(tmp_path, *TRAIN)
    wait_for_rows(tmp_path, process, 30)
    (run_folder(tmp_path) / "stop-requested").write_text("pruned by hyperband at val/acc 0.12\n")
    code, said = stop(tmp_path, process, signal.SIGTERM)

    assert code == 0, said[-3000:]
    assert re.search(r"gradwatch: stopped at step \d+: pruned by hyperband at val/acc 0.12;", said), said[-2000:]
    assert not (run_folder(tmp_path) / "checkpoints" / "preempted.ckpt").exists()
    assert exit_code(run_file(run_folder(tmp_path))) == 0


def test_after_sigkill_resume_cuts_the_rows_logged_since_the_checkpoint(tmp_path):
    process = start(tmp_path, *TRAIN, "--trainer.log_every_n_steps", "1")
    folder = None
    while folder is None or not list((folder / "checkpoints").glob("*.ckpt")):
        wait_for_rows(tmp_path, process, 10)
        folder = run_folder(tmp_path)
        time.sleep(0.2)
    wait_for_rows(tmp_path, process, len(rows(folder)) + 30)  # rows logged after that checkpoint
    process.kill()
    process.wait(timeout=60)
    (checkpoint,) = (folder / "checkpoints").glob("*.ckpt")
    kept = torch.load(checkpoint, map_location="cpu", weights_only=False)["callbacks"]["Preemption"]["csv_rows"]
    before = rows(folder)
    assert len(before) > kept

    epoch = int(re.search(r"epoch=(\d+)", checkpoint.name)[1])
    resumed = gradwatch("fit", "--resume", str(folder), "--trainer.max_epochs", str(epoch + 2), cwd=tmp_path)

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = rows(folder)
    assert after[:kept] == before[:kept]
    assert logged_twice(after) == []
