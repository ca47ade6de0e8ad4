import pytest
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from gradwatch.loggers import default_loggers, new_run_id, wandb_logged_in, wandb_offline


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    return tmp_path / "netrc"


def test_without_credentials_runs_go_offline(no_credentials):
    assert not wandb_logged_in()
    assert wandb_offline()


def test_wandb_login_netrc_entry_means_online(no_credentials):
    no_credentials.write_text("machine api.wandb.ai\n  login user\n  password " + "x" * 40 + "\n")
    assert wandb_logged_in()
    assert not wandb_offline()


def test_netrc_entry_for_a_private_server_counts_only_for_that_server(no_credentials, monkeypatch):
    no_credentials.write_text("machine wandb.example.org\n  login user\n  password secret\n")
    assert not wandb_logged_in()
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert wandb_logged_in()


def test_api_key_in_the_environment_means_online(no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert not wandb_offline()


@pytest.mark.parametrize(("mode", "offline"), [("offline", True), ("dryrun", True), ("online", False)])
def test_wandb_mode_decides_over_credentials(no_credentials, monkeypatch, mode, offline):
    monkeypatch.setenv("WANDB_MODE", mode)
    assert wandb_offline() is offline


def test_run_id_is_wandb_shaped_or_the_agents(monkeypatch):
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    first, second = new_run_id(), new_run_id()
    assert first != second
    assert len(first) == 8
    assert first.isalnum()
    assert first.islower() or first.isdigit()
    monkeypatch.setenv("WANDB_RUN_ID", "sweeprun")
    assert new_run_id() == "sweeprun"


def test_default_loggers_share_one_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    csv, wandb_logger = default_loggers(tmp_path, run_id="abc12345", project="proj")
    assert isinstance(csv, CSVLogger)
    assert isinstance(wandb_logger, WandbLogger)
    assert csv.log_dir == str(tmp_path / "abc12345")
    assert wandb_logger.save_dir == str(tmp_path / "abc12345")
    assert wandb_logger.version == "abc12345"
    assert wandb_logger.name == "proj"
    assert not (tmp_path / "abc12345").exists()  # nothing on disk until training starts
