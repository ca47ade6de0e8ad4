"""The online engine up to the network boundary: what W&B receives, how agents are started, login checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradwatch.sweep import SweepError, load_sweep
from gradwatch.sweep.online import agent_commands, require_login, sweep_config, sweep_url

QUICKSTART = Path(__file__).parents[2] / "sweeps" / "quickstart.yaml"


def test_wandb_receives_the_file_as_written_with_its_name():
    spec = load_sweep(QUICKSTART)
    config = sweep_config(spec)
    assert config["name"] == "quickstart"
    assert config == {"name": "quickstart", "program": "gradwatch", **spec.config}
    assert config["command"][-1] == "${args}"


def test_agents_split_the_count_and_the_machine(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    commands = agent_commands("me/proj/abc", count=5, workers=2)
    assert [c[0][-4:] for c in commands] == [
        ["agent", "me/proj/abc", "--count", "3"],
        ["agent", "me/proj/abc", "--count", "2"],
    ]
    assert [c[1]["OMP_NUM_THREADS"] for c in commands] == ["4", "4"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    gpus = agent_commands("me/proj/abc", count=None, workers=3)
    assert [c[1]["CUDA_VISIBLE_DEVICES"] for c in gpus] == ["2", "5", "2"]
    assert all("--count" not in c[0] for c in gpus)
    assert len(agent_commands("me/proj/abc", count=1, workers=3)) == 1  # no agent with nothing to do


def test_login_is_checked_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(SweepError, match="WANDB_MODE=offline; run locally with --local"):
        require_login("an online sweep")
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    with pytest.raises(SweepError, match="needs a W&B account"):
        require_login("an online sweep")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    require_login("an online sweep")


def test_the_sweep_link_follows_the_server_the_client_talks_to(monkeypatch, tmp_path):
    import wandb

    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))  # no saved `wandb login --host`
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.delenv("WANDB_APP_URL", raising=False)
    assert sweep_url("me/proj/abc") == f"{wandb.Settings().app_url}/me/proj/sweeps/abc"  # the client's cloud
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com")  # a self-hosted server
    assert sweep_url("me/proj/abc") == "https://wandb.example.com/me/proj/sweeps/abc"
