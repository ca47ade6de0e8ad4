"""How many more trials per hour does the local sweep end with two workers than with one?

``gradwatch sweep run sweeps/quickstart.yaml --local --workers K`` for K = 1, then 2, the same trials; trials per
hour from spawn to exit. Target: with ``--workers 2``, at least 1.6× the trials per hour of ``--workers 1``.
``.venv/bin/python bench/sweep_workers.py`` (about ten minutes on 2 cores: two whole quickstart sweeps);
``--quick`` is a smoke run; ``--json PATH``. What it measures and how to read it: ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import ROOT, add_quick_and_json, begin, child_env, finish, resolve_defaults, write_json

from gradwatch.sweep.spec import load_sweep
from gradwatch.sweep.workers import visible_gpus

QUICKSTART = ROOT / "sweeps" / "quickstart.yaml"
TARGET_RATIO = 1.6


def sweep_file(tmp: Path, epochs: int | None) -> Path:
    """The quickstart sweep, or a copy whose trials train ``epochs`` epochs (``trainer.max_epochs`` swept as one)."""
    if epochs is None:
        return QUICKSTART
    config = dict(load_sweep(QUICKSTART).config)
    config["parameters"] = {**config["parameters"], "trainer.max_epochs": {"value": epochs}}
    path = tmp / "quickstart.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def run_workers(k: int, file: Path, count: int | None, tmp: Path) -> dict[str, Any]:
    folder = tmp / f"workers-{k}"
    command = [sys.executable, "-m", "gradwatch", "sweep", "run", str(file), "--local", "--workers", str(k)]
    command += ["--dir", str(folder)] + ([] if count is None else ["--count", str(count)])
    env = child_env()
    env.pop("OMP_NUM_THREADS", None)  # the engine's own split: cores / K threads per trial
    env.pop("WANDB_RUN_ID", None)
    share = "one GPU each" if visible_gpus() else f"OMP_NUM_THREADS={max(1, (os.cpu_count() or 1) // k)} each"
    print(f"  K={k} (trials get {share}): gradwatch sweep run {file.name} {' '.join(command[6:])}", flush=True)
    t0 = time.perf_counter()
    first_start: float | None = None
    tail: list[str] = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.perf_counter() - t0
            tail = [*tail[-40:], line.rstrip()]
            if re.search(r"trial \d+ (started|finished|failed|pruned)", line):
                first_start = now if first_start is None and "started" in line else first_start
                print(f"    {now:7.1f} s  {line.rstrip().removeprefix('gradwatch sweep: ')}", flush=True)
        code = proc.wait()
    wall = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"K={k}: the sweep exited with {code}:\n" + "\n".join(tail))
    results = json.loads((folder / "results.json").read_text())
    ended = [r for r in results if r["state"] in ("finished", "pruned", "failed")]
    failed = [r for r in results if r["state"] == "failed"]
    if failed:
        print(f"    WARNING: {len(failed)} trials failed (see {folder}/runs/*/trial.log)")
    seconds = [r["seconds"] for r in ended if r.get("seconds") is not None]
    since_start = wall - (first_start or 0.0)
    return {
        "workers": k,
        "trials": len(ended),
        "failed": len(failed),
        "wall_s": wall,
        "from_first_start_s": since_start,
        "per_hour": 3600 * len(ended) / wall,
        "per_hour_from_first_start": 3600 * len(ended) / since_start,
        "mean_trial_s": statistics.fmean(seconds) if seconds else math.nan,
    }


def report(runs: dict[int, dict[str, Any]]) -> dict[str, float]:
    print()
    print(
        f"{'':12}{'trials':>8}{'wall s':>9}{'trials/h':>10}{'from 1st start':>16}{'trials/h':>10}{'mean trial s':>14}"
    )
    for k, r in runs.items():
        print(
            f"{f'--workers {k}':12}{r['trials']:8d}{r['wall_s']:9.1f}{r['per_hour']:10.1f}"
            f"{r['from_first_start_s']:16.1f}{r['per_hour_from_first_start']:10.1f}{r['mean_trial_s']:14.1f}"
        )
    ratio = runs[2]["per_hour"] / runs[1]["per_hour"]
    ratio_started = runs[2]["per_hour_from_first_start"] / runs[1]["per_hour_from_first_start"]
    print(
        f"trials per hour, 2 workers / 1: {ratio:.2f}× (from the first start: {ratio_started:.2f}×);"
        f" >= {TARGET_RATIO}: {'yes' if ratio >= TARGET_RATIO else 'NO'}"
    )
    return {"ratio": ratio, "ratio_from_first_start": ratio_started}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, help="trials per worker count (default: the grid, 8; quick: 2)")
    parser.add_argument(
        "--epochs", type=int, help="train each trial this many epochs (default: the config's, 5; quick: 1)"
    )
    add_quick_and_json(parser, "a smoke run of about a minute (2 trials of 1 epoch each); numbers meaningless")
    args = parser.parse_args(argv)
    resolve_defaults(args, {"count": (None, 2), "epochs": (None, 1)})
    if (args.count is not None and args.count < 1) or (args.epochs is not None and args.epochs < 1):
        parser.error("--count and --epochs must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    began = begin()
    grid = load_sweep(QUICKSTART).grid_size()
    epochs = "the config's epochs" if args.epochs is None else f"{args.epochs} epoch(s) each"
    print(
        f"workers: {QUICKSTART.relative_to(ROOT)} ({grid} trials in the grid), {args.count or grid} trials per run,"
        f" {epochs}"
    )
    if "OMP_NUM_THREADS" in os.environ:
        print(f"  (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} is not passed on: the engine splits the cores)")
    with tempfile.TemporaryDirectory(prefix="gradwatch-workers-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        file = sweep_file(tmp, args.epochs)
        runs = {k: run_workers(k, file, args.count, tmp) for k in (1, 2)}
    ratios = report(runs)
    write_json(args.json, {"config": vars(args), "cores": os.cpu_count(), "runs": runs, **ratios})
    finish(began)


if __name__ == "__main__":
    main()
