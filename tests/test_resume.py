"""Writing safely and starting safely: the appending CSV logger, atomic checkpoints, full and read-only disks, bad
``--ckpt_path`` and ``--resume`` values refused before any run folder exists."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from disks import fill, small_disk
from gradwatch.resume import AtomicCheckpointIO, ResumableCSVLogger
from test_cli import QUICK, gradwatch

FIT = ["fit", "--model", "CNN", "--data", "DigitsDataModule", "--model.depth", "2", "--model.width", "8", *QUICK]


def table(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


#: What Lightning says on stderr as a run starts: the seed (set before the model exists), then, once the Trainer
#: exists, its accelerators. An error found before the Trainer comes after the first line alone.
STARTING = ("Seed set to ",)
TRAINING = (*STARTING, "GPU available: ", "TPU available: ")


def one_error(done: subprocess.CompletedProcess, code: int = 2, said_before: tuple[str, ...] = STARTING) -> str:
    """The one line the command said on stderr, after checking it failed with ``code`` and no traceback."""
    assert done.returncode == code, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith(said_before)]
    assert len(lines) == 1, done.stderr[-3000:]
    return lines[0]


def no_run_folder(cwd: Path) -> bool:
    runs = cwd / "runs"
    return not runs.exists() or not any(runs.iterdir())


def test_the_csv_logger_continues_a_runs_file_widens_it_and_cuts_it_back(tmp_path):
    folder = tmp_path / "abc"
    folder.mkdir()
    (folder / "metrics.csv").write_text("epoch,step,train/loss\n0,0,2.3\n0,1,2.1\n0,2,1.9")  # killed mid-row
    logger = ResumableCSVLogger(tmp_path, name="", version="abc")

    assert logger.rows_logged == 2  # the half-written row is dropped, the others kept
    logger.log_metrics({"train/loss": 1.8, "val/acc": 0.5}, step=2)
    logger.save()
    assert table(folder / "metrics.csv") == [
        ["epoch", "step", "train/loss", "val/acc"],
        ["0", "0", "2.3", ""],
        ["0", "1", "2.1", ""],
        ["", "2", "1.8", "0.5"],
    ]
    logger.log_metrics({"train/loss": 1.7}, step=3)
    assert logger.rows_logged == 4  # one waiting for the next flush
    logger.truncate(2)
    assert [row[1] for row in table(folder / "metrics.csv")] == ["step", "0", "1"]
    assert logger.rows_logged == 2


def test_a_checkpoint_that_does_not_fit_leaves_the_last_one_whole_and_no_partial_file(tmp_path):
    with small_disk(tmp_path / "disk", "1m") as disk:
        io = AtomicCheckpointIO()
        io.save_checkpoint({"step": 1, "weights": torch.zeros(1000)}, disk / "last.ckpt")
        with pytest.raises(OSError, match="No space left on device") as raised:
            io.save_checkpoint({"step": 2, "weights": torch.zeros(1_000_000)}, disk / "last.ckpt")  # 4 MB
        assert raised.value.filename == str(disk / "last.ckpt")
        assert torch.load(disk / "last.ckpt", weights_only=True)["step"] == 1
        assert [path.name for path in disk.iterdir()] == ["last.ckpt"]


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (None, "no such file"),
        (b"", "the file is empty"),
        (b"\x00garbage" * 100, "not a whole checkpoint"),
        ("half", "not a whole checkpoint"),
    ],
    ids=["missing", "empty", "garbage", "cut-short"],
)
def test_a_bad_ckpt_path_is_one_line_before_any_run_exists(tmp_path, content, said):
    path = tmp_path / "model.ckpt"
    if content == "half":
        torch.save({"state_dict": {"w": torch.zeros(10_000)}}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif content is not None:
        path.write_bytes(content)

    line = one_error(gradwatch(*FIT, "--ckpt_path", str(path), cwd=tmp_path))

    assert line.startswith(f"gradwatch: error: --ckpt_path {path}: {said}"), line
    assert "weights_only" not in line  # torch's advice to unpickle an untrusted file is no advice
    assert no_run_folder(tmp_path)


def test_ckpt_path_last_on_a_new_run_points_to_resume(tmp_path):
    line = one_error(gradwatch(*FIT, "--ckpt_path", "last", cwd=tmp_path))
    assert "a new run has no checkpoints of its own" in line
    assert "gradwatch fit --resume runs/<run id>" in line
    assert no_run_folder(tmp_path)


def test_resume_names_what_it_could_not_find(tmp_path):
    line = one_error(gradwatch("fit", "--resume", "nosuch", cwd=tmp_path))
    assert line == "gradwatch: error: --resume nosuch: no run there (looked for nosuch or runs/nosuch)"

    (tmp_path / "runs" / "empty1").mkdir(parents=True)
    (tmp_path / "runs" / "empty1" / "config.yaml").write_text("model: gradwatch.CNN\n")
    line = one_error(gradwatch("fit", "--resume", "empty1", cwd=tmp_path))
    assert "no checkpoint to resume from (it stopped before saving one); start it over with" in line

    line = one_error(gradwatch("validate", "--resume", "empty1", cwd=tmp_path))
    assert line == "gradwatch: error: --resume: only `gradwatch fit` continues a run"


def test_a_read_only_runs_folder_is_one_line_before_training(tmp_path):
    with small_disk(tmp_path / "ro", "1m", read_only=True) as disk:
        line = one_error(gradwatch(*FIT, "--trainer.default_root_dir", str(disk / "runs"), cwd=tmp_path))
    folder = disk / "runs"
    assert line == f"gradwatch: error: --trainer.default_root_dir {folder}: cannot write there (Read-only file system)"


def test_a_nearly_full_disk_is_one_line_before_training(tmp_path):
    with small_disk(tmp_path / "disk", "300k") as disk:
        line = one_error(gradwatch(*FIT, "--trainer.default_root_dir", str(disk / "runs"), cwd=tmp_path))
        assert no_run_folder(disk)
    assert f"--trainer.default_root_dir {disk / 'runs'}: 0.3 MB free on its disk; a run of this model needs" in line


@pytest.mark.slow
def test_a_disk_that_fills_up_mid_training_stops_the_run_in_one_line_and_keeps_the_last_checkpoint(tmp_path):
    with small_disk(tmp_path / "disk", "4m") as disk:
        out = (tmp_path / "out.txt").open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "gradwatch", *FIT, "--trainer.max_epochs", "1000"],
            cwd=disk,
            stdout=subprocess.DEVNULL,
            stderr=out,
            env={**os.environ, "WANDB_MODE": "offline"},
        )
        deadline = time.monotonic() + 120
        while not list(disk.glob("runs/*/checkpoints/*.ckpt")):
            assert process.poll() is None, (tmp_path / "out.txt").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        fill(disk)  # another process takes the rest of the disk
        code = process.wait(timeout=120)
        said = (tmp_path / "out.txt").read_text()
        (folder,) = (disk / "runs").iterdir()
        kept = list((folder / "checkpoints").iterdir())
        loaded = [torch.load(path, map_location="cpu", weights_only=False)["global_step"] for path in kept]

    line = one_error(subprocess.CompletedProcess([], code, "", said), code=1, said_before=TRAINING)
    assert line.startswith("gradwatch: error: No space left on device writing ")
    assert f"; free space, then `gradwatch fit --resume runs/{folder.name}`" in line
    assert len(kept) == 1  # the last good one; no partial or temporary file
    assert kept[0].suffix == ".ckpt"
    assert f"kept: runs/{folder.name}/checkpoints/{kept[0].name}" in line
    assert loaded[0] > 0
