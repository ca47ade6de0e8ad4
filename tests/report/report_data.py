"""Real runs for the report tests: a local sweep whose outcome the test decides, and the ``gradwatch`` command."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

TRIAL = Path(__file__).with_name("gradient_trial.py")

#: depth × activation × residual: the two sigmoid / tanh runs without residual at depth 16 vanish (gradient_trial).
SWEEP = {
    "name": "vanish",
    "program": str(TRIAL),
    "method": "grid",
    "metric": {"name": "val/acc", "goal": "maximize"},
    "parameters": {
        "depth": {"values": [4, 16]},
        "activation": {"values": ["relu", "sigmoid", "tanh"]},
        "residual": {"values": [True, False]},
    },
    "command": ["${env}", "${interpreter}", "${program}", "${args}"],
}
EXPECTED_SUMMARY = (
    "2 of 12 runs vanished; all of them depth >= 16, sigmoid or tanh, without residual "
    "(and every run with those settings did)."
)


def gradwatch(*args: str, cwd: Path, check: bool = False, prefix: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """Run the ``gradwatch`` command as a user does, W&B offline; ``prefix`` runs it under another command."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("WANDB_SERVICE", None)
    command = [*prefix, sys.executable, "-m", "gradwatch", *args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def run_sweep(folder: Path, **changes: object) -> Path:
    """Run :data:`SWEEP` (with ``changes``) locally into ``folder``; returns the sweep folder."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sweep-file.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, **changes}, sort_keys=False))
    gradwatch("sweep", "run", str(path), "--local", "--workers", "2", "--dir", "sweep", cwd=folder, check=True)
    return folder / "sweep"


@pytest.fixture(scope="module")
def vanishing_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished local sweep of 12 real trial processes, two of which vanish."""
    return run_sweep(tmp_path_factory.mktemp("report"))
