"""Every shell command in the README runs as printed, after the Quick start, in a fresh folder.

Each command is taken from the README's ``bash`` blocks and run by bash with ``.venv/bin`` first on ``PATH`` (what
``. .venv/bin/activate`` does), W&B offline, in a folder holding what the README's commands refer to: the
repository's ``sweeps/`` and ``callbacks/``, a run of ``gradwatch fit`` and its checkpoint, a local sweep, CIFAR-10
files in the real format, a folder of images, an albumentations file and the README's own ``mypackage.py``.
Placeholders (``<id>``, ``...``) are filled in from those. Training is shortened by flags appended to the printed
command (``--trainer.max_steps 2``, a sweep's ``--count 1``); what needs the W&B service or a database server must
fail offline in one clear line.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent
#: Appended to commands that train, evaluate or predict.
SHORT = [
    "--trainer.max_steps=2",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
    "--trainer.limit_predict_batches=1",
    "--trainer.enable_progress_bar=false",
]
#: Lines that are not run here, and why.
NOT_RUN = {
    "make demo": "the Quick start: the demo job, run by hand and (its parts) by tests/sweep and tests/report",
    "make test": "the Quick start: what CI runs, this test included",
    "make lint": "part of make test",
    "make bench": "every benchmark in full, minutes each; tests/test_benches.py runs their --quick modes",
    "make clean": "deletes the environment these commands run in",
    ". .venv/bin/activate": "what this test does for every command: .venv/bin first on PATH",
}
#: Commands that need the W&B service (or a database server) and must fail offline in one line saying so.
OFFLINE_FAILURE = {
    "agent": "needs the W&B service",
    "--sweep abc123": "needs the W&B service",
    "--sweep-file": "needs the W&B service",
    "postgresql://": "--storage postgresql://host/db: ",
}


def commands() -> list[str]:
    """The README's shell commands, continuation lines joined, comments dropped."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                found.append(re.sub(r"\s+", " ", line))
    return found


COMMANDS = commands()


def test_the_readme_has_commands_to_run():
    assert len([c for c in COMMANDS if c not in NOT_RUN]) >= 25
    assert set(NOT_RUN) <= set(COMMANDS)  # no reason kept for a line the README no longer has


def environment(home: Path) -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "offline", "HOME": str(home), "NO_ALBUMENTATIONS_UPDATE": "1"}
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env["NETRC"] = str(home / "no-netrc")  # no W&B login here
    env.pop("WANDB_SERVICE", None)
    env.pop("WANDB_API_KEY", None)
    env["WANDB_CONFIG_DIR"] = str(home / ".config" / "wandb")
    return env


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=environment(cwd), capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> dict[str, str]:
    """A folder with what the README's commands refer to, and the values of its placeholders."""
    import albumentations as A

    sys.path.insert(0, str(Path(__file__).with_name("data")))
    from formats import write_cifar, write_folder

    home = tmp_path_factory.mktemp("readme")
    for folder in ("sweeps", "callbacks"):
        shutil.copytree(ROOT / folder, home / folder)
    python = re.search(r"```python\n# mypackage\.py[^\n]*\n(.*?)```", README, re.DOTALL)
    assert python, "the README's mypackage.py example"
    (home / "mypackage.py").write_text(python.group(1))
    write_cifar(home / "data")
    write_folder(home / "pets", classes=("cat", "dog"), n=6, size=(20, 16))
    A.save(A.Compose([A.HorizontalFlip(p=0.5)]), str(home / "my_augment.yaml"), data_format="yaml")
    fit = run("gradwatch fit --model CNN --data DigitsDataModule " + " ".join(SHORT), home)
    assert fit.returncode == 0, fit.stderr[-3000:]
    (run_dir,) = [p for p in (home / "runs").iterdir() if p.is_dir() and p.name != "sweeps"]
    (checkpoint,) = (run_dir / "checkpoints").glob("*.ckpt")
    printed = run("gradwatch fit --model CNN --data DigitsDataModule --print_config > experiment.yaml", home)
    assert printed.returncode == 0, printed.stderr[-3000:]
    sweep = run("gradwatch sweep run sweeps/quickstart.yaml --local --count 1", home)
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    (trial,) = (home / "runs" / "sweeps" / "quickstart" / "runs").iterdir()
    logs = home / "lightning_logs" / "version_0"
    logs.mkdir(parents=True)
    shutil.copy(run_dir / "metrics.csv", logs / "metrics.csv")
    return {
        "home": str(home),
        "runs/<id>/checkpoints/<name>.ckpt": str(checkpoint.relative_to(home)),
        "runs/3k9x0q2m": str(run_dir.relative_to(home)),
        "runs/sweeps/quickstart/runs/<id>": str(trial.relative_to(home)),
    }


def prepared(command: str, places: dict[str, str]) -> str:
    """``command`` with its placeholders filled in and, if it trains, the flags that shorten it."""
    for placeholder, value in places.items():
        command = command.replace(placeholder, value)
    if command.startswith("python -m gradwatch ..."):
        return "python -m gradwatch --help"
    words = shlex.split(command)
    if words[:2] == ["gradwatch", "fit"] and "..." in words:
        command = command.replace("...", "--model CNN --data DigitsDataModule")
    if words[:2] in (["gradwatch", "fit"], ["gradwatch", "predict"]) and "--print_config" not in words:
        command += " " + " ".join(SHORT)
    if words[:3] == ["gradwatch", "sweep", "run"]:
        command += " --count 1 --local"
    return command


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in COMMANDS if c not in NOT_RUN], ids=lambda c: c[:90])
def test_a_readme_command_runs_as_printed(command, workspace):
    home = Path(workspace["home"])
    done = run(prepared(command, workspace), home)
    failure = next((words for key, words in OFFLINE_FAILURE.items() if key in command), None)
    if failure is None:
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        assert "Traceback" not in done.stderr
    else:
        assert done.returncode == 2, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        errors = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(errors) == 1, done.stderr
        assert failure in errors[0]
