"""Every ready callback stack in ``callbacks/`` instantiates and trains (lightning-hydra-template's test_configs)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from conftest import column, read_metrics
from gradwatch.cli.fit import main

STACKS = sorted((Path(__file__).parents[1] / "callbacks").glob("*.yaml"))


def test_the_documented_stacks_exist():
    assert {p.stem for p in STACKS} == {"gradient-health", "activations", "stop-on-explosion", "none"}


@pytest.mark.parametrize("stack", STACKS, ids=[p.stem for p in STACKS])
def test_stack_trains_two_steps(stack, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["gradwatch"])
    root = tmp_path / "runs"
    main([
        "fit", "--config", str(stack), "--model", "CNN", "--data", "DigitsDataModule", "--model.depth", "2",
        "--trainer.max_steps", "2", "--trainer.log_every_n_steps", "1", "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    ])  # fmt: skip
    (run_dir,) = root.iterdir()
    rows = read_metrics(run_dir / "metrics.csv")
    stacked = yaml.safe_load(stack.read_text())
    watched = stacked.get("gradients", {}) is not None
    assert bool(column(rows, "grad/norm_total")) == watched
    sampled = any("ActivationMonitor" in c["class_path"] for c in (stacked.get("trainer") or {}).get("callbacks", []))
    assert bool(column(rows, "act/mean/backbone.stem.act")) == sampled
