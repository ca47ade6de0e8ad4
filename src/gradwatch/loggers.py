"""gradwatch's default loggers: W&B (online when logged in, else offline) plus a CSV file of every metric."""

from __future__ import annotations

import netrc
import os
import secrets
import string
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:  # Lightning is imported where loggers are made: the sweep controller needs only the helpers
    from lightning.pytorch.loggers import Logger

DEFAULT_PROJECT = "gradwatch"


def wandb_logged_in() -> bool:
    """Whether W&B credentials are on this machine (``WANDB_API_KEY`` or ``wandb login``'s netrc entry).

    Checked without the network: a run that cannot reach W&B later still finishes offline and can be synced.
    """
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_offline() -> bool:
    """Offline unless ``WANDB_MODE`` asks otherwise or, when unset, unless credentials are present."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode in ("offline", "dryrun")
    return not wandb_logged_in()


def fresh_run_id() -> str:
    """A new W&B-style run id: 8 lowercase letters and digits."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def new_run_id() -> str:
    """The W&B run id: the agent's (``WANDB_RUN_ID``) in a sweep trial, else a fresh one."""
    return os.environ.get("WANDB_RUN_ID") or fresh_run_id()


def default_loggers(root_dir: str | Path, *, run_id: str | None = None, project: str | None = None) -> list[Logger]:
    """A CSV logger and a W&B logger that write one run into ``root_dir/<run_id>/``.

    The CSV logger comes first, so Lightning puts checkpoints and the CLI's ``config.yaml`` in the same folder:
    ``metrics.csv``, ``hparams.yaml``, ``config.yaml``, ``checkpoints/`` and ``wandb/`` side by side.

    Args:
        root_dir: Folder of all runs.
        run_id: The run's id, shared by both loggers; a new one when ``None``.
        project: W&B project; ``WANDB_PROJECT`` or ``"gradwatch"`` when ``None``.
    """
    import wandb
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    run_id = run_id or new_run_id()
    run_dir = Path(root_dir) / run_id
    project = project or os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT)
    offline = wandb_offline()
    # git_root: W&B looks for the code's git repository in the run folder, which does not exist yet; the code is
    # where the command runs. quiet: offline, W&B's banner and summary would bury the line saying where the run went.
    settings = wandb.Settings(git_root=os.getcwd(), quiet=offline)
    return [
        # Flushing every 10 steps lets a report read a run that is still training.
        CSVLogger(save_dir=root_dir, name="", version=run_id, flush_logs_every_n_steps=10),
        WandbLogger(save_dir=str(run_dir), id=run_id, project=project, offline=offline, settings=settings),
    ]
