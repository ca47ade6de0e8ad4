"""Trial commands expand exactly as the W&B client's own agent expands them, macro by macro."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest
from wandb.wandb_agent import Agent

from gradwatch.sweep.command import expand_command
from gradwatch.sweep.spec import MACROS

PARAMS = {"model.depth": 8, "model.residual": True, "model.norm": "none", "trainer.fast": False, "lr": 0.001}


def run_wandb_agent_command(tmp_path: Path, command: list[str], params: dict) -> tuple[list[str], dict]:
    """Start one trial through wandb's own ``Agent._command_run`` and return the argv and env the trial saw.

    The Agent is built without its constructor (which contacts the W&B service); ``_command_run`` itself is W&B's
    code, unchanged: it writes the parameter files, expands the command and starts the process.
    """
    program = tmp_path / "echo_argv.py"
    out = tmp_path / "argv.json"
    program.write_text(
        textwrap.dedent(
            f"""
            import json, os, sys
            json.dump({{"argv": sys.argv, "env": dict(os.environ)}}, open({str(out)!r}, "w"))
            """
        )
    )
    agent = Agent.__new__(Agent)
    agent._sweep_command = list(command)
    agent._function = None
    agent._in_jupyter = False
    agent._forward_signals = False
    agent._run_processes = {}
    agent._kill_delay = 30
    cwd, environ = os.getcwd(), dict(os.environ)
    os.chdir(tmp_path)
    try:
        agent._command_run(
            {"run_id": "abc123", "program": str(program), "args": {k: {"value": v} for k, v in params.items()}}
        )
        process = agent._run_processes["abc123"]
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.chdir(cwd)
        # The agent sets WANDB_RUN_ID and WANDB_SWEEP_PARAM_PATH in its own process for every later run.
        os.environ.clear()
        os.environ.update(environ)
    seen = json.loads(out.read_text())
    return seen["argv"], seen["env"]


@pytest.mark.parametrize("macro", [m for m in MACROS if m not in ("env", "interpreter", "program")])
def test_each_argument_macro_expands_as_the_wandb_agent_does(tmp_path, monkeypatch, macro):
    # `${interpreter}` is `python` on PATH: this interpreter's folder first, as the sweep engine arranges.
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    monkeypatch.setenv("GW_TEST_VAR", "from-env")
    command = ["${env}", "${interpreter}", "${program}", "--tag=${envvar:GW_TEST_VAR}", f"${{{macro}}}"]
    argv, env = run_wandb_agent_command(tmp_path, command, PARAMS)
    json_file = os.path.join("wandb", "sweep-None", "config-abc123.json")  # where the agent puts it, cwd-relative
    ours = expand_command(command, PARAMS, program=str(tmp_path / "echo_argv.py"), args_json_file=json_file)
    # The trial's own argv starts at the program (env and python are consumed by the exec).
    assert ours[:2] == ["/usr/bin/env", "python"]
    assert argv == ours[2:]
    # The environment the local engine mirrors (tests/sweep/test_local.py checks its side).
    assert env["WANDB_RUN_ID"] == "abc123"
    assert env["WANDB_SWEEP_PARAM_PATH"].endswith(os.path.join("sweep-None", "config-abc123.yaml"))
    if macro == "args_json_file":
        assert json.loads((tmp_path / argv[-1]).read_text()) == PARAMS


def test_envvar_macros_are_replaced_inside_words_and_left_named_when_unset(monkeypatch):
    monkeypatch.setenv("DATA_ROOT", "/data")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    words = expand_command(["--root=${envvar:DATA_ROOT}/x", "${envvar:NOT_SET_ANYWHERE}", "${args}"], {"a": 1})
    assert words == ["--root=/data/x", "NOT_SET_ANYWHERE", "--a=1"]


def test_values_render_as_the_agent_renders_them():
    assert expand_command(["${args}"], PARAMS) == [
        "--model.depth=8", "--model.residual=True", "--model.norm=none", "--trainer.fast=False", "--lr=0.001",
    ]  # fmt: skip
    assert expand_command(["${args_no_boolean_flags}"], PARAMS) == [
        "--model.depth=8", "--model.residual", "--model.norm=none", "--lr=0.001",
    ]  # fmt: skip
