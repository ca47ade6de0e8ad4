"""The benchmarks keep working: each runs its ``--quick`` smoke mode (numbers meaningless, never asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("gradient_overhead.py", "one logging step's statistics with update ratio"),
        ("fsdp_overhead.py", "collectives per measurement"),
    ],
)
def test_bench_quick_mode_runs_to_its_verdicts(script, expected, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", "--json", str(tmp_path / "out.json")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert expected in done.stdout
    assert (tmp_path / "out.json").stat().st_size > 0
