"""Shared test set-up: W&B offline, no update checks, small real trainers and a CSV reader."""

from __future__ import annotations

import os
from pathlib import Path

# Before anything imports wandb or albumentations.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
# Tests run in parallel (pytest-xdist, one worker per core) on tiny models: one thread per process is fastest, and
# two OpenMP pools spinning on the same cores slow small ops down a hundredfold. Subprocesses inherit this.
os.environ["OMP_NUM_THREADS"] = "1"

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from gradwatch.rundir import Metrics, read_metrics  # noqa: F401 (the tests' one reader, as the product's)

torch.set_num_threads(1)


def make_trainer(tmp_path: Path, **overrides: object) -> pl.Trainer:
    """A CPU trainer for a few steps that logs every step to ``tmp_path/csv/metrics.csv``."""
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": 4,
        "limit_val_batches": 2,
        "logger": CSVLogger(tmp_path, name="csv", version=""),
        "log_every_n_steps": 1,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    return pl.Trainer(**{**options, **overrides})


def column(metrics: Metrics, key: str) -> list[float]:
    """The values logged under ``key``, in logging order."""
    return metrics.values(key)


def steps(metrics: Metrics, key: str) -> list[int]:
    """The steps at which ``key`` was logged, in logging order."""
    return metrics.series(key)[0].astype(int).tolist()


def assert_learns_step(model: torch.nn.Module, loss: torch.Tensor) -> None:
    """Backpropagate ``loss``: it is finite and every parameter gets a finite gradient (timm's backward test)."""
    assert torch.isfinite(loss), f"loss is {loss}"
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing}"
    bad = [name for name, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient in {bad}"


@pytest.fixture
def trainer_factory(tmp_path: Path):
    """Build small trainers writing into this test's ``tmp_path``."""

    def factory(**overrides: object) -> pl.Trainer:
        return make_trainer(tmp_path, **overrides)

    return factory


@pytest.fixture(scope="session")
def report_browser():
    """A headless Chromium for the HTML report tests (``tests/report/browser.py``), one per xdist worker.

    Without Chromium the tests skip locally, and fail under CI (``$CI`` set): CI must run them.
    """
    import sys

    helpers = str(Path(__file__).with_name("report"))
    if helpers not in sys.path:  # pytest put it there if it collected a test module in tests/report/
        sys.path.insert(0, helpers)
    from browser import ReportBrowser, find_chromium

    if find_chromium() is None:
        reason = "chromium not found: apt-get install chromium (CI installs it)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"{reason}; $CI is set, so the browser tests may not be skipped")
        pytest.skip(reason)
    with ReportBrowser() as browser:
        yield browser
