"""GradientMonitor beyond one eager process: DDP on CPU (2 processes, gloo) and ``torch.compile``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import ddp_fit
import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters
from torch.utils.data import DataLoader, TensorDataset

from conftest import make_trainer, read_metrics
from gradwatch import CNN
from gradwatch.callbacks import GradientMonitor

# The models here train without validation data.
pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")

SCRIPT = Path(__file__).with_name("ddp_fit.py")
#: Two processes import torch and Lightning one after the other; a hang (a collective one rank never joins) fails here.
TIMEOUT = 240
#: The statistics under comparison; `health/` counts and attenuation follow from them.
MEASURED = ("grad/norm/", "grad/norm_total", "grad/update_ratio/", "param/norm/")


def launch(out: Path, *args: str) -> subprocess.Popen:
    """Start ``ddp_fit.py --out OUT ARGS`` in its own process group (rank 1 is its child)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(SCRIPT), "--out", str(out), *args]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def finish(process: subprocess.Popen) -> None:
    """Wait for a launched fit; on a hang, kill its process group (both ranks) and fail with its output."""
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"ddp_fit.py hung for {TIMEOUT} s:\n{output[-4000:]}")
    assert process.returncode == 0, output[-4000:]


def ranks(out: Path, world_size: int) -> list[dict]:
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(world_size)]


def by_step(rows: list[dict[str, str]], key: str) -> dict[int, list[float]]:
    """Every logged value of ``key``, per step (one entry per CSV row that has it)."""
    values: dict[int, list[float]] = {}
    for row in rows:
        if row.get(key):
            values.setdefault(int(row["step"]), []).append(float(row[key]))
    return values


@pytest.mark.slow
def test_ddp_statistics_equal_one_process_are_logged_once_and_a_stop_is_agreed(tmp_path):
    # One DDP fit (2 × 16 samples a step; rank 1 alone gets a NaN in its already averaged gradient at step 4, with
    # on_nonfinite="stop") and, here while its processes start, one single-process fit of the same global batches
    # (32 samples a step). One test, so that pytest-xdist never runs the DDP fit twice.
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    process = launch(ddp, "--devices", "2", "--batch-size", "16", "--steps", "8",
                     "--on-nonfinite", "stop", "--nan-step", "4", "--nan-ranks", "1")  # fmt: skip
    try:
        ddp_fit.fit(single, devices=1, batch_size=32, steps=4)
    finally:
        finish(process)
    check_same_statistics_logged_once(ddp, single)
    check_stopped_together(ddp)


def check_same_statistics_logged_once(ddp: Path, single: Path) -> None:
    """DDP's averaged gradients are the single process's (up to float32 summation order): so are the statistics.

    Steps 0-3 are compared; the DDP fit stops after step 4.
    """
    ddp_rows = read_metrics(ddp / "csv" / "metrics.csv")
    single_rows = read_metrics(single / "csv" / "metrics.csv")
    keys = sorted(key for key in single_rows[0] if key.startswith((*MEASURED, "health/")))
    assert {key for key in ddp_rows[0] if key.startswith((*MEASURED, "health/"))} == set(keys)
    assert "grad/norm/backbone.stem.conv" in keys
    assert "grad/update_ratio/head" in keys
    for key in keys:
        ddp_values, single_values = by_step(ddp_rows, key), by_step(single_rows, key)
        first = 1 if key.startswith("grad/update_ratio/") else 0  # no update before the first step
        assert sorted(ddp_values) == list(range(first, 5)), key
        # Logged once: rank 1 measures too, but only rank 0's loggers write.
        assert all(len(values) == 1 for values in ddp_values.values()), key
        np.testing.assert_allclose(
            [ddp_values[step][0] for step in range(first, 4)],
            [single_values[step][0] for step in range(first, 4)],
            rtol=1e-5,
            atol=1e-6 if key.startswith("health/attenuation") else 0,
            err_msg=key,
        )

    # Rank 1 measured the same layers at the same steps and, before its NaN, computed the same statistics.
    rank0, rank1 = ranks(ddp, 2)
    (alone,) = ranks(single, 1)
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["layers"] == rank1["layers"] == alone["layers"]
    assert alone["measured_steps"] == [0, 1, 2, 3]
    assert rank1["grad_norms"][:4] == rank0["grad_norms"][:4]  # the same averaged gradients, bit for bit
    np.testing.assert_allclose(rank0["grad_norms"][:4], alone["grad_norms"], rtol=1e-5)


def check_stopped_together(ddp: Path) -> None:
    """Rank 1 saw the NaN; rank 0's gradients stayed finite, and it stopped because the other process saw a verdict.

    Both stop after the same step, instead of rank 0 waiting forever in the next all-reduce.
    """
    rank0, rank1 = ranks(ddp, 2)
    for rank in (rank0, rank1):
        assert rank["global_step"] == 5, rank  # steps 0-4 (on rank 1 step 4 had its gradients dropped), then stop
        assert rank["measured_steps"] == [0, 1, 2, 3, 4]
        assert rank["should_stop"]
    assert "step 4: non-finite gradients" in rank1["stopped_reason"]
    assert "backbone.stem.conv" in rank1["stopped_reason"]
    assert rank0["stopped_reason"] == "another process saw a gradient verdict"
    assert np.isnan(rank1["grad_norms"][4][0])
    assert np.isfinite(rank0["grad_norms"][4]).all()


def images(n: int = 96) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 8, 8, generator=generator), torch.randint(0, 10, (n,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=32)


def fit_compiled(tmp_path: Path, callbacks: list) -> tuple[int, int]:
    """Fit a ``torch.compile``-d CNN (dynamo only) for 3 steps; the graph breaks and graphs dynamo made."""
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = CNN(depth=2, width=4, norm="layer", num_classes=10, in_channels=1)
    trainer = make_trainer(tmp_path, callbacks=callbacks, max_steps=3)
    trainer.fit(torch.compile(model, backend="eager"), train_dataloaders=images())
    assert trainer.global_step == 3
    return sum(counters["graph_break"].values()), counters["stats"]["unique_graphs"]


@pytest.mark.slow  # dynamo traces the model twice
def test_torch_compile_gets_no_extra_graph_break_and_every_step_is_measured(tmp_path):
    plain = fit_compiled(tmp_path / "plain", [])
    monitor = GradientMonitor(log_every_n_steps=1, flow_every_n_epochs=None)
    try:
        monitored = fit_compiled(tmp_path / "monitored", [monitor])
    finally:
        torch._dynamo.reset()
    assert plain[1] > 0, "dynamo compiled nothing: the test would prove nothing"
    assert monitored == plain  # (graph breaks, graphs): Lightning's `self.log` breaks the graph; the monitor adds none
    (group,) = monitor._groups.values()
    assert group.steps == [0, 1, 2]
    assert group.stats.names[0] == "backbone.stem.conv"
    assert group.stats.names[-1] == "head"
    rows = read_metrics(tmp_path / "monitored" / "csv" / "metrics.csv")
    assert sorted(int(row["step"]) for row in rows if row.get("grad/norm/backbone.stem.conv")) == [0, 1, 2]
