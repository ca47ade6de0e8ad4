"""How long do gradwatch's commands take to start: imports, the CLI's parse, and a trial's first training step?

Fresh interpreters, each timed from spawn to exit: ``import gradwatch`` and the modules each command loads (which
heavy modules each one pulls in), ``gradwatch fit --print_config``, and a one-step fit with a callback stamping its
milestones. Targets: ``import gradwatch`` imports none of wandb, optuna, plotly, torch or lightning (every sweep
trial and every ``gradwatch sweep`` pays the imports). ``.venv/bin/python bench/startup.py`` (about two minutes
on 2 cores); ``--quick`` is a smoke run; ``--json PATH``. What it measures and how to read it: ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import ROOT, add_quick_and_json, begin, child_env, finish, median, resolve_defaults, rotate, write_json

PYTHON = sys.executable
#: Must not be imported by ``import gradwatch``.
FORBIDDEN = ("wandb", "optuna", "plotly", "torch", "lightning")
#: Listed when loaded, for information.
HEAVY = (*FORBIDDEN, "torchvision", "torchmetrics", "jsonargparse", "scipy", "sklearn", "pandas", "numpy", "sqlalchemy")
FIT_CONFIG = "sweeps/configs/cnn-digits.yaml"
#: ``python -c "import M"`` for each; "" is ``python -c pass``, the interpreter's floor.
IMPORTS = (
    "",
    "gradwatch",
    "gradwatch.cli",  # what `python -m gradwatch` loads before it dispatches
    "gradwatch.sweep.local",  # the sweep controller
    "optuna",
    "torch",
    "lightning",
    "wandb",
    "gradwatch.cli.fit",  # `gradwatch fit`'s LightningCLI
)
IMPORT_CHILD = """
import json, sys, time
t = time.perf_counter()
{statement}
seconds = time.perf_counter() - t
print(json.dumps({{"import_s": seconds, "loaded": sorted(m for m in {heavy!r} if m in sys.modules)}}))
"""
STAMP_MODULE = '''"""Written by bench/startup.py: time.time() at fit's milestones, to $GRADWATCH_BENCH_STAMPS."""

import json
import os
import time

from lightning.pytorch import Callback


def _stamp(event):
    with open(os.environ["GRADWATCH_BENCH_STAMPS"], "a") as f:
        f.write(json.dumps({"event": event, "time": time.time()}) + "\\n")


_stamp("parsing")  # imported while the CLI resolves --trainer.callbacks


class FirstStep(Callback):
    def __init__(self):
        self._seen = set()

    def _once(self, event):
        if event not in self._seen:
            self._seen.add(event)
            _stamp(event)

    def on_fit_start(self, trainer, pl_module):
        self._once("fit_start")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._once("first_step")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._once("first_step_end")
'''
STAMPS = ("parsing", "fit_start", "first_step", "first_step_end")
FIT_LABELS = {
    "parsing": "CLI parsing (stamp callback imported)",
    "fit_start": "on_fit_start",
    "first_step": "first training step starts",
    "first_step_end": "first training step ends",
    "wall_s": "exit (teardown: W&B, CSV)",
}


def run_import(module: str) -> dict[str, Any]:
    statement = f"import {module}" if module else "pass"
    code = IMPORT_CHILD.format(statement=statement, heavy=HEAVY)
    t0 = time.perf_counter()
    done = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=child_env(), cwd=ROOT)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"python -c '{statement}' failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, **result}


def importtime_top(module: str, n: int = 8) -> list[tuple[float, str]]:
    """The largest imports of ``import module`` and its direct imports, by cumulative time (seconds, name).

    From ``python -X importtime``; what the interpreter imports at start-up anyway (``-c pass``) is left out.
    """

    def rows(statement: str) -> list[tuple[float, str, int]]:
        done = subprocess.run(
            [PYTHON, "-X", "importtime", "-c", statement], capture_output=True, text=True, env=child_env(), cwd=ROOT
        )
        out = []
        for line in done.stderr.splitlines():
            m = re.match(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|( *)(\S+)", line)
            if m:
                out.append((int(m.group(2)) / 1e6, m.group(4), len(m.group(3))))
        return out

    startup = {name for _, name, _ in rows("pass")}
    mine = [(s, name) for s, name, indent in rows(f"import {module}") if indent <= 3 and name not in startup]
    return sorted(mine, reverse=True)[:n]


def run_fit(tmp: Path, stamp: bool) -> dict[str, Any]:
    """``python -m gradwatch fit`` from the repository root: ``--print_config``, or one step with the stamps."""
    runs = tmp / "runs"
    stamps = tmp / "stamps.jsonl"
    stamps.unlink(missing_ok=True)
    command = [PYTHON, "-m", "gradwatch", "fit", "--config", FIT_CONFIG]
    if stamp:
        command += ["--trainer.max_steps=1", "--trainer.callbacks+=gwbench_stamp.FirstStep"]
    else:
        command += ["--print_config"]
    path = os.pathsep.join(p for p in (str(tmp), os.environ.get("PYTHONPATH", "")) if p)
    env = child_env(GRADWATCH_ROOT_DIR=str(runs), GRADWATCH_BENCH_STAMPS=str(stamps), PYTHONPATH=path)
    env.pop("WANDB_RUN_ID", None)
    spawned = time.time()
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-1500:]}{done.stderr[-3000:]}"
        )
    result: dict[str, Any] = {"wall_s": wall}
    if stamp:
        events = [json.loads(line) for line in stamps.read_text().splitlines()] if stamps.exists() else []
        result.update({e["event"]: e["time"] - spawned for e in events})
        missing = [s for s in STAMPS if s not in result]
        if missing:
            raise RuntimeError(f"the 1-step fit never stamped {missing}; stderr:\n{done.stderr[-3000:]}")
    return result


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, list[dict[str, Any]]]:
    """Every command once per round, the order rotating by one each round; the untimed round's results dropped."""
    (tmp / "gwbench_stamp.py").write_text(STAMP_MODULE)
    units: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        (f"import:{m}", lambda m=m: run_import(m)) for m in IMPORTS
    ]
    units += [("fit:print_config", lambda: run_fit(tmp, False)), ("fit:one_step", lambda: run_fit(tmp, True))]
    untimed = 0 if args.quick else 1
    print(f"start-up: {len(units)} commands, {untimed} untimed + {args.repeats} interleaved rounds", flush=True)
    samples: dict[str, list[dict[str, Any]]] = {key: [] for key, _ in units}
    for r in range(untimed + args.repeats):
        for key, fn in rotate(units, r):
            result = fn()
            if r >= untimed:
                samples[key].append(result)
        print(f"  round {r + 1}/{untimed + args.repeats} done{' (untimed)' if r < untimed else ''}", flush=True)
    return samples


def report(samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def med(key: str, field: str) -> float:
        return median([s[field] for s in samples[key]])

    summary: dict[str, Any] = {"imports": {}, "fit": {}}
    print()
    print(f"{'fresh interpreter, spawn to exit':36}{'wall s':>9}{'import s':>10}  heavy modules loaded")
    for m in IMPORTS:
        key = f"import:{m}"
        loaded = sorted({name for s in samples[key] for name in s["loaded"]})
        label = f"import {m}" if m else "python -c pass"
        wall, imp = med(key, "wall_s"), med(key, "import_s")
        print(f"{label:36}{wall:9.2f}{imp:10.3f}  {', '.join(loaded) or '-'}")
        summary["imports"][m or "pass"] = {"wall_s": wall, "import_s": imp, "loaded": loaded}
    for m in ("gradwatch", "gradwatch.cli"):
        forbidden = [name for name in summary["imports"][m]["loaded"] if name in FORBIDDEN]
        verdict = "yes" if not forbidden else f"NO: {', '.join(forbidden)}"
        print(f"import {m} imports none of {', '.join(FORBIDDEN)}: {verdict}")
    top = importtime_top("gradwatch")
    summary["importtime_gradwatch"] = top
    print(
        "  largest imports of `import gradwatch` (-X importtime, cumulative): "
        + ", ".join(f"{n} {s * 1e3:.1f} ms" for s, n in top[:5])
    )
    print()
    print(f"python -m gradwatch fit --config {FIT_CONFIG} ..., seconds from spawn (medians):")
    print(f"  --print_config, to exit: {med('fit:print_config', 'wall_s'):.2f}")
    for field, label in FIT_LABELS.items():
        print(f"  --trainer.max_steps=1, {label + ':':40}{med('fit:one_step', field):7.2f}")
    summary["fit"] = {
        "print_config_wall_s": med("fit:print_config", "wall_s"),
        **{f"one_step_{f}": med("fit:one_step", f) for f in FIT_LABELS},
    }
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, help="timed rounds of every command (default: 5; quick: 1)")
    add_quick_and_json(parser, "a smoke run of about a minute, one round and none untimed; numbers meaningless")
    args = parser.parse_args(argv)
    resolve_defaults(args, {"repeats": (5, 1)})
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    began = begin()
    with tempfile.TemporaryDirectory(prefix="gradwatch-startup-bench-") as tmp:
        samples = measure(args, Path(tmp))
    summary = report(samples)
    write_json(args.json, {"config": vars(args), "cores": os.cpu_count(), **summary, "samples": samples})
    finish(began)


if __name__ == "__main__":
    main()
