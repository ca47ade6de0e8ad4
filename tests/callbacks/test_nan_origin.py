"""GradientMonitor traces a run's first non-finite step to its origin and saves a reproducer: real Lightning fits.

The models (``nan_models.py``) plant the first non-finite value at step :data:`NAN_STEP`: a NaN in the forward output
of ``log_of`` (the log of inputs that turn negative), an Inf returned only by the backward of ``spike`` (a custom
``autograd.Function``), or a NaN in the batch itself.
"""

from __future__ import annotations

import html
import logging
import os
import subprocess
import sys
from pathlib import Path

import nan_models
import pytest
import torch
from nan_models import BATCH, FEATURES, NAN_RANK, NAN_STEP, NEGATIVES, WIDTH, Planted, planted_data

from conftest import make_trainer
from gradwatch.callbacks import GradientMonitor
from gradwatch.health.origin import Reproducer
from gradwatch.rundir import read_verdicts

HERE = Path(__file__).parent
#: The line of nan_models.py whose op's backward returns the Inf.
SPIKE_LINE = next(
    i for i, line in enumerate(Path(nan_models.__file__).read_text().splitlines(), 1) if ".apply(" in line
)
#: The rows of a fit that train; under manual optimization each batch takes two optimizer steps.
STEPS = 6
pytestmark = pytest.mark.filterwarnings(
    "ignore:The number of training batches",
    "ignore:.*does not have many workers",
)


def fit(tmp_path: Path, kind: str, *, manual: bool = False, planted: bool = True, **monitor_args) -> GradientMonitor:
    options = {"nonfinite_guard": True, "on_nonfinite": "skip", "flow_every_n_epochs": None, **monitor_args}
    monitor = GradientMonitor(**options)
    trainer = make_trainer(tmp_path, callbacks=[monitor], max_steps=STEPS * (2 if manual else 1))
    torch.manual_seed(0)
    trainer.fit(Planted(kind, manual=manual), train_dataloaders=planted_data(kind, STEPS, planted=planted))
    return monitor


def replay(path: Path) -> subprocess.CompletedProcess:
    """``gradwatch replay FILE`` in a fresh process, with the test models importable as a user's would be."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "gradwatch", "replay", str(path)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=Path.cwd())


def origin_entries(run: Path) -> list[dict]:
    return [entry for entry in read_verdicts(run) if entry.get("origin")]


@pytest.mark.slow  # the replay starts a fresh Python (torch and Lightning imports)
@pytest.mark.parametrize(
    ("kind", "manual", "phase", "module", "count"),
    [
        ("forward", False, "forward", "log_of", {"nan": NEGATIVES, "inf": 0, "numel": BATCH * FEATURES}),
        ("backward", False, "backward", "spike", {"nan": 0, "inf": WIDTH, "numel": BATCH * WIDTH}),
        ("backward", True, "backward", "spike", {"nan": 0, "inf": WIDTH, "numel": BATCH * WIDTH}),
    ],
    ids=["forward", "backward", "backward-manual"],
)
def test_the_planted_value_is_found_at_its_step_named_and_replays_in_a_fresh_process(
    tmp_path, caplog, kind, manual, phase, module, count
):
    with caplog.at_level(logging.WARNING, logger="gradwatch"):
        monitor = fit(tmp_path, kind, manual=manual)

    origin = monitor.origin
    assert (origin.step, origin.phase, origin.module, origin.rank) == (NAN_STEP, phase, module, None)
    assert origin.to_dict()["count"] == count
    if phase == "backward":
        assert origin.op == "InfGradBackward"
        assert origin.where.endswith(f"nan_models.py:{SPIKE_LINE} in forward")
        assert f"first non-finite value in the backward of `spike` (InfGradBackward at {origin.where}; " in origin.line
    else:
        expected = f"step {NAN_STEP}: first non-finite value in the forward output of `log_of` (inputs finite; 3 of 64"
        assert origin.line == f"{expected} elements nan)"
    run = tmp_path / "csv"
    (entry,) = origin_entries(run)
    assert entry["line"] == origin.line
    assert entry["step"] == NAN_STEP
    assert entry["origin"]["phase"] == phase
    assert entry["layers"] == [module]
    reproducer = run / f"nonfinite-step{NAN_STEP}.pt"
    assert entry["reproducer"] == str(reproducer)
    said = [r.getMessage() for r in caplog.records if "first non-finite value" in r.getMessage()]
    assert said == [f"gradwatch: {origin.line} (reproducer: {reproducer}; `gradwatch replay {reproducer}` re-runs it)"]

    done = replay(reproducer)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == origin.line


def test_the_finding_shows_in_the_report_though_skipping_let_the_run_recover(tmp_path):
    from gradwatch.report.page import render
    from gradwatch.report.runs import find

    monitor = fit(tmp_path, "forward")
    (run,) = find(tmp_path / "csv").runs
    assert run.verdicts() == []  # the step was skipped: no verdict stands at the last measurement
    assert run.origins() == [monitor.origin.line]
    page = render(find(tmp_path / "csv"), plotly_js="")
    assert f"<b>origin</b>: {html.escape(monitor.origin.line)}</p>" in page


def test_a_nan_in_the_batch_itself_is_named_as_the_data(tmp_path):
    monitor = fit(tmp_path, "batch")
    assert monitor.origin.line == (
        f"step {NAN_STEP}: first non-finite value in the batch itself, before any module (1 of {BATCH * (FEATURES + 1)}"
        " elements nan)"
    )


def test_manual_optimization_examines_only_the_backward_pass_of_the_optimizer_that_went_non_finite(tmp_path):
    monitor = fit(tmp_path, "forward", manual=True)
    assert (monitor.origin.step, monitor.origin.phase, monitor.origin.module) == (NAN_STEP, "forward", "log_of")
    reproducer = Reproducer.load(tmp_path / "csv" / f"nonfinite-step{NAN_STEP}.pt")
    # The first optimizer's backward pass came first in the step, finite; the second's carried the NaN.
    assert reproducer.manual
    assert reproducer.backwards == (1, 2)
    assert reproducer.finding == monitor.origin.line
    assert len(reproducer.inputs) == 1
    assert reproducer.inputs[0].batch_idx == NAN_STEP


def test_under_gradient_accumulation_the_whole_window_is_replayed_and_the_micro_batch_named(tmp_path):
    monitor = GradientMonitor(nonfinite_guard=True, on_nonfinite="skip", flow_every_n_epochs=None)
    trainer = make_trainer(tmp_path, callbacks=[monitor], max_steps=STEPS // 2, accumulate_grad_batches=2)
    trainer.fit(Planted("forward"), train_dataloaders=planted_data("forward", STEPS))
    # Batch 3 is the second of the window of optimizer step 1.
    assert monitor.origin.line == (
        "step 1: first non-finite value in the forward output of `log_of` (inputs finite; 3 of 64 elements nan;"
        " micro-batch 2 of 2)"
    )
    reproducer = Reproducer.load(tmp_path / "csv" / "nonfinite-step1.pt")
    assert [item.batch_idx for item in reproducer.inputs] == [2, 3]
    assert reproducer.loss_scale == 0.5


def test_a_finite_run_replays_nothing_writes_nothing_and_leaves_no_hook(tmp_path):
    monitor = fit(tmp_path, "forward", planted=False)
    assert monitor.origin is None
    assert not monitor._tracer.done
    run = tmp_path / "csv"
    assert not list(run.glob("nonfinite-*.pt"))
    assert read_verdicts(run) == []


def test_without_the_guard_only_measured_steps_keep_their_batch(tmp_path):
    monitor = fit(tmp_path, "forward", planted=False, nonfinite_guard=False, on_nonfinite="warn", log_every_n_steps=4)
    assert monitor.origin is None
    assert monitor._tracer.inputs == []  # the last step (5) is not measured: nothing of it is kept


def test_tracing_changes_nothing_in_the_training_itself(tmp_path):
    # Dropout draws from the RNG and batch norm updates its running statistics: the replay puts both back, and it
    # leaves the gradients to the step, so the run ends with the same weights and buffers, bit for bit.
    states = []
    for trace in (True, False):
        torch.manual_seed(0)
        monitor = GradientMonitor(nonfinite_guard=True, on_nonfinite="skip", trace_nonfinite=trace)
        model = Planted("backward")
        trainer = make_trainer(tmp_path / str(trace), callbacks=[monitor], max_steps=STEPS, logger=False)
        trainer.fit(model, train_dataloaders=planted_data("backward", STEPS))
        assert (monitor.origin is not None) is trace
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
        states.append(model.state_dict())
    assert states[0].keys() == states[1].keys()
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key


def test_without_a_run_folder_the_finding_is_said_and_nothing_is_written(tmp_path, caplog):
    monitor = GradientMonitor(nonfinite_guard=True, on_nonfinite="skip", flow_every_n_epochs=None)
    trainer = make_trainer(tmp_path, callbacks=[monitor], max_steps=STEPS, logger=False)
    with caplog.at_level(logging.WARNING, logger="gradwatch"):
        trainer.fit(Planted("forward"), train_dataloaders=planted_data("forward", STEPS))
    assert monitor.origin.module == "log_of"
    assert f"gradwatch: {monitor.origin.line}" in caplog.messages
    assert not list(tmp_path.rglob("*.pt"))


@pytest.mark.slow  # two processes import torch and Lightning, then a third replays
def test_under_ddp_the_process_whose_batch_made_the_nan_names_itself_and_its_reproducer_replays(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, nan_models.__file__, "--out", str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, start_new_session=True)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    run = tmp_path / "csv"
    (entry,) = origin_entries(run)
    line = f"rank {NAN_RANK}: step {NAN_STEP}: first non-finite value in the forward output of `log_of`"
    assert entry["line"] == f"{line} (inputs finite; {NEGATIVES} of {BATCH * FEATURES} elements nan)"
    assert entry["origin"]["rank"] == NAN_RANK
    # Only the process that found the origin saves its step; the other's batch replays finite.
    assert sorted(p.name for p in run.glob("*.pt")) == [f"nonfinite-step{NAN_STEP}-rank{NAN_RANK}.pt"]
    assert f"rank 0: step {NAN_STEP}: the replay of this process's batch found every value finite" in done.stderr
    replayed = replay(run / f"nonfinite-step{NAN_STEP}-rank{NAN_RANK}.pt")
    assert replayed.returncode == 0, replayed.stderr[-3000:]
    assert replayed.stdout.strip() == entry["line"]
