"""The online engine: W&B runs the sweep; gradwatch creates it and starts agents. Everything here needs the service."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from gradwatch.sweep.spec import SweepError, SweepSpec
from gradwatch.sweep.workers import visible_gpus, worker_env


def require_login(what: str) -> None:
    """Raise :class:`SweepError` unless W&B credentials are here and W&B is not forced offline.

    Checked without the network, before anything is created.
    """
    from gradwatch.loggers import wandb_logged_in

    mode = os.environ.get("WANDB_MODE")
    if mode in ("offline", "dryrun", "disabled"):
        raise SweepError(f"{what} needs the W&B service, but WANDB_MODE={mode}; run locally with --local")
    if not wandb_logged_in():
        raise SweepError(f"{what} needs a W&B account: run `wandb login` (or set WANDB_API_KEY), or use --local")


def sweep_config(spec: SweepSpec) -> dict[str, Any]:
    """The config W&B receives: the file as written, with its display name and a ``program``.

    ``wandb agent`` reads ``program`` for every trial (``command["program"]``) even when the command has no
    ``${program}``; a file that names none gets ``gradwatch``, which is what its command runs.
    """
    return {"name": spec.name, "program": "gradwatch", **spec.config}


def create(spec: SweepSpec, *, project: str | None, entity: str | None) -> str:
    """Create the sweep on W&B and return its path ``entity/project/id``, which agents join."""
    import wandb

    from gradwatch.loggers import DEFAULT_PROJECT

    project = project or spec.config.get("project") or os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT)
    entity = entity or spec.config.get("entity") or wandb.Api().default_entity
    sweep_id = wandb.sweep(sweep=sweep_config(spec), project=project, entity=entity)
    return f"{entity}/{project}/{sweep_id}"


def sweep_url(sweep_path: str) -> str:
    """The sweep's page in the W&B app this client talks to.

    That is the server ``wandb login --host`` saved, or ``WANDB_BASE_URL`` (a self-hosted server), or
    ``WANDB_APP_URL``, read as ``wandb.init`` reads them; W&B's cloud otherwise.
    """
    import wandb

    settings = wandb.Settings()
    settings.update_from_system_settings()
    settings.update_from_env_vars(dict(os.environ))
    entity, project, sweep_id = sweep_path.split("/")
    return f"{settings.app_url}/{entity}/{project}/sweeps/{sweep_id}"


def agent(sweep_path: str, *, count: int | None) -> None:
    """Join a W&B sweep and run its trials one after another, each as a subprocess like ``wandb agent``.

    ``wandb.agent`` without a function runs the sweep's command per trial; with a function it would run trials in a
    thread of this process, where Lightning cannot install its signal handlers.
    """
    import wandb

    # `${interpreter}` is `python` on PATH: the one of this environment comes first, as in the local engine.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    wandb.agent(sweep_path, count=count)


def agent_commands(sweep_path: str, *, count: int | None, workers: int) -> list[tuple[list[str], dict[str, str]]]:
    """The ``gradwatch sweep agent`` processes for ``workers`` agents on this machine, with ``count`` split among them.

    Each agent gets its own GPU or share of the cores (:func:`~gradwatch.sweep.workers.worker_env`).
    """
    gpus = visible_gpus()
    commands = []
    for slot in range(workers):
        share = None if count is None else count // workers + (slot < count % workers)
        if share == 0:
            continue
        args = [sys.executable, "-m", "gradwatch", "sweep", "agent", sweep_path]
        args += [] if share is None else ["--count", str(share)]
        commands.append((args, {**os.environ, **worker_env(slot, workers, gpus)}))
    return commands


def run_agents(sweep_path: str, *, count: int | None, workers: int) -> int:
    """Run ``workers`` agents of ``sweep_path`` on this machine until they end; the worst exit code."""
    processes = [
        subprocess.Popen(args, env=env) for args, env in agent_commands(sweep_path, count=count, workers=workers)
    ]
    return max((p.wait() for p in processes), default=0)
