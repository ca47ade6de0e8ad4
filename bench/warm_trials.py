"""Do warm trial workers pay? A trial's start-up, and the quick-start sweep's wall time, warm against fresh.

Targets: spawn → first training step of a ``gradwatch fit`` trial ≤ 1 s warm; ``gradwatch sweep run
sweeps/quickstart.yaml --local --workers 2`` in ≤ 0.5× the wall time of ``--cold``, with the same trials and the same
results. ``.venv/bin/python bench/warm_trials.py`` (about ten minutes on 2 cores); ``--quick`` is a smoke run
(one-epoch trials: the controller's own start-up dominates, numbers meaningless); ``--json PATH``.

What it measures, from the repository root, W&B offline:

- start-up: ``python -m gradwatch fit --config sweeps/configs/cnn-digits.yaml --trainer.max_steps=1`` with
  ``startup.py``'s stamp callback, in a trial's environment (``OMP_NUM_THREADS`` every core, as for one worker),
  started as the engine starts a trial: ``subprocess.Popen`` (fresh) or ``WarmWorkers.popen`` (warm, its server
  started and its imports done beforehand: those are paid once per sweep and printed on their own). Seconds from
  the parent's ``time.time()`` just before the call to the child's stamps (CLI parsing, the first
  ``on_train_batch_start``) and to the parent seeing its exit. Medians of ``--startups`` rounds, the order alternating.
- the sweep: ``gradwatch sweep run sweeps/quickstart.yaml --local --workers 2 --dir TMP`` and the same with
  ``--cold``, as a user runs it (the controller's check against ``gradwatch fit``'s parser and the warm worker's
  imports included), ``OMP_NUM_THREADS`` unset so the engine splits the cores; wall time from spawn to exit and the
  median trial's ``seconds``; medians of ``--sweeps`` rounds, alternating. Every run must end with the same trials in
  the same states, the same metric values, and every trial's ``metrics.csv`` identical byte for byte.

On 2 cores any other process shows in every number: read the load average on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import ROOT, add_quick_and_json, begin, child_env, finish, median, resolve_defaults, rotate, write_json
from startup import FIT_CONFIG, STAMP_MODULE
from sweep_workers import QUICKSTART, sweep_file

from gradwatch.sweep.warm import WarmWorkers

KINDS = ("fresh", "warm")


def trial_env(tmp: Path, stamps: Path) -> dict[str, str]:
    """A trial's environment as the local engine gives it (one worker), plus the stamp callback's module and file."""
    env = child_env(GRADWATCH_ROOT_DIR=str(tmp / "runs"), GRADWATCH_BENCH_STAMPS=str(stamps), PYTHONPATH=str(tmp))
    env.pop("WANDB_RUN_ID", None)
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))  # the engine's share for one worker: every core
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def start_trial(kind: str, workers: WarmWorkers, tmp: Path) -> dict[str, float]:
    """One ``gradwatch fit`` step, started as the engine starts a trial; seconds from spawn to each milestone."""
    stamps = tmp / "stamps.jsonl"
    stamps.unlink(missing_ok=True)
    env = trial_env(tmp, stamps)
    command = ["/usr/bin/env", "python", "-m", "gradwatch", "fit", "--config", FIT_CONFIG, "--trainer.max_steps=1"]
    command += ["--trainer.callbacks+=gwbench_stamp.FirstStep"]
    with (tmp / f"{kind}.log").open("wb") as log:
        spawned = time.time()
        process = workers.popen(command, env=env, stdout=log, cwd=ROOT) if kind == "warm" else None
        if kind == "warm" and process is None:
            raise RuntimeError(f"the warm worker did not take the trial: {workers.off}")
        process = process or subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT
        )
        code = process.wait()
        ended = time.time()
    if code != 0:
        raise RuntimeError(f"{kind} trial exited {code}:\n{(tmp / f'{kind}.log').read_text()[-3000:]}")
    events = {e["event"]: e["time"] - spawned for e in map(json.loads, stamps.read_text().splitlines())}
    return {"first_step": events["first_step"], "parsing": events["parsing"], "exit": ended - spawned}


def run_sweep(kind: str, file: Path, count: int | None, folder: Path) -> dict[str, Any]:
    """``gradwatch sweep run FILE --local --workers 2`` (``--cold`` for fresh), as a user runs it: its wall time."""
    command = [sys.executable, "-m", "gradwatch", "sweep", "run", str(file), "--local", "--workers", "2"]
    command += ["--dir", str(folder)] + ([] if count is None else ["--count", str(count)])
    command += ["--cold"] if kind == "fresh" else []
    env = child_env()
    env.pop("OMP_NUM_THREADS", None)  # the engine's own split: cores / 2 threads per trial
    env.pop("WANDB_RUN_ID", None)
    t0 = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-3000:]}")
    rows = json.loads((folder / "results.json").read_text())
    results = {json.dumps(r["params"], sort_keys=True): r for r in rows}
    csvs = {key: (Path(r["run_dir"]) / "metrics.csv").read_text() for key, r in results.items()}
    trial_s = median([r["seconds"] for r in rows if r.get("seconds") is not None])
    said_warm = [line for line in done.stdout.splitlines() if "warm trial workers" in line or "fresh process" in line]
    return {"wall_s": wall, "trial_s": trial_s, "states": {k: r["state"] for k, r in results.items()},
            "metrics": {k: r["metric"] for k, r in results.items()}, "csv": csvs, "said": said_warm}  # fmt: skip


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    (tmp / "gwbench_stamp.py").write_text(STAMP_MODULE)
    file = sweep_file(tmp, 1) if args.quick else QUICKSTART
    startup: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    sweeps: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    with WarmWorkers(echo=lambda line: print(f"  {line}", flush=True)) as workers:
        t0 = time.perf_counter()
        if not workers.start():
            raise RuntimeError(f"no warm worker: {workers.off}")
        imports = time.perf_counter() - t0
        print(f"warm worker ready in {imports:.1f} s (its imports: {workers.preload_seconds:.1f} s)", flush=True)
        for r in range(args.startups):
            for kind in rotate(KINDS, r):
                startup[kind].append(start_trial(kind, workers, tmp))
        print(f"  start-up: {args.startups} rounds done", flush=True)
    for r in range(args.sweeps):
        for kind in rotate(KINDS, r):
            sweeps[kind].append(run_sweep(kind, file, args.count, tmp / f"sweep-{kind}-{r}"))
            print(f"  sweep round {r + 1}, {kind}: {sweeps[kind][-1]['wall_s']:.1f} s", flush=True)
    return {"warm_worker_ready_s": imports, "startup": startup, "sweeps": sweeps}


def report(samples: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    startup, sweeps = samples["startup"], samples["sweeps"]

    def med(kind: str, key: str, table: dict[str, list[dict[str, Any]]]) -> float:
        return median([s[key] for s in table[kind]])

    print()
    print(f"{'one gradwatch fit trial, s from spawn (medians)':50}{'fresh':>8}{'warm':>8}{'warm/fresh':>12}")
    summary: dict[str, Any] = {"warm_worker_ready_s": samples["warm_worker_ready_s"]}
    for key, label in (("parsing", "its CLI parses"), ("first_step", "first training step"), ("exit", "exit")):
        fresh, warm = med("fresh", key, startup), med("warm", key, startup)
        print(f"  {label:48}{fresh:8.2f}{warm:8.2f}{warm / fresh:12.2f}")
        summary[f"startup_{key}"] = {"fresh": fresh, "warm": warm}
    first = summary["startup_first_step"]["warm"]
    print(f"  warm worker's own imports, once per sweep: {samples['warm_worker_ready_s']:.2f} s")
    print(f"gradwatch sweep run {file_label(args)} --local --workers 2 (--cold: fresh)")
    print(f"{'  s (medians)':50}{'fresh':>8}{'warm':>8}{'warm/fresh':>12}")
    for key, label in (("wall_s", "wall time, spawn to exit"), ("trial_s", "a trial (median)")):
        fresh, warm = med("fresh", key, sweeps), med("warm", key, sweeps)
        print(f"  {label:48}{fresh:8.1f}{warm:8.1f}{warm / fresh:12.2f}")
        summary[f"sweep_{key}"] = {"fresh": fresh, "warm": warm}
    runs = [run for kind in KINDS for run in sweeps[kind]]
    same = all(run[k] == runs[0][k] for run in runs for k in ("states", "metrics", "csv"))
    said = sorted({line for run in runs for line in run["said"]})
    print(f"same trials, same results (every metrics.csv byte for byte), warm and fresh: {'yes' if same else 'NO'}")
    if said:
        print("  the sweeps said: " + " | ".join(said))
    ratio = summary["sweep_wall_s"]["warm"] / summary["sweep_wall_s"]["fresh"]
    print(f"targets: first step <= 1 s warm: {'yes' if first <= 1 else 'NO'} ({first:.2f} s); "
          f"sweep wall <= 0.5x fresh: {'yes' if ratio <= 0.5 else 'NO'} ({ratio:.2f}x)")  # fmt: skip
    summary.update(same_results=same, sweep_ratio=ratio)
    return summary


def file_label(args: argparse.Namespace) -> str:
    return "quickstart (1 epoch)" if args.quick else str(QUICKSTART.relative_to(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--startups", type=int, help="interleaved rounds of one-step trials (default: 7; quick: 1)")
    parser.add_argument("--sweeps", type=int, help="interleaved rounds of the sweep (default: 3; quick: 1)")
    parser.add_argument("--count", type=int, help="trials per sweep (default: the grid, 8; quick: 2)")
    add_quick_and_json(parser, "a smoke run of about a minute (2 one-epoch trials per sweep); numbers meaningless")
    args = parser.parse_args(argv)
    resolve_defaults(args, {"startups": (7, 1), "sweeps": (3, 1), "count": (None, 2)})
    if min(args.startups, args.sweeps, args.count or 1) < 1:
        parser.error("--startups, --sweeps and --count must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    began = begin()
    with tempfile.TemporaryDirectory(prefix="gradwatch-warm-bench-") as tmp:
        samples = measure(args, Path(tmp))
        summary = report(samples, args)
    for runs in samples["sweeps"].values():
        for run in runs:
            run.pop("csv")  # compared above; megabytes in the JSON
    write_json(args.json, {"config": vars(args), "cores": os.cpu_count(), **summary, "samples": samples})
    finish(began)


if __name__ == "__main__":
    main()
