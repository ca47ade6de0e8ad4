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


def on_a_terminal(*args: str, cwd: Path) -> tuple[int, str]:
    """``gradwatch ARGS`` with a pseudo-terminal as its output, as in an interactive shell: exit code, screen text."""
    import pty

    env = {**os.environ, "WANDB_MODE": "offline", "COLUMNS": "200", "TERM": "xterm"}
    env.pop("WANDB_SERVICE", None)
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "gradwatch", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=follower,
        stderr=follower,
    )  # fmt: skip
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process is gone
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return process.wait(timeout=60), b"".join(chunks).decode(errors="replace")


def test_on_a_terminal_one_live_line_stands_for_the_trials_and_a_pipe_gets_a_line_each(tmp_path):
    import re

    from test_local import scripted

    params = {"x": {"values": [1, 2, 3]}, "steps": {"value": 3}, "sleep": {"value": 0.4}}
    path = scripted(tmp_path, params, name="live")
    code, screen = on_a_terminal("sweep", "run", str(path), "--local", "--dir", "a", cwd=tmp_path)
    assert code == 0, screen
    # What the terminal shows line by line: cursor moves and colours out, each line as last drawn.
    lines = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line).split("\r")[-1] for line in screen.split("\n")]
    status = [line for line in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen).split("\r") if " done · " in line]
    assert any(re.search(r"[0-3]/3 done · [0-9] running · [0-3] queued · ", line) for line in status), screen
    assert any("best val/loss " in line and "ETA " in line for line in status), screen
    assert not [line for line in lines if line.startswith("gradwatch sweep: trial ")], screen  # no line per event
    assert "gradwatch sweep: 3 finished; results in " in screen

    piped = subprocess.run(
        [sys.executable, "-m", "gradwatch", "sweep", "run", str(path), "--local", "--dir", "b"], cwd=tmp_path,
        capture_output=True, text=True, timeout=120, env={**os.environ, "WANDB_MODE": "offline"},
    )  # fmt: skip
    assert piped.returncode == 0, piped.stdout + piped.stderr
    assert len(re.findall(r"^gradwatch sweep: trial \d started: ", piped.stdout, re.MULTILINE)) == 3
    assert " done · " not in piped.stdout


def test_the_status_line_counts_trials_and_says_the_best_and_the_time_left():
    from gradwatch.cli.progress import describe
    from gradwatch.sweep.local import Progress

    start = Progress(total=8, ended=0, running=2, elsewhere=0, best=None, elapsed=3.0, ended_here=0)
    assert describe(start, "val/acc") == "0/8 done · 2 running · 6 queued · 0:03"
    later = Progress(total=8, ended=4, running=2, elsewhere=1, best=(0.98519, 4), elapsed=3725.0, ended_here=2)
    assert describe(later, "val/acc") == (
        "4/8 done · 2 running · 1 on other machines · 1 queued · best val/acc 0.9852 (#4) · 1:02:05, ETA 2:04:10"
    )


def warm_servers_of(pid: int) -> list[str]:
    """The command lines of warm workers started by process ``pid`` that are still alive."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # not a process, or gone
            continue
        line = b" ".join(words).decode(errors="replace")
        if "gradwatch.sweep.warm" in line and f"--parent {pid} " in line + " ":
            found.append(line)
    return found


@pytest.mark.slow
def test_a_refused_file_stops_the_warm_worker_started_beside_the_check(tmp_path):
    path = write(tmp_path, parameters={"model.activaton": {"values": ["relu", "tanh"]}})
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("WANDB_SERVICE", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "gradwatch", "sweep", "run", str(path), "--local", "--dir", "out"], cwd=tmp_path,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _, err = process.communicate(timeout=300)
    assert process.returncode == 2, err
    assert "gradwatch fit has no option --model.activaton" in err
    assert warm_servers_of(process.pid) == []  # killed, not left importing torch for nobody
    assert not (tmp_path / "out").exists()


def test_the_warm_worker_imports_while_the_file_is_checked_and_is_killed_when_nothing_runs(tmp_path):
    import signal

    from gradwatch.cli.sweep import _warm_workers
    from gradwatch.sweep.spec import load_sweep

    with _warm_workers(load_sweep(write(tmp_path)), dict(os.environ)) as workers:
        server = workers.server
        assert server is not None  # started at once, before the check
        assert server.poll() is None
    assert server.returncode == -signal.SIGKILL  # not waited for: its imports would take seconds
    user_program = write(tmp_path, command=["${env}", "${interpreter}", "train.py", "${args}"])
    with _warm_workers(load_sweep(user_program), dict(os.environ)) as workers:
        assert workers is None  # a command it would not serve starts no worker
