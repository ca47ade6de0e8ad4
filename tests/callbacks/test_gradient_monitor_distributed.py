"""The monitors beyond one eager process: DDP and FSDP2 on CPU (2 processes, gloo), and ``torch.compile``.

Each multi-process fit is checked against a single-process fit of the same global batches, with the statistics
computed independently of the processes' count: DDP averages gradients, FSDP2 shards them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import distributed_fit
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

SCRIPT = Path(distributed_fit.__file__)
#: Two processes import torch and Lightning one after the other; a hang (a collective one rank never joins) fails here.
TIMEOUT = 240
#: The statistics under comparison; `health/` counts and attenuation follow from them.
MEASURED = ("grad/norm/", "grad/norm_total", "grad/update_ratio/", "param/norm/")
#: The activation statistics under comparison (the model's activations are tanh: no dead fraction).
SAMPLED = ("act/mean/", "act/std/", "act/saturated/")
ALL_REDUCE, ALL_GATHER = "c10d.allreduce_.default", "c10d.allgather_.default"


def launch(out: Path, *args: str) -> subprocess.Popen:
    """Start ``distributed_fit.py --out OUT ARGS`` in its own process group (rank 1 is its child)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(SCRIPT), "--out", str(out), *args]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def finish(process: subprocess.Popen) -> str:
    """Wait for a launched fit; on a hang, kill its process group (both ranks) and fail with its output."""
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"distributed_fit.py hung for {TIMEOUT} s:\n{output[-4000:]}")
    assert process.returncode == 0, output[-4000:]
    return output


def run_beside(out: Path, args: list[str], reference: Path, **single: object) -> str:
    """Launch the 2-process fit, and while its processes start, fit the single-process reference here."""
    process = launch(out, *args)
    try:
        distributed_fit.fit(reference, devices=1, batch_size=32, **single)
    finally:
        output = finish(process)
    return output


def ranks(out: Path, world_size: int) -> list[dict]:
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(world_size)]


def by_step(metrics, key: str) -> dict[int, list[float]]:
    """Every logged value of ``key``, per step (one entry per CSV row that has it)."""
    values: dict[int, list[float]] = {}
    for step, value in zip(*metrics.series(key), strict=True):
        values.setdefault(int(step), []).append(float(value))
    return values


def check_same_as_one_process(out: Path, reference: Path, prefixes: tuple[str, ...], steps: list[int]) -> None:
    """Every key with ``prefixes`` is logged once per step (rank 0's loggers alone write) and equals the reference.

    The reference computes the same statistics in one process on the whole batch; they differ only by float32
    summation order.
    """
    rows = read_metrics(out / "csv" / "metrics.csv")
    reference_rows = read_metrics(reference / "csv" / "metrics.csv")
    keys = sorted(key for key in reference_rows.columns if key.startswith(prefixes))
    assert {key for key in rows.columns if key.startswith(prefixes)} == set(keys)
    assert keys
    for key in keys:
        values, expected = by_step(rows, key), by_step(reference_rows, key)
        wanted = [step for step in steps if step in expected]
        assert wanted, key
        assert all(len(values[step]) == 1 for step in wanted), key
        np.testing.assert_allclose(
            [values[step][0] for step in wanted],
            [expected[step][0] for step in wanted],
            rtol=1e-5,
            atol=1e-6 if key.startswith(("health/attenuation", "act/mean/")) else 0,
            err_msg=key,
        )


@pytest.mark.slow
def test_ddp_with_default_settings_draws_flow_images_each_epoch_and_matches_one_process(tmp_path):
    # Defaults plus flow images every epoch over two epochs: the case that crashed (only rank 0 reached the
    # collective `trainer.log_dir`) or hung. Logged to CSV and an offline W&B run, as `gradwatch fit` does.
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    args = ["--strategy", "ddp", "--epochs", "2", "--flow", "1", "--wandb"]
    run_beside(ddp, args, single, epochs=2, flow=1)
    check_same_as_one_process(ddp, single, (*MEASURED, "health/", *SAMPLED), steps=list(range(16)))
    rank0, rank1 = ranks(ddp, 2)
    assert rank0["measured_steps"] == rank1["measured_steps"] == list(range(16))
    assert rank0["history"] == rank1["history"]  # the same averaged gradients, bit for bit
    flow = sorted(p.name for p in (ddp / "csv" / "gradient-flow").iterdir())
    assert flow == [
        "grad-flow-bars-16.png",
        "grad-flow-bars-8.png",
        "grad-flow-heatmap-16.png",
        "grad-flow-heatmap-8.png",
    ]
    from wandb_records import history, run_file

    wandb_rows = history(run_file(ddp))
    assert sum(row.get("grad/flow/heatmap/_type") == "image-file" for row in wandb_rows) == 2
    # DDP's gradients need no reduction: the gradient monitor issues no collective; activations, one all-gather.
    assert all(ops == [] for ops in rank0["gradient_collectives"].values())
    assert all(ops == [ALL_GATHER] for ops in rank0["activation_collectives"].values())


@pytest.mark.slow
def test_ddp_stop_is_agreed_when_one_process_sees_a_nan(tmp_path):
    # Rank 1 alone gets a NaN in its already averaged gradient at step 4, with on_nonfinite="stop". Both stop after
    # the same step, instead of rank 0 waiting forever in the next all-reduce.
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    args = ["--steps", "8", "--on-nonfinite", "stop", "--nan-step", "4", "--nan-ranks", "1"]
    run_beside(ddp, args, single, steps=4)
    check_same_as_one_process(ddp, single, MEASURED, steps=[0, 1, 2, 3])
    rank0, rank1 = ranks(ddp, 2)
    for rank in (rank0, rank1):
        assert rank["global_step"] == 5, rank  # steps 0-4 (on rank 1 step 4 had its gradients dropped), then stop
        assert rank["measured_steps"] == [0, 1, 2, 3, 4]
        assert rank["should_stop"]
    assert "step 4: non-finite gradients" in rank1["stopped_reason"]
    assert distributed_fit.NAN_LAYER in rank1["stopped_reason"]
    assert rank0["stopped_reason"] == "another process saw a gradient verdict"
    assert np.isnan(rank1["history"][distributed_fit.NAN_LAYER][4])
    assert np.isfinite(rank0["history"][distributed_fit.NAN_LAYER][4])


@pytest.mark.slow
def test_fsdp2_statistics_are_the_full_tensors_with_one_collective_per_measurement(tmp_path):
    # FSDP2 through ModelParallelStrategy: each process holds half of every parameter and gradient (DTensor
    # shards). Measured every 2 steps, so steps 1, 3, 5 only take the update-ratio snapshot.
    fsdp, single = tmp_path / "fsdp", tmp_path / "single"
    args = ["--strategy", "fsdp2", "--steps", "6", "--every", "2", "--flow", "0"]
    run_beside(fsdp, args, single, steps=6, every=2, flow=0)
    check_same_as_one_process(fsdp, single, (*MEASURED, "health/", *SAMPLED), steps=[0, 2, 4])
    rank0, rank1 = ranks(fsdp, 2)
    assert rank0["layers"] == rank1["layers"] == ranks(single, 1)[0]["layers"]  # the user's module paths, in order
    assert rank0["history"] == rank1["history"]  # reduced: every process holds the full statistics
    rows = read_metrics(fsdp / "csv" / "metrics.csv")
    assert sorted(by_step(rows, "grad/update_ratio/head")) == [2, 4]
    for rank in (rank0, rank1):
        collectives = {int(step): ops for step, ops in rank["gradient_collectives"].items()}
        # One all-reduce per measurement, nothing on other steps, and at the end of fit the flow bars' one gather.
        assert collectives == {0: [ALL_REDUCE], 1: [], 2: [ALL_REDUCE], 3: [], 4: [ALL_REDUCE], 5: [ALL_GATHER]}
        sampled = {int(step): ops for step, ops in rank["activation_collectives"].items()}
        assert sampled == {1: [ALL_GATHER], 2: [], 3: [ALL_GATHER], 4: [], 5: [ALL_GATHER], 6: []}
    assert sorted(p.name for p in (fsdp / "csv" / "gradient-flow").iterdir()) == [
        "grad-flow-bars-6.png",
        "grad-flow-heatmap-6.png",
    ]


@pytest.mark.slow
def test_fsdp2_guard_and_stop_agree_when_a_nan_is_in_one_shard(tmp_path):
    # Rank 1's shard of the stem's gradient gets a NaN at step 3, which is not a logging step (every 50). The
    # guard's check is agreed (one scalar all-reduce a step), both measure, both hold the reduced NaN, both stop.
    fsdp = tmp_path / "fsdp"
    args = ["--strategy", "fsdp2", "--steps", "8", "--every", "50", "--guard", "--on-nonfinite", "stop"]
    finish(launch(fsdp, *args, "--nan-step", "3", "--nan-ranks", "1"))
    for rank in ranks(fsdp, 2):
        assert rank["global_step"] == 4, rank
        assert rank["measured_steps"] == [0, 3]
        assert "step 3: non-finite gradients in 1 of 7 layers (backbone.stem.conv)" in rank["stopped_reason"]
        assert np.isnan(rank["history"][distributed_fit.NAN_LAYER][1])
        collectives = rank["gradient_collectives"]
        assert collectives["1"] == collectives["2"] == [ALL_REDUCE]  # the guard's agreement, and nothing else


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
    (group,) = monitor.tracker.groups
    assert group.steps == [0, 1, 2]
    assert group.names[0] == "backbone.stem.conv"
    assert group.names[-1] == "head"
    rows = read_metrics(tmp_path / "monitored" / "csv" / "metrics.csv")
    assert sorted(by_step(rows, "grad/norm/backbone.stem.conv")) == [0, 1, 2]
