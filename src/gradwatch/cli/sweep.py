"""``gradwatch sweep run|agent``: one sweep file, on W&B when logged in, else locally on Optuna."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from gradwatch.sweep.spec import MAX_GRID, SweepError, SweepSpec, load_sweep

if TYPE_CHECKING:
    from gradwatch.sweep.results import TrialResult
    from gradwatch.sweep.warm import WarmWorkers


def build_parser() -> argparse.ArgumentParser:
    """The ``gradwatch sweep`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="gradwatch sweep",
        description="Run a W&B sweep file: on W&B when logged in, else locally on Optuna with W&B offline.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="run a sweep file: a W&B sweep when logged in, else locally",
        description="Run a W&B sweep file. Logged in to W&B (and without --local): create the sweep on W&B and run "
        "agents here. Otherwise: run it locally on Optuna, W&B offline; run the same command again to resume.",
    )
    run.add_argument("file", type=Path, help="W&B sweep YAML (see sweeps/)")
    run.add_argument("--count", type=_positive, help="trials to run in total (default: the grid, or run_cap)")
    run.add_argument("--workers", type=_positive, default=1, help="trials at once on this machine (default: 1)")
    run.add_argument("--local", action="store_true", help="run on Optuna here even when logged in to W&B")
    run.add_argument("--dir", type=Path, help="sweep folder (default: runs/sweeps/<name>)")
    run.add_argument("--storage", help="Optuna RDB URL shared by several machines (implies --local)")
    run.add_argument(
        "--cold",
        action="store_true",
        help="start every local trial as a fresh process (default: trials of gradwatch fork from a warm worker that "
        "has imported torch and Lightning)",
    )
    run.add_argument(
        "--max-grid",
        type=_positive,
        default=MAX_GRID,
        help=f"the most combinations a local grid sweep may have (default: {MAX_GRID:,})",
    )
    run.add_argument("--project", help="W&B project of an online sweep")
    run.add_argument("--entity", help="W&B entity of an online sweep")
    agent = commands.add_parser(
        "agent", help="join a W&B sweep", description="Join an existing W&B sweep and run its trials here."
    )
    agent.add_argument("sweep_id", help="the sweep's path, entity/project/id (printed by `gradwatch sweep run`)")
    agent.add_argument("--count", type=_positive, help="trials this agent runs (default: until the sweep ends)")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def main(argv: list[str]) -> None:
    """Run ``gradwatch sweep ARGV``.

    Bad input exits with status 2 and one line before any trial starts; a local sweep in which trials failed and none
    finished exits with 1, one interrupted (Ctrl-C, SIGTERM) with 130.
    """
    args = build_parser().parse_args(argv)
    try:
        if args.command == "agent":
            from gradwatch.sweep import online

            online.require_login("gradwatch sweep agent")
            online.agent(args.sweep_id, count=args.count)
            return
        spec = load_sweep(args.file)
        sys.exit(_run(spec, args))
    except SweepError as exc:
        print(f"gradwatch sweep: error: {exc}", file=sys.stderr)
        sys.exit(2)


def _run(spec: SweepSpec, args: argparse.Namespace) -> int:
    # The user's environment, before the check below imports Lightning (which sets variables of its own).
    environ = dict(os.environ)
    from gradwatch.cli.check import check_parameters
    from gradwatch.loggers import wandb_offline

    local = args.local or args.storage is not None or wandb_offline()
    if local:
        spec.check_local(args.max_grid)
        if not (args.local or args.storage):
            print("gradwatch sweep: W&B is offline (no login, or WANDB_MODE=offline): running locally on Optuna")
    # The warm worker's imports (seconds) run while the file is checked; a refused file stops it with this process.
    with _warm_workers(spec, environ) if local and not args.cold else contextlib.nullcontext() as warm:
        print(f"gradwatch sweep: checking {spec.path} against gradwatch fit ...", flush=True)
        note = check_parameters(spec)
        if note:
            print(f"gradwatch sweep: {note}", flush=True)
        if not local:
            return _run_online(spec, args)
        return _run_local(spec, args, warm if warm is not None else not args.cold, environ)


@contextlib.contextmanager
def _warm_workers(spec: SweepSpec, environ: dict[str, str]) -> Iterator[WarmWorkers | None]:
    """A warm worker already importing, when the sweep's command is one it serves; closed when the block ends."""
    from gradwatch.sweep.command import expand_command
    from gradwatch.sweep.warm import WarmWorkers

    workers = WarmWorkers(echo=lambda line: print(f"gradwatch sweep: {line}", flush=True), environ=environ)
    # A trial finds `python` in this environment first, as the engine sets its PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), environ.get("PATH", "")])
    command = expand_command(spec.command, {}, program=spec.program)
    if not workers.serves(command, {**environ, "PATH": path}):
        yield None
        return
    workers.launch()
    try:
        yield workers
    finally:  # the sweep closed it when it ran; else (a refused file, an error) it is still importing: no waiting
        workers.close(now=True)


def _run_online(spec: SweepSpec, args: argparse.Namespace) -> int:
    from gradwatch.sweep import online

    online.require_login("an online sweep")
    path = online.create(spec, project=args.project, entity=args.entity)
    print(f"gradwatch sweep: created {online.sweep_url(path)}")
    print(f"gradwatch sweep: other machines join with: gradwatch sweep agent {path}", flush=True)
    return online.run_agents(path, count=args.count, workers=args.workers)


def _run_local(spec: SweepSpec, args: argparse.Namespace, warm: bool | WarmWorkers, environ: dict[str, str]) -> int:
    from rich.console import Console

    from gradwatch.cli.progress import StatusLine
    from gradwatch.rundir import RESULTS_CSV, root_dir
    from gradwatch.sweep.local import LocalSweep
    from gradwatch.sweep.results import collect, render, save

    folder = args.dir or Path(root_dir()) / "sweeps" / spec.name
    # On a terminal one live line stands for the routine events; a log or a pipe gets a line for each.
    status = StatusLine(spec.metric.name if spec.metric is not None else None) if sys.stdout.isatty() else None
    sweep = LocalSweep(
        spec,
        folder,
        storage=args.storage,
        workers=args.workers,
        count=args.count,
        max_grid=args.max_grid,
        warm=warm,
        environ=environ,
        echo=status.echo if status is not None else lambda line: print(f"gradwatch sweep: {line}", flush=True),
        on_event=status.event if status is not None else None,
    )
    code = 0
    try:
        with status.showing(sweep) if status is not None else contextlib.nullcontext():
            sweep.run(tick=status.tick if status is not None else None)
    except KeyboardInterrupt:
        code = 130
    results = collect(sweep.study, spec)
    csv_path = sweep.folder / RESULTS_CSV
    try:
        save(results, sweep.folder)
    except OSError as exc:  # the study keeps every trial: the table is shown, and the next run writes the files
        print(f"gradwatch sweep: warning: cannot write {exc.filename} ({exc.strerror}); the study keeps the results")
    console = Console(width=None if sys.stdout.isatty() else 80)  # a log or a pipe gets the 80 columns of a terminal
    console.print(render(results, spec, width=console.width))
    states = [r.state for r in results]
    done = ", ".join(f"{states.count(s)} {s}" for s in ("finished", "pruned", "failed") if s in states)
    line = f"{done or 'no trials'}; results in {csv_path}"
    failed = None if code else _failed(results)
    if code:
        line += "; run the same command to resume"
    elif failed is not None:
        code = 1
        log = f"; see {Path(failed.run_dir) / 'trial.log'}" if failed.run_dir else ""
        line = f"no trial finished ({line}); trial {failed.trial} failed: {failed.error}{log}"
    print(f"gradwatch sweep: {line}", flush=True)
    return code


def _failed(results: list[TrialResult]) -> TrialResult | None:
    """The first failed trial of a sweep in which no trial finished (a sweep that failed), else ``None``."""
    if any(r.state == "finished" for r in results):
        return None
    return min((r for r in results if r.state == "failed"), key=lambda r: r.trial, default=None)
