"""The benchmarks keep working: each runs its ``--quick`` smoke mode (numbers meaningless, never asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench"
#: In bench/ but no benchmarks: the shared helpers and sweep_controller.py's trial program.
HELPERS = {"common.py", "stand_in_trial.py"}
#: A line each script prints once it has measured everything: its verdicts or its summary table.
EXPECTED = {
    "augment_throughput.py": "| preset | images/s |",
    "fsdp_overhead.py": "collectives per measurement",
    "gradient_overhead.py": "one logging step's statistics with update ratio",
    "lightning_overhead.py": "same work check: max |weight difference|",
    "report_speed.py": "page interactive (s)",
    "startup.py": "import gradwatch imports none of",
    "sweep_controller.py": "controller CPU per trial (median) <",
    "sweep_workers.py": "trials per hour, 2 workers / 1:",
    "warm_trials.py": "same trials, same results (every metrics.csv byte for byte)",
}
SCRIPTS = sorted(
    path.name for path in BENCH.glob("*.py") if path.name not in HELPERS and "def main(" in path.read_text()
)


def test_every_bench_has_an_expected_line():
    assert set(SCRIPTS) == set(EXPECTED), "add the new script's line to EXPECTED (or its name to HELPERS)"


def skip_without_chromium() -> None:
    """As the report tests: without Chromium skip locally, fail under CI (``$CI`` set)."""
    sys.path.insert(0, str(Path(__file__).with_name("report")))
    from browser import find_chromium

    if find_chromium() is None:
        reason = "chromium not found: apt-get install chromium (CI installs it)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"{reason}; $CI is set, so the report bench may not be skipped")
        pytest.skip(reason)


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_quick_mode_runs_to_its_verdicts(script, tmp_path):
    if script == "report_speed.py":
        skip_without_chromium()
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
    assert EXPECTED.get(script, "(no expected line)") in done.stdout, done.stdout[-3000:]
    assert (tmp_path / "out.json").stat().st_size > 0
