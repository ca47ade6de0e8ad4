"""``gradwatch dashboard``: a W&B workspace of gradient health for a project or a sweep, saved to W&B or written out.

Bad input fails with one line before any network. Only saving the workspace, and reading a sweep from W&B
(``--sweep``), need the service: ``--dry-run`` without ``--sweep`` runs offline.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from gradwatch.errors import ConfigError
from gradwatch.rundir import METRICS_FILE, SweepInfo, read_layers

if TYPE_CHECKING:  # wandb_workspaces imports wandb: only where a workspace is built
    from wandb_workspaces.workspaces import Workspace

PROG = "gradwatch dashboard"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, as every bad input of ``gradwatch dashboard`` is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``gradwatch dashboard`` argument parser."""
    parser = _Parser(
        prog=PROG,
        description="Build a W&B workspace of gradient health: gradient flow per layer (log scale, input → output), "
        "health verdicts, activations, a sweep overview (parallel coordinates, parameter importance) and, for a GAN, "
        "its losses; save it to the project and print its URL, or write its spec with --dry-run.",
    )
    parser.add_argument("--entity", required=True, help="W&B entity (user or team) of the project")
    parser.add_argument("--project", required=True, help="W&B project of the runs")
    sweep = parser.add_mutually_exclusive_group()
    sweep.add_argument(
        "--sweep",
        metavar="ID",
        help="a sweep on W&B (its id, or entity/project/id): its runs, parameters and metric, read from W&B",
    )
    sweep.add_argument(
        "--sweep-file",
        metavar="FILE",
        type=Path,
        help="a sweep file run locally (gradwatch sweep run --local) and synced with `wandb sync`: its parameters and "
        "metric, and its runs (the W&B run group named after the sweep)",
    )
    parser.add_argument("--name", help="the workspace's name (default: gradwatch: <sweep or project>)")
    parser.add_argument(
        "--layers-from",
        metavar="RUN",
        type=Path,
        help="a run folder: per-layer panels follow its layers, input → output (default: every layer, alphabetically)",
    )
    parser.add_argument(
        "--gan", action="store_true", help="add the GAN section (added anyway when --layers-from is a GAN's run)"
    )
    parser.add_argument(
        "--dry-run",
        metavar="FILE",
        type=Path,
        help="write the workspace's spec (JSON) to FILE instead of saving it (no network, unless --sweep)",
    )
    return parser


def main(argv: list[str]) -> None:
    """Run ``gradwatch dashboard ARGV``; bad input exits with status 2 and one line, before any network."""
    args = build_parser().parse_args(argv)
    try:
        _run(args)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _run(args: argparse.Namespace) -> None:
    # Here, not at the top: `--help` and argument errors stay clear of wandb's import.
    from gradwatch.report.workspace import build_workspace, workspace_json

    layers = _layers(args.layers_from) if args.layers_from else []
    if args.dry_run:
        _check_writable(args.dry_run)
    sweep = _sweep_file(args.sweep_file) if args.sweep_file else None
    sweep_id = _sweep_id(args.sweep, args.entity, args.project) if args.sweep else None
    if sweep_id or not args.dry_run:
        _require_login(args)
    if sweep_id:
        sweep = _wandb_sweep(args.entity, args.project, sweep_id)
    workspace = build_workspace(
        args.entity,
        args.project,
        name=args.name or (f"gradwatch: {sweep.name}" if sweep else None),
        layers=layers,
        parameters=sweep.axes if sweep else (),
        metric=sweep.metric if sweep else None,
        goal=sweep.goal if sweep else "minimize",
        sweep_id=sweep_id,
        run_group=sweep.name if args.sweep_file else None,
        gan=True if args.gan else None,
    )
    if args.dry_run:
        try:
            args.dry_run.write_text(workspace_json(workspace) + "\n")
        except OSError as exc:
            raise ConfigError(f"--dry-run {args.dry_run}: cannot write it: {exc.strerror}") from None
        print(f"{PROG}: wrote the workspace spec to {args.dry_run}")
        return
    print(f"{PROG}: saved {_save(workspace)}")


def _layers(run_dir: Path) -> list[str]:
    if not (run_dir / METRICS_FILE).is_file():
        raise ConfigError(f"--layers-from {run_dir}: not a run folder (no {METRICS_FILE})")
    layers = read_layers(run_dir)
    if not layers:
        raise ConfigError(
            f"--layers-from {run_dir}: the run recorded no layers (no gradwatch/layers in hparams.yaml, no grad/norm/* "
            "column in metrics.csv): was a GradientMonitor attached?"
        )
    return layers


def _check_writable(path: Path) -> None:
    """Fail before any network when the ``--dry-run`` file cannot be written."""
    if path.is_dir():
        raise ConfigError(f"--dry-run {path}: is a folder; give a file, such as {path / 'workspace.json'}")
    if not path.parent.is_dir():
        raise ConfigError(f"--dry-run {path}: no folder {path.parent}")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"--dry-run {path}: not writable")


def _sweep_file(path: Path) -> SweepInfo:
    from gradwatch.sweep.spec import load_sweep

    try:
        spec = load_sweep(path)  # validated as `gradwatch sweep run` validates it
    except ConfigError as exc:
        raise ConfigError(f"--sweep-file {exc}") from None
    return SweepInfo.from_config(spec.config, name=spec.name)


def _require_login(args: argparse.Namespace) -> None:
    """Raise unless W&B credentials are here and W&B is not forced offline; checked without the network."""
    from gradwatch.loggers import wandb_logged_in

    if args.sweep:
        what, instead = f"reading sweep {args.sweep} from W&B", "give its file with --sweep-file"
    else:
        what, instead = "saving the workspace", "write its spec with --dry-run FILE"
    mode = os.environ.get("WANDB_MODE")
    if mode in ("offline", "dryrun", "disabled"):
        raise ConfigError(f"{what} needs the W&B service, but WANDB_MODE={mode}; unset it, or {instead}")
    if not wandb_logged_in():
        raise ConfigError(f"{what} needs a W&B account: run `wandb login` (or set WANDB_API_KEY), or {instead}")


def _sweep_id(text: str, entity: str, project: str) -> str:
    """The sweep id of ``--sweep``: an id, or the ``entity/project/id`` path ``gradwatch sweep run`` prints."""
    parts = text.split("/")
    if len(parts) == 1 and text:
        return text
    if len(parts) == 3 and parts[:2] == [entity, project] and parts[2]:
        return parts[2]
    raise ConfigError(f"--sweep {text}: expected a sweep id, or {entity}/{project}/<id> (--entity and --project)")


def _wandb_sweep(entity: str, project: str, sweep_id: str) -> SweepInfo:
    """The parameters and metric of a sweep on W&B, from the sweep's config (the network)."""
    import wandb

    try:
        sweep = wandb.Api().sweep(f"{entity}/{project}/{sweep_id}")
        config = sweep.config
    except (ValueError, wandb.errors.Error) as exc:  # ValueError: no such sweep
        raise ConfigError(
            f"--sweep {sweep_id}: cannot read it from W&B ({entity}/{project}): {_first_line(exc)}"
        ) from None
    return SweepInfo.from_config({**config, "name": sweep.name}, name=sweep_id)


def _save(workspace: Workspace) -> str:
    import wandb

    from gradwatch.report.workspace import save_workspace

    try:
        return save_workspace(workspace)
    except wandb.errors.Error as exc:  # no credentials (UsageError), W&B unreachable or refusing (CommError)
        raise ConfigError(
            f"cannot save the workspace to W&B: {_first_line(exc)}; check `wandb login` and the network, or write its "
            "spec with --dry-run FILE"
        ) from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0].rstrip(".") if lines else type(exc).__name__
