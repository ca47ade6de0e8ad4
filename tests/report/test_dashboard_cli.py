"""``gradwatch dashboard`` as users run it: the spec written offline; bad input and no account exit 2 in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[2]
QUICKSTART = ROOT / "sweeps" / "quickstart.yaml"
LAYERS = ["stem.conv", "blocks.2.conv", "blocks.10.conv", "head"]
NO_ACCOUNT = {"WANDB_MODE": None, "WANDB_API_KEY": None}


def dashboard(*args: str, cwd: Path, env: dict[str, str | None] | None = None, script: bool = False):
    """Run ``gradwatch dashboard ARGS``; ``env`` values of ``None`` remove the variable."""
    environ = {**os.environ, "WANDB_MODE": "offline", "NETRC": str(cwd / "no-netrc"), "HOME": str(cwd)}
    environ.pop("WANDB_SERVICE", None)
    for key, value in (env or {}).items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    command = [str(Path(sys.executable).parent / "gradwatch")] if script else [sys.executable, "-m", "gradwatch"]
    return subprocess.run(
        [*command, "dashboard", *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run folder as ``gradwatch fit`` writes it: the layer order in hparams.yaml, the norms in metrics.csv."""
    run = tmp_path / "runs" / "k3x9q2ab"
    run.mkdir(parents=True)
    (run / "hparams.yaml").write_text(yaml.safe_dump({"gradwatch/layers": LAYERS}))
    columns = sorted(f"grad/norm/{layer}" for layer in LAYERS)
    (run / "metrics.csv").write_text(f"epoch,step,{','.join(columns)}\n0,0,{','.join('1.0' for _ in columns)}\n")
    return run


def panels(spec: dict) -> dict[str, list[dict]]:
    return {s["name"]: s["panels"] for s in spec["spec"]["section"]["panelBankConfig"]["sections"]}


@pytest.mark.parametrize("script", [False, True], ids=["python -m gradwatch", "gradwatch script"])
def test_dry_run_writes_the_workspace_of_a_local_sweep_offline(tmp_path, run_dir, script):
    done = dashboard(
        "--entity", "my-team", "--project", "gradwatch", "--sweep-file", str(QUICKSTART),
        "--layers-from", str(run_dir), "--dry-run", "out.json", cwd=tmp_path, script=script,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "gradwatch dashboard: wrote the workspace spec to out.json"
    spec = json.loads((tmp_path / "out.json").read_text())
    assert (spec["entity"], spec["project"], spec["displayName"]) == ("my-team", "gradwatch", "gradwatch: quickstart")
    sections = panels(spec)
    assert list(sections) == ["Gradient flow", "Health", "Activations", "Sweep overview"]
    norms = sections["Gradient flow"][0]["config"]
    assert norms["metrics"] == [f"grad/norm/{layer}" for layer in LAYERS]  # hparams.yaml's order, not the CSV's
    assert norms["yLogScale"] is True
    coordinates = sections["Sweep overview"][0]["config"]["columns"]
    assert [c["accessor"] for c in coordinates] == [
        "config:model.activation.value",
        "config:model.norm.value",
        "config:model.residual.value",
        "summary:val/acc",
        "summary:health/attenuation",
    ]
    runs = spec["spec"]["section"]["runSets"][0]
    assert runs["filters"]["filters"][0]["value"] == "quickstart"


def test_dry_run_of_a_whole_project_names_it_after_the_project(tmp_path):
    done = dashboard("--entity", "my-team", "--project", "gradwatch", "--dry-run", "out.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    spec = json.loads((tmp_path / "out.json").read_text())
    assert spec["displayName"] == "gradwatch: gradwatch"
    assert list(panels(spec)) == ["Gradient flow", "Health", "Activations"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--sweep-file", "missing.yaml"], "--sweep-file missing.yaml: cannot read the sweep file"),
        (["--layers-from", "."], "--layers-from .: not a run folder (no metrics.csv)"),
        (["--layers-from", "empty-run"], "--layers-from empty-run: the run recorded no layers"),
        (["--dry-run", "nowhere/out.json"], "--dry-run nowhere/out.json: no folder nowhere"),
        (["--dry-run", "."], "--dry-run .: is a folder"),
        (["--sweep", "someone/else/k3x9q2ab"], "--sweep someone/else/k3x9q2ab: expected a sweep id"),
        (["--sweep", "k3x9q2ab", "--sweep-file", "sweep.yaml"], "not allowed with argument --sweep"),
    ],
)
def test_bad_input_exits_2_in_one_line_before_any_network(tmp_path, args, words):
    (tmp_path / "empty-run").mkdir()
    (tmp_path / "empty-run" / "metrics.csv").write_text("epoch,step,train/loss\n")
    if "--dry-run" not in args:
        args = [*args, "--dry-run", "out.json"]
    done = dashboard("--entity", "my-team", "--project", "gradwatch", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("gradwatch dashboard: ")
    assert words in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize(
    ("given", "missing"), [(["--entity", "my-team"], "--project"), (["--project", "gp"], "--entity")]
)
def test_a_missing_option_is_named(tmp_path, given, missing):
    done = dashboard(*given, "--dry-run", "out.json", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == f"gradwatch dashboard: the following arguments are required: {missing} (see --help)"


def test_a_sweep_file_that_is_not_yaml_is_named(tmp_path):
    (tmp_path / "sweep.yaml").write_text("method: [grid\n")
    done = dashboard(
        "--entity", "my-team", "--project", "gradwatch", "--sweep-file", "sweep.yaml", "--dry-run", "out.json",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("gradwatch dashboard: --sweep-file sweep.yaml: not valid YAML")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        ([], NO_ACCOUNT, "saving the workspace needs a W&B account: run `wandb login` (or set WANDB_API_KEY), or "
         "write its spec with --dry-run FILE"),
        ([], {}, "saving the workspace needs the W&B service, but WANDB_MODE=offline; unset it, or write its spec "
         "with --dry-run FILE"),
        (["--sweep", "k3x9q2ab", "--dry-run", "out.json"], NO_ACCOUNT,
         "reading sweep k3x9q2ab from W&B needs a W&B account: run `wandb login` (or set WANDB_API_KEY), or give "
         "its file with --sweep-file"),
    ],
    ids=["not logged in", "WANDB_MODE=offline", "--sweep not logged in"],
)  # fmt: skip
def test_without_an_account_it_says_how_to_log_in_or_stay_offline(tmp_path, args, env, words):
    done = dashboard("--entity", "my-team", "--project", "gradwatch", *args, cwd=tmp_path, env=env)
    assert done.returncode == 2
    assert done.stderr.strip() == f"gradwatch dashboard: {words}"


def test_an_unreachable_service_exits_2_in_one_line(tmp_path):
    # Credentials, but nothing listens on port 9: W&B's client gives up after its HTTP timeout.
    env = {
        "WANDB_MODE": None,
        "WANDB_API_KEY": "a" * 40,
        "WANDB_BASE_URL": "http://127.0.0.1:9",
        "WANDB_HTTP_TIMEOUT": "2",
    }
    done = dashboard("--entity", "my-team", "--project", "gradwatch", cwd=tmp_path, env=env)
    assert done.returncode == 2
    assert done.stderr.startswith("gradwatch dashboard: cannot save the workspace to W&B: ")
    assert done.stderr.strip().endswith("check `wandb login` and the network, or write its spec with --dry-run FILE")
    assert "Traceback" not in done.stderr
