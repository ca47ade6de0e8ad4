"""Warm trial workers: real fork servers and real trials, each checked against what a fresh process would do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import read_metrics
from gradwatch.sweep import load_sweep
from gradwatch.sweep.local import LocalSweep
from gradwatch.sweep.warm import WarmWorkers, warm_entry
from wandb_records import config, exit_code, history, run_file

CONFIGS = Path(__file__).parents[2] / "sweeps" / "configs"
BIN = str(Path(sys.executable).parent)
#: The trial program of most tests: prints what it was given as one JSON line, then does what its argument says.
PROBE = """
import json, os, sys
print(json.dumps({
    "argv": sys.argv, "executable": sys.executable, "cwd": os.getcwd(), "path": sys.path[:3],
    "pid": os.getpid(), "pgid": os.getpgid(0), "sid": os.getsid(0), "stdin": os.read(0, 10).decode(),
    "env": {k: os.environ.get(k) for k in ("WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH", "CUDA_VISIBLE_DEVICES",
                                           "GW_CUSTOM", "GW_FROM_ENV_WORD")},
    "shell_env": os.popen("echo $GW_CUSTOM").read().strip(),
}), flush=True)
what = sys.argv[1] if len(sys.argv) > 1 else "0"
if what == "raise":
    raise RuntimeError("boom")
if what == "sleep":
    import time
    time.sleep(600)
if what == "threads":
    import threadpoolctl, torch
    blas = sorted(i["num_threads"] for i in threadpoolctl.threadpool_info() if i["internal_api"] == "openblas")
    print(json.dumps({"torch": torch.get_num_threads(), "blas": blas}))
sys.exit(int(what) if what.isdigit() else 0)
"""


@pytest.fixture
def probe(tmp_path):
    """A package ``warmprobe`` on ``PYTHONPATH`` (of a trial's environment), and that environment."""
    package = tmp_path / "lib" / "warmprobe"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(PROBE)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(tmp_path / "lib")}
    env.pop("WANDB_SERVICE", None)
    return env


def workers(lines: list[str] | None = None, preload: tuple[str, ...] = ()) -> WarmWorkers:
    """A fork server for ``warmprobe`` (and gradwatch), importing only ``preload``: it is ready in a moment."""
    echo = lines.append if lines is not None else print
    return WarmWorkers(echo=echo, preload=preload, programs=("gradwatch", "warmprobe"))


def run_probe(server: WarmWorkers, tmp_path: Path, env: dict, *args: str, cwd: Path | None = None):
    log_path = tmp_path / "trial.log"
    with log_path.open("ab") as log:
        process = server.popen(["/usr/bin/env", "python", "-m", "warmprobe", *args], env=env, stdout=log, cwd=cwd)
    return process, log_path


def said(log_path: Path) -> dict:
    return json.loads(log_path.read_text().splitlines()[0])


def test_only_gradwatch_run_by_this_interpreter_is_served(tmp_path):
    env = {"PATH": f"{BIN}{os.pathsep}/usr/bin:/bin"}
    entry = warm_entry(["/usr/bin/env", "GW_X=1", "python", "-m", "gradwatch", "fit", "--x"], env)
    assert (entry.kind, entry.target, entry.args, entry.env["GW_X"]) == ("module", "gradwatch", ["fit", "--x"], "1")
    script = warm_entry(["gradwatch", "fit"], env)
    assert (script.kind, Path(script.target).name, script.args) == ("script", "gradwatch", ["fit"])
    other_python = tmp_path / "bin" / "python"
    other_python.parent.mkdir()
    other_python.symlink_to(sys.executable)  # the same interpreter file, another folder: another environment
    for command, path in [
        (["python", "train.py"], env["PATH"]),  # a user's program
        (["python", "-u", "-m", "gradwatch", "fit"], env["PATH"]),  # interpreter options
        (["/usr/bin/env", "-i", "python", "-m", "gradwatch", "fit"], env["PATH"]),  # env options
        (["python", "-m", "gradwatch", "fit"], str(other_python.parent)),
        (["python", "-m", "json.tool"], env["PATH"]),
        (["no-such-program", "fit"], env["PATH"]),
    ]:
        assert warm_entry(command, {"PATH": path}) is None, command


def test_a_trial_gets_its_argv_environment_folder_session_and_log(tmp_path, probe):
    env = {**probe, "WANDB_RUN_ID": "abc12345", "GW_CUSTOM": "custom value", "CUDA_VISIBLE_DEVICES": "3"}
    with workers() as server:
        process, log = run_probe(server, tmp_path, env, "0", "--flag=x", cwd=tmp_path)
        assert process.wait(timeout=60) == 0
        assert process.poll() == 0
    got = said(log)
    assert got["argv"] == [str(tmp_path / "lib" / "warmprobe" / "__main__.py"), "0", "--flag=x"]
    assert got["executable"] == str(Path(BIN) / "python")
    assert got["cwd"] == str(tmp_path)
    assert got["path"][:2] == [str(tmp_path), str(tmp_path / "lib")]  # as `python -m`: the folder, then PYTHONPATH
    assert got["pid"] == got["pgid"] == got["sid"] == process.pid  # its own session and process group
    assert got["stdin"] == ""  # /dev/null
    assert got["env"] == {"WANDB_RUN_ID": "abc12345", "WANDB_SWEEP_PARAM_PATH": None, "CUDA_VISIBLE_DEVICES": "3",
                          "GW_CUSTOM": "custom value", "GW_FROM_ENV_WORD": None}  # fmt: skip
    assert got["shell_env"] == "custom value"  # the C environment too: a program it starts sees it


def test_a_console_script_runs_as_its_own_file(tmp_path, probe):
    script = tmp_path / "bin" / "warmprobe"
    script.parent.mkdir()
    script.write_text(f"#!{sys.executable}\n{PROBE}")
    script.chmod(0o755)
    env = {**probe, "PATH": f"{script.parent}{os.pathsep}{probe['PATH']}"}
    with workers() as server, (tmp_path / "trial.log").open("ab") as log:
        process = server.popen(["warmprobe", "4"], env=env, stdout=log, cwd=tmp_path)
        assert process.wait(timeout=60) == 4
    got = said(tmp_path / "trial.log")
    assert got["argv"] == [str(script), "4"]
    assert got["path"][:2] == [str(script.parent), str(tmp_path / "lib")]  # as a script: its folder first
    assert got["executable"] == sys.executable


@pytest.mark.parametrize(
    ("args", "code", "in_log"),
    [(("0",), 0, ""), (("3",), 3, ""), (("raise",), 1, "RuntimeError: boom")],
    ids=["exit-0", "exit-3", "exception"],
)
def test_exit_statuses_and_tracebacks_are_a_fresh_processes(tmp_path, probe, args, code, in_log):
    with workers() as server:
        process, log = run_probe(server, tmp_path, probe, *args)
        assert process.wait(timeout=60) == code
    fresh = subprocess.run([sys.executable, "-m", "warmprobe", *args], env=probe, capture_output=True, text=True)
    assert fresh.returncode == code
    assert in_log in log.read_text()
    assert in_log in fresh.stderr
    if in_log:
        assert log.read_text().splitlines()[1] == "Traceback (most recent call last):"


def test_signals_reach_the_trial_and_wait_times_out_as_popen_does(tmp_path, probe):
    with workers() as server:
        process, _ = run_probe(server, tmp_path, probe, "sleep")
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=0.2)
        process.terminate()
        assert process.wait(timeout=60) == -signal.SIGTERM
        process, _ = run_probe(server, tmp_path, probe, "sleep")
        process.kill()
        assert process.wait(timeout=60) == -signal.SIGKILL
        process.terminate()  # after its end: nothing to do, as Popen
        assert process.poll() == -signal.SIGKILL


def test_thread_counts_are_a_fresh_processes(tmp_path, probe, monkeypatch):
    unset = {k: v for k, v in probe.items() if k != "OMP_NUM_THREADS"}
    monkeypatch.delenv("OMP_NUM_THREADS")  # the server's: as a sweep's controller, which sets it for each trial
    with workers(preload=("torch", "numpy")) as server:
        for env in [{**probe, "OMP_NUM_THREADS": "2"}, {**probe, "OMP_NUM_THREADS": "1"}, unset]:
            process, log = run_probe(server, tmp_path, env, "threads")
            assert process.wait(timeout=60) == 0
            warm = json.loads(log.read_text().splitlines()[-1])
            log.unlink()
            fresh = subprocess.run([sys.executable, "-m", "warmprobe", "threads"], env=env, capture_output=True)
            assert warm == json.loads(fresh.stdout.splitlines()[-1]), env.get("OMP_NUM_THREADS")


def test_a_server_with_a_live_thread_refuses_and_trials_start_fresh_after_one_line(tmp_path, probe, monkeypatch):
    busy = (
        "import threading, time\nthreading.Thread(target=time.sleep, args=(600,), daemon=True, name='busy').start()\n"
    )
    (tmp_path / "lib" / "busy.py").write_text(busy)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "lib"))  # the server imports `busy` from where the trial would
    lines: list[str] = []
    with workers(lines, preload=("busy",)) as server:
        assert run_probe(server, tmp_path, probe, "0")[0] is None
        assert run_probe(server, tmp_path, probe, "0")[0] is None
        assert server.off is not None
    assert lines == [
        "warm trial workers off: the warm worker cannot fork: 2 threads run in it: Python threads busy; "
        "trials start as fresh processes"
    ]


def test_a_variable_read_at_interpreter_start_that_differs_starts_the_trial_fresh(tmp_path, probe):
    lines: list[str] = []
    no_threads_set = {k: v for k, v in probe.items() if k != "OMP_NUM_THREADS"}  # the server's is 1 (conftest)
    with workers(lines) as server:
        for _ in range(2):
            assert run_probe(server, tmp_path, {**probe, "PYTHONHASHSEED": "123"}, "0")[0] is None
        assert run_probe(server, tmp_path, no_threads_set, "0")[0] is None
        process, _ = run_probe(server, tmp_path, {**probe, "OMP_NUM_THREADS": "2"}, "0")  # the others start warm
        assert process.wait(timeout=60) == 0
    assert lines == [
        "a trial starts as a fresh process: its PYTHONHASHSEED differs from the warm worker's (read when an "
        "interpreter starts)",
        "a trial starts as a fresh process: its OMP_NUM_THREADS differs from the warm worker's (read when an "
        "interpreter starts)",
    ]


def test_a_missing_folder_is_an_oserror_as_popen_raises(tmp_path, probe):
    with workers() as server, pytest.raises(FileNotFoundError):
        run_probe(server, tmp_path, probe, "0", cwd=tmp_path / "gone")


CONTROLLER = """
import json, os, sys, time
from gradwatch.sweep.warm import WarmWorkers
server = WarmWorkers(preload=(), programs=("warmprobe",))
env = json.loads(sys.argv[1])
with open(sys.argv[2], "ab") as log:
    trial = server.popen(["python", "-m", "warmprobe", "sleep"], env=env, stdout=log)
with open(sys.argv[3], "w") as f:
    json.dump({"server": server.server.pid, "trial": trial.pid}, f)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_killing_the_controller_leaves_no_server_and_no_trial(tmp_path, probe):
    pids = tmp_path / "pids.json"
    controller = subprocess.Popen(
        [sys.executable, "-c", CONTROLLER, json.dumps(probe), str(tmp_path / "trial.log"), str(pids)], env=probe
    )
    deadline = time.monotonic() + 60
    while not pids.exists() or not pids.read_text():
        assert controller.poll() is None
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = json.loads(pids.read_text())
    assert alive(started["server"])
    assert alive(started["trial"])
    controller.kill()
    controller.wait()
    deadline = time.monotonic() + 30
    while alive(started["server"]) or alive(started["trial"]):
        assert time.monotonic() < deadline, f"still alive 30 s after the controller's SIGKILL: {started}"
        time.sleep(0.05)


# --- gradwatch fit itself -------------------------------------------------------------------------------------


def sweep_file(folder: Path, **parameters) -> Path:
    path = folder / "sweep.yaml"
    command = ["${env}", "${interpreter}", "-m", "gradwatch", "fit", "--config", str(CONFIGS / "cnn-digits.yaml"),
               "--model.width=8", "--model.depth=3", "--trainer.enable_checkpointing=false", "${args}"]  # fmt: skip
    values = {name: {"value": value} for name, value in parameters.items()}
    raw = {"name": "seeded", "method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
           "parameters": values, "command": command}  # fmt: skip
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def scalars(rows: list[dict]) -> list[dict]:
    """The numbers of each W&B row, less W&B's own (``_runtime``...): media and tables carry random ids."""
    return [{k: v for k, v in row.items() if not k.startswith("_") and isinstance(v, (int, float))} for row in rows]


@pytest.mark.slow
def test_a_seeded_trial_logs_the_same_warm_and_cold_and_its_wandb_run_is_complete(tmp_path):
    path = sweep_file(tmp_path, **{"trainer.max_epochs": 2, "seed_everything": 7})
    runs, lines = {}, []
    for warm in (True, False):
        folder = tmp_path / ("warm" if warm else "cold")
        sweep = LocalSweep(load_sweep(path), folder, echo=lines.append, warm=warm)
        sweep.run()
        (runs[warm],) = (folder / "runs").iterdir()
        assert (sweep._warm is not None and sweep._warm.preload_seconds is not None) == warm
    assert not [line for line in lines if "fresh process" in line], lines  # no fallback said
    assert len(read_metrics(runs[True] / "metrics.csv").values("val/acc")) == 2
    # Every value of every step, to the last digit.
    assert (runs[True] / "metrics.csv").read_text() == (runs[False] / "metrics.csv").read_text()
    # The warm trial's offline W&B run is whole: its rows, the sweep's config, the exit record.
    files = {w: run_file(runs[w]) for w in (True, False)}
    assert exit_code(files[True]) == 0
    assert scalars(history(files[True])) == scalars(history(files[False]))
    assert len(scalars(history(files[True]))) > 10
    assert config(files[True])["seed_everything"] == 7
    assert config(files[True])["sweep_name"] == "seeded"


@pytest.mark.slow
def test_sigterm_preempts_a_warm_gradwatch_fit_which_exits_143(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("WANDB_SERVICE", None)
    command = ["python", "-m", "gradwatch", "fit", "--model", "CNN", "--data", "DigitsDataModule",
               "--model.depth", "2", "--model.width", "8", "--trainer.max_epochs", "1000",
               "--trainer.log_every_n_steps", "5", "--trainer.enable_progress_bar=false"]  # fmt: skip
    with WarmWorkers() as server, (tmp_path / "trial.log").open("ab") as log:
        process = server.popen(command, env=env, stdout=log, cwd=tmp_path)
        deadline = time.monotonic() + 120
        while not list((tmp_path / "runs").glob("*/metrics.csv")) or process.poll() is not None:
            assert process.poll() is None, (tmp_path / "trial.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(1)  # well into training
        process.terminate()
        assert process.wait(timeout=120) == 143
    said = (tmp_path / "trial.log").read_text()
    assert "gradwatch: preempted (SIGTERM) at step" in said, said[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert exit_code(run_file(run_dir)) == 143


@pytest.mark.slow
def test_a_sweep_of_a_users_program_never_starts_a_warm_worker(tmp_path):
    script = Path(__file__).with_name("scripted_trial.py")
    path = tmp_path / "sweep.yaml"
    raw = {"method": "grid", "metric": {"name": "val/loss", "goal": "minimize"},
           "parameters": {"x": {"value": 1}, "steps": {"value": 1}, "sleep": {"value": 0}},
           "command": ["${env}", "${interpreter}", str(script), "${args}"]}  # fmt: skip
    path.write_text(yaml.safe_dump(raw))
    sweep = LocalSweep(load_sweep(path), tmp_path / "out", echo=lambda line: None)
    sweep.run()
    assert sweep._warm is not None
    assert sweep._warm.server is None  # never started
    assert sweep._warm.off is None  # and nothing said
    (run_dir,) = (tmp_path / "out" / "runs").iterdir()
    recorded = json.loads((run_dir / "trial.json").read_text())
    assert recorded["argv"][0] == str(script)
