"""``gradwatch sweep`` as users run it: bad input exits 2 with one line before any trial; light imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

CONFIGS = Path(__file__).parents[2] / "sweeps" / "configs"
ROOT = Path(__file__).parents[2]


def gradwatch(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
    environ.pop("WANDB_SERVICE", None)
    return subprocess.run(
        [sys.executable, "-m", "gradwatch", *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=300
    )


def write(tmp_path: Path, **raw) -> Path:
    base = {
        "method": "grid",
        "metric": {"name": "val/acc", "goal": "maximize"},
        "parameters": {"model.depth": {"values": [2]}},
        "command": ["${env}", "${interpreter}", "-m", "gradwatch", "fit", "--config", str(CONFIGS / "cnn-digits.yaml"),
                    "${args}"],
    }  # fmt: skip
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**base, **raw}))
    return path


def test_a_schema_error_exits_2_in_one_line_without_importing_lightning(tmp_path):
    path = write(tmp_path, method="hyperopt")
    done = gradwatch("sweep", "run", str(path), "--local", cwd=tmp_path, env={"PYTHONVERBOSE": ""})
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"gradwatch sweep: error: {path}: method: unknown method 'hyperopt'; valid: bayes, grid, random"
    )
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_typo_in_a_parameter_fails_before_any_trial(tmp_path):
    path = write(tmp_path, parameters={"model.activaton": {"values": ["relu", "tanh"]}})
    done = gradwatch("sweep", "run", str(path), "--local", "--dir", "out", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "parameters.model.activaton: gradwatch fit has no option --model.activaton" in done.stderr
    assert "(did you mean 'model.activation'?)" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["run", "missing.yaml", "--local"], "missing.yaml: cannot read the sweep file"),
        (["run", "sweep.yaml", "--workers", "0"], "argument --workers: expected a whole number >= 1, got 0"),
        (["run", "sweep.yaml", "--count", "two"], "argument --count: expected a whole number >= 1, got 'two'"),
        (["agent", "me/proj/abc123"], "gradwatch sweep agent needs the W&B service, but WANDB_MODE=offline"),
        (["launch"], "invalid choice: 'launch'"),
    ],
)
def test_bad_arguments(tmp_path, args, words):
    write(tmp_path)
    done = gradwatch("sweep", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert words in done.stderr


def test_agent_without_an_account_says_how_to_log_in(tmp_path):
    env = {"WANDB_MODE": "", "NETRC": str(tmp_path / "no-netrc"), "WANDB_API_KEY": ""}
    done = gradwatch("sweep", "agent", "me/proj/abc123", cwd=tmp_path, env=env)
    assert done.returncode == 2
    assert "needs a W&B account: run `wandb login` (or set WANDB_API_KEY), or use --local" in done.stderr


def test_import_gradwatch_and_the_sweep_command_stay_light():
    code = (
        "import sys, gradwatch, gradwatch.sweep, gradwatch.cli.sweep, gradwatch.cli;"
        "print(sorted(m for m in ('wandb', 'optuna', 'plotly', 'torch', 'lightning') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.strip() == "[]"
