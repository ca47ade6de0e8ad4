"""How fast is ``gradwatch report`` on a big sweep, how large is its file, and how soon is the page interactive?

A synthetic local sweep in the real on-disk layout (:func:`write_synthetic_sweep`), ``gradwatch report`` on it, then
the page in headless Chromium. Targets, for 64 runs × 2,000 logged steps × 12 layers: the report in under 10 s, a
file under 15 MB, the page interactive under 3 s. ``.venv/bin/python bench/report_speed.py`` (a few minutes on 2
cores); ``--quick`` is a smoke run; ``--json PATH``; ``--keep DIR`` reuses the data. What it measures and how to read
it: ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import itertools
import json
import math
import os
import platform
import shutil
import sqlite3
import statistics
import string
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from common import add_quick_and_json, begin, finish, resolve_defaults, write_json

GRID: dict[str, list[Any]] = {
    "model.depth": [4, 8, 16, 32],
    "model.activation": ["relu", "tanh", "sigmoid", "gelu"],
    "model.norm": ["none", "batch"],
    "model.residual": [True, False],
}
SWEEP_NAME = "report-speed"
COMMAND = ["${env}", "${interpreter}", "-m", "gradwatch", "fit", "--config", "sweeps/configs/cnn-digits.yaml"]
COMMAND.append("${args}")
TARGETS = {"report_s": 10.0, "size_mb": 15.0, "ready_s": 3.0}
EPOCH_STEPS = 200  # a validation row every this many steps (every run's last step, when shorter)
ACT_EVERY = 10  # the ActivationMonitor samples every this many steps
# Decades the gradient norm loses per unit of depth, head → input, without norm or residual connections.
DECAY = {"sigmoid": 0.42, "tanh": 0.3, "relu": 0.05, "gelu": 0.06}
MAX_ATTENUATION, VANISHING_NORM = 4.0, 1e-8  # GradientMonitor's defaults: its vanishing rule


@dataclass(frozen=True)
class Run:
    """One trial of the synthetic sweep."""

    trial: int
    run_id: str
    depth: int
    activation: str
    norm: str
    residual: bool

    @property
    def params(self) -> dict[str, Any]:
        return {
            "model.depth": self.depth,
            "model.activation": self.activation,
            "model.norm": self.norm,
            "model.residual": self.residual,
        }

    @property
    def vanishing(self) -> bool:
        """Whether its gradients vanish: sigmoid / tanh, no norm, no residual, depth 16 or more."""
        return self.activation in ("sigmoid", "tanh") and self.norm == "none" and not self.residual and self.depth >= 16


def sweep_config(name: str = SWEEP_NAME) -> dict[str, Any]:
    """The W&B sweep file of the synthetic sweep, as loaded from YAML."""
    return {
        "name": name,
        "method": "grid",
        "metric": {"name": "val/acc", "goal": "maximize"},
        "parameters": {key: {"values": values} for key, values in GRID.items()},
        "command": COMMAND,
    }


def layer_names(layers: int, norm: str) -> list[str]:
    """The GradientMonitor's layers, input → output: stem, ``layers - 2`` blocks, head (and batch norms)."""
    convs = ["backbone.stem", *(f"backbone.blocks.{i}" for i in range(layers - 2))]
    parts = [[f"{c}.conv", f"{c}.norm"] if norm == "batch" else [f"{c}.conv"] for c in convs]
    return [name for pair in parts for name in pair] + ["head"]


def write_synthetic_sweep(
    folder: str | Path, runs: int = 64, steps: int = 2000, layers: int = 12, seed: int = 0, workers: int | None = None
) -> Path:
    """Write a local sweep folder like ``gradwatch sweep run --local`` leaves (see bench/README.md).

    Args:
        folder: Created; must not exist or be empty.
        runs: Trials (the 64-run grid's first ``runs`` in a seeded order; beyond 64 the grid again).
        steps: Logged training steps per run (one GradientMonitor row each).
        layers: Conv / linear layers measured per run (>= 2: stem and head); batch-norm runs add a ``.norm``
            after each conv.
        seed: Seeds the order of the grid, the run ids and every number.
        workers: Processes writing runs (printing floats is most of the time); one per core when ``None`` and the
            sweep is large, else 1.

    Returns:
        ``folder``, resolved.
    """
    if layers < 2 or steps < 1 or runs < 1:
        raise ValueError(f"need layers >= 2, steps >= 1, runs >= 1; got {layers}, {steps}, {runs}")
    folder = Path(folder).resolve()
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty")
    (folder / "trials").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    combos = [dict(zip(GRID, values, strict=True)) for values in itertools.product(*GRID.values())]
    order = rng.permutation(len(combos))
    ids = _run_ids(rng, runs)
    plan = [Run(i, ids[i], *(combos[order[i % len(combos)]][k] for k in GRID)) for i in range(runs)]
    jobs = [(folder, run, steps, layers, (seed, run.trial)) for run in plan]
    if workers is None:
        workers = min(os.cpu_count() or 1, runs) if runs * steps >= 20_000 else 1
    if workers > 1:
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            outcomes = list(pool.map(_write_run, *zip(*jobs, strict=True)))
    else:
        outcomes = [_write_run(*job) for job in jobs]
    # Trials start one after another: their parameter files' times give the start order (the report sorts by it).
    start = time.time() - 20.0 * runs
    for run in plan:
        for suffix in (".yaml", ".json"):
            os.utime(folder / "trials" / f"config-{run.run_id}{suffix}", (start + 20 * run.trial,) * 2)
    _write_study(folder, [(run, *outcome) for run, outcome in zip(plan, outcomes, strict=True)])
    return folder


def _run_ids(rng: np.random.Generator, count: int) -> list[str]:
    alphabet = np.array(list(string.ascii_lowercase + string.digits))
    ids: list[str] = []
    while len(ids) < count:
        run_id = "".join(rng.choice(alphabet, 8))
        if run_id not in ids:
            ids.append(run_id)
    return ids


def _f32(values: np.ndarray) -> np.ndarray:
    """As a float32 logged through ``tensor.item()``: ``0.06465468555688858``, not ``0.0646547``."""
    return np.asarray(values, dtype=np.float32).astype(np.float64)


def _simulate(run: Run, steps: int, layers: int, rng: np.random.Generator) -> list[tuple[int, dict[str, Any]]]:
    """The run's logging calls as ``(rank, columns)``: ``columns`` maps keys (``step``, ``epoch``) to arrays.

    ``rank`` orders calls logged at the same step: GradientMonitor, ActivationMonitor, train/loss, val, train/acc.
    """
    t = np.arange(steps, dtype=np.float64)
    blocks = layers - 2
    names = layer_names(layers, run.norm)
    convs = [n for n in names if not n.endswith(".norm")]
    # Distance from the output as a fraction: head 0, the stem 1; a norm layer shares its conv's.
    distance = {name: (blocks + 1 - i) / (blocks + 1) for i, name in enumerate(convs)}
    u = np.array([distance[n.replace(".norm", ".conv")] for n in names])
    mult = (0.25 if run.norm == "batch" else 1.0) * (0.15 if run.residual else 1.0)
    final = -(0.3 + DECAY[run.activation] * run.depth * mult)  # decades from the head to the stem, at the end
    ramp = 1.0 - np.exp(-t / 300.0)
    # Vanishing runs saturate as they train and lose more; healthy ones improve a little, and stay well within
    # MAX_ATTENUATION (noise included) at every step.
    attenuation = final * (0.75 + 0.25 * ramp) if run.vanishing else max(final, -3.0) * (1.1 - 0.1 * ramp)
    tau = 900.0 if run.vanishing else 120.0 * (1 + run.depth / 32) * (2.0 if run.norm == "none" else 1.0)
    head = np.log10(0.25 * (0.8 + 0.2 * np.exp(-t / tau)) if run.vanishing else 0.6 * (0.25 + 0.75 * np.exp(-t / tau)))
    jitter = rng.normal(0, 0.08, len(names)) * (u > 0)
    log_grad = (
        head[:, None]
        + attenuation[:, None] * u[None, :] ** 1.15
        + jitter
        + rng.normal(0, 0.1, (steps, 1))  # the batch: moves every layer
        + rng.normal(0, 0.06, (steps, len(names)))
        - 1.1 * np.array([n.endswith(".norm") for n in names])  # a BatchNorm's few parameters
    )
    grad = _f32(10.0**log_grad)
    total = np.sqrt((grad**2).sum(axis=1))
    last = grad[:, -1:]
    measured = np.log10(grad[:, 0] / grad[:, -1])
    low = (grad < VANISHING_NORM) | ((measured[:, None] < -MAX_ATTENUATION) & (grad < last * 10**-MAX_ATTENUATION))
    vanishing = low.sum(axis=1).astype(np.float64)
    is_norm = np.array([n.endswith(".norm") for n in names])
    p0 = np.where(is_norm, 4.0 + rng.normal(0, 0.05, len(names)), 2.0 + 3.0 * rng.random(len(names)))
    p0[-1] = 1.0 + rng.random()
    moves = np.clip((log_grad.mean(axis=0) + 8.0) / 6.0, 0.0, 1.0)  # layers whose gradient vanished stay put
    param = _f32(p0[None, :] * (1.0 + 0.25 * moves[None, :] * (1.0 - np.exp(-t / 700.0))[:, None]))
    # Adam's step is about lr per weight until the gradient sinks under eps (1e-8 per weight, ~1e-6 per layer).
    ratio = 1e-3 * 10 ** rng.normal(0, 0.12, (steps, len(names))) * (0.6 + 0.4 * np.exp(-t / 500.0))[:, None]
    ratio = _f32(ratio * grad / (grad + 1e-6))

    def gradient_call(rows: slice, update_ratio: bool) -> dict[str, Any]:
        call = {"step": t[rows].astype(np.int64)}
        call |= {f"grad/norm/{n}": grad[rows, i] for i, n in enumerate(names)}
        if update_ratio:
            call |= {f"grad/update_ratio/{n}": ratio[rows, i] for i, n in enumerate(names)}
        call |= {f"param/norm/{n}": param[rows, i] for i, n in enumerate(names)}
        call |= {"grad/norm_total": total[rows], "health/attenuation": measured[rows]}
        zeros = np.zeros(len(call["step"]))
        return call | {"health/vanishing": vanishing[rows], "health/exploding": zeros, "health/nonfinite": zeros}

    # The first measurement has no earlier update to compare with: no update ratios.
    calls = [(0, gradient_call(slice(0, 1), False)), (0, gradient_call(slice(1, None), True))]
    calls.append((1, _activations(run, t[::ACT_EVERY], blocks, rng)))
    calls += _training(run, t, final, tau, rng)
    return calls


def _activations(run: Run, t: np.ndarray, blocks: int, rng: np.random.Generator) -> dict[str, Any]:
    names = ["backbone.stem.act", *(f"backbone.blocks.{i}.act" for i in range(blocks))]
    v = np.linspace(0.0, 1.0, len(names))[None, :]  # input → output
    ramp = (1.0 - np.exp(-t / 300.0))[:, None]
    noise = rng.normal(0, 0.01, (len(t), len(names)))
    columns: dict[str, Any] = {"step": t.astype(np.int64)}
    plain = run.norm == "none" and not run.residual
    if run.activation in ("relu", "gelu"):
        scale = (0.5 if run.activation == "gelu" else 1.0) * (1.0 + 3.0 * plain * run.depth / 32)
        kind, fraction = "dead", 0.01 + 0.06 * scale * v * ramp
        mean, std = 0.3 + 0.2 * v + 0.1 * ramp, 0.6 + 0.3 * v * ramp
    else:
        top = 0.8 if run.vanishing else (0.12 if run.norm == "none" else 0.03)
        kind, fraction = "saturated", 0.01 + top * v**0.7 * (0.5 + 0.5 * ramp)
        centre, spread = (0.5, 0.2) if run.activation == "sigmoid" else (0.0, 0.5)
        mean = centre + 0.05 * (v - 0.5) * ramp
        std = spread * (1.0 + 1.2 * fraction)
    values = {kind: np.clip(fraction + noise, 0.0, 1.0), "mean": mean + noise, "std": std * (1 + noise)}
    for stat, array in values.items():
        columns |= {
            f"act/{stat}/{n}": _f32(np.broadcast_to(array, (len(t), len(names)))[:, i]) for i, n in enumerate(names)
        }
    return columns


def _training(
    run: Run, t: np.ndarray, decades: float, tau: float, rng: np.random.Generator
) -> list[tuple[int, dict[str, Any]]]:
    """train/loss every step; val/loss, val/acc and train/acc at each epoch's end."""
    steps = len(t)
    if run.vanishing:
        floor = 1.6 + 0.15 * min(abs(decades) - 4.0, 4.0) / 4.0
    else:
        floor = (
            0.04 + 0.05 * (run.activation in ("sigmoid", "tanh")) + 0.08 * (run.norm == "none") + 0.05 * abs(decades)
        )
    smooth = floor + (2.31 - floor) * np.exp(-t / tau)
    loss = smooth * np.exp(rng.normal(0, 0.08, steps))
    length = min(EPOCH_STEPS, steps)
    epoch = (t // length).astype(np.int64)
    ends = np.flatnonzero((t + 1) % length == 0)

    def accuracy(x: np.ndarray) -> np.ndarray:
        return 0.1 + 0.88 * np.clip(1.0 - x / 2.31, 0.0, 1.0) ** 0.8

    val_loss = smooth[ends] * 1.08 + rng.normal(0, 0.02, len(ends))
    epoch_loss = np.array([loss[e - length + 1 : e + 1].mean() for e in ends])
    return [
        (2, {"step": t.astype(np.int64), "epoch": epoch, "train/loss": _f32(loss)}),
        (3, {"step": ends, "epoch": epoch[ends], "val/loss": _f32(val_loss), "val/acc": _f32(accuracy(val_loss))}),
        (4, {"step": ends, "epoch": epoch[ends], "train/acc": _f32(accuracy(epoch_loss))}),
    ]


def write_metrics_csv(path: Path, calls: list[tuple[int, dict[str, Any]]]) -> None:
    """Write logging calls as Lightning's CSVLogger does: sorted header, a row per call, empty cells elsewhere."""
    header = sorted({key for _, columns in calls for key in columns})
    lines, order = [], []
    for rank, columns in calls:
        rows = len(columns["step"])
        cells = [list(map(str, columns[k].tolist())) if k in columns else itertools.repeat("", rows) for k in header]
        lines += map(",".join, zip(*cells, strict=False))  # the empty columns repeat forever
        order.append(np.asarray(columns["step"]) * 8 + rank)
    keys = np.concatenate(order) if order else np.array([])
    with path.open("w") as f:
        f.write(",".join(header) + "\n")
        f.writelines(lines[i] + "\n" for i in np.argsort(keys, kind="stable"))


def _write_run(
    folder: Path, run: Run, steps: int, layers: int, seed: tuple[int, int]
) -> tuple[dict[str, float], float | None]:
    """Write one run's folder and its trial files; its last health readings and ``val/acc``."""
    import yaml

    rng = np.random.default_rng(seed)
    run_dir = folder / "runs" / run.run_id
    run_dir.mkdir(parents=True)
    calls = _simulate(run, steps, layers, rng)
    write_metrics_csv(run_dir / "metrics.csv", calls)
    model = {
        "depth": run.depth, "width": 16, "activation": run.activation, "norm": run.norm, "residual": run.residual,
        "init": "default", "dropout": 0.0, "stages": 3, "num_classes": None, "in_channels": None, "backbone": None,
        "pretrained": False, "freeze_backbone_epochs": 0,
    }  # fmt: skip
    data = {"test_split": 0.15, "image_size": None, "augment": "none", "batch_size": 64, "val_split": 0.15, "seed": 0}
    data |= {"num_workers": 0, "pin_memory": None, "persistent_workers": None}
    hparams = {"_instantiator": "lightning.pytorch.cli.instantiate_module", **model, **data}
    hparams |= {"num_classes": 10, "in_channels": 1, "image_size": 8, "gradwatch/layers": layer_names(layers, run.norm)}
    (run_dir / "hparams.yaml").write_text(yaml.dump(hparams))
    epochs = math.ceil(steps / min(EPOCH_STEPS, steps))
    optimizer = {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-08}}
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "auto", "devices": "auto", "logger": None, "max_epochs": epochs, "max_steps": -1,
            "log_every_n_steps": 1, "enable_progress_bar": False, "enable_model_summary": False,
            "default_root_dir": str(folder / "runs"),
            "callbacks": [
                {"class_path": "gradwatch.callbacks.ActivationMonitor", "init_args": {"every_n_steps": ACT_EVERY}}
            ],
        },
        "model": {"class_path": "gradwatch.CNN", "init_args": {**model, "optimizer": optimizer, "lr_scheduler": None}},
        "data": {"class_path": "gradwatch.DigitsDataModule", "init_args": data},
        "gradients": {"class_path": "gradwatch.GradientMonitor", "init_args": {"log_every_n_steps": None}},
        "ckpt_path": None,
    }  # fmt: skip
    header = "# lightning.pytorch==2.6.6\n"
    (run_dir / "config.yaml").write_text(header + yaml.safe_dump(config, sort_keys=False))
    trial_config = {name: {"value": value} for name, value in run.params.items()}
    trial_config["sweep_name"] = {"value": SWEEP_NAME}
    (folder / "trials" / f"config-{run.run_id}.yaml").write_text(json.dumps(trial_config))
    (folder / "trials" / f"config-{run.run_id}.json").write_text(json.dumps(run.params))
    health = _last(calls, "health/")
    acc = _last(calls, "val/").get("val/acc")
    verdict = f"vanishing {int(health['health/vanishing'])}" if health["health/vanishing"] else "healthy"
    shown = f"val/acc {acc:.4g}; " if acc is not None else ""
    (run_dir / "trial.log").write_text(
        f"Seed set to 0\n`Trainer.fit` stopped: `max_epochs={epochs}` reached.\n"
        f"gradwatch: {shown}gradients {verdict}; metrics in {run_dir / 'metrics.csv'}\n"
    )
    return health, acc


def _last(calls: list[tuple[int, dict[str, Any]]], prefix: str) -> dict[str, float]:
    """The last logged value of each key starting with ``prefix``."""
    last: dict[str, tuple[int, float]] = {}
    for _, columns in calls:
        for key, values in columns.items():
            if key.startswith(prefix) and len(values):
                step = int(columns["step"][-1])
                if key not in last or step >= last[key][0]:
                    last[key] = (step, float(values[-1]))
    return {key: value for key, (_, value) in last.items()}


def _write_study(folder: Path, trials: list[tuple[Run, dict[str, float], float | None]]) -> None:
    """``sweep.db`` as the controller leaves it, then ``results.json`` / ``results.csv`` as ``sweep run`` saves them."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    from gradwatch.rundir import SWEEP_FILE, Metrics, health_summary
    from gradwatch.sweep.results import collect, save
    from gradwatch.sweep.spec import parse_sweep

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = sweep_config()
    # As LocalSweep leaves it: the file as it runs (JSON, which is YAML), named, next to its runs.
    (folder / SWEEP_FILE).write_text(json.dumps({**config, "name": config["name"]}, indent=2))
    spec = parse_sweep(config, folder / "sweep.yaml")
    with contextlib.closing(sqlite3.connect(folder / "sweep.db")) as db:  # as LocalSweep keeps its own study
        db.execute("PRAGMA journal_mode=WAL")
    storage = f"sqlite:///{folder / 'sweep.db'}"
    study = optuna.create_study(storage=storage, study_name=spec.name, direction="maximize")
    study.set_user_attr("sweep", config)
    distributions = {name: CategoricalDistribution(values) for name, values in GRID.items()}
    rng = np.random.default_rng(len(trials))
    frozen = []
    for run, health, metric in trials:
        run_dir = folder / "runs" / run.run_id
        summary = health_summary(Metrics(np.zeros(1), {key: np.array([value]) for key, value in health.items()}))
        outcome: dict[str, Any] = {"exit_code": 0, "seconds": round(float(12 + run.depth * 0.3 + rng.random()), 1)}
        outcome["health"] = summary
        if metric is None:
            outcome["error"] = "val/acc was never logged"
        command = ["python", "-m", "gradwatch", "fit", "--config", "sweeps/configs/cnn-digits.yaml"]
        command += [f"--{name}={value}" for name, value in run.params.items()]
        frozen.append(
            optuna.trial.create_trial(
                params=run.params,
                distributions=distributions,
                value=metric,
                state=optuna.trial.TrialState.COMPLETE if metric is not None else optuna.trial.TrialState.FAIL,
                user_attrs={"run": {"id": run.run_id, "dir": str(run_dir), "command": command}, "outcome": outcome},
            )
        )
    study.add_trials(frozen)
    save(collect(study, spec), folder)


def _median(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}


def time_report(folder: Path, output: Path, repeat: int) -> list[float]:
    """Wall-clock seconds of ``gradwatch report folder -o output``, ``repeat`` times."""
    script = Path(sys.executable).with_name("gradwatch")
    command = [str(script) if script.exists() else shutil.which("gradwatch") or "gradwatch"]
    command += ["report", str(folder), "-o", str(output)]
    seconds = []
    for _ in range(repeat):
        output.unlink(missing_ok=True)
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds.append(time.perf_counter() - start)
        if done.returncode != 0 or not output.exists():
            sys.exit(f"`{' '.join(command)}` failed (exit code {done.returncode}):\n{done.stdout}\n{done.stderr}")
    return seconds


def time_page(path: Path, repeat: int) -> tuple[list[float], list[float], Any]:
    """Seconds to ``data-ready`` and to the first run section's ``data-ready``, and the last load's facts."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "report"))
    from browser import ReportBrowser

    ready, opened, result = [], [], None
    with ReportBrowser() as browser:
        for _ in range(repeat):
            report = browser.page(path, timeout=120)
            try:
                ready.append(report.wait_ready())
                runs = report.run_ids()
                if runs:
                    opened.append(report.open_run(runs[0]))
            finally:
                report.close()
        result = browser.open(path, timeout=120)
    return ready, opened, result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, help="trials in the sweep (default: 64, the grid; quick: 4)")
    parser.add_argument("--steps", type=int, help="logged steps per run (default: 2000; quick: 200)")
    parser.add_argument("--layers", type=int, help="measured conv/linear layers per run (default: 12; quick: 4)")
    parser.add_argument("--repeat", type=int, help="timed runs of the report and the page (default: 3; quick: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the synthetic data (default: 0)")
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="write the sweep and report here and keep them; a sweep already there is reused",
    )
    add_quick_and_json(parser, "a smoke run of seconds, 4 runs × 200 steps × 4 layers; numbers meaningless")
    args = parser.parse_args(argv)
    resolve_defaults(args, {"runs": (64, 4), "steps": (2000, 200), "layers": (12, 4), "repeat": (3, 1)})
    if min(args.runs, args.steps, args.repeat) < 1 or args.layers < 2:
        parser.error("--runs, --steps and --repeat must be >= 1, --layers >= 2")
    began = begin()
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="gradwatch-report-bench-")
    root = args.keep.resolve() if args.keep else Path(tmp.name)
    try:
        folder, output = root / "sweep", root / "report.html"
        start = time.perf_counter()
        reused = (folder / "results.json").exists()
        if reused:  # a --keep folder from an earlier run: its flags, not these, set the data
            print(f"reusing the sweep in {folder} (delete it to write one with these flags)")
        else:
            write_synthetic_sweep(folder, args.runs, args.steps, args.layers, args.seed)
        generated = None if reused else time.perf_counter() - start
        data_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
        runs = len(list((folder / "runs").iterdir()))
        written = "" if generated is None else f", written in {generated:.1f} s"
        print(f"sweep: {runs} runs, {data_mb:.0f} MB on disk{written} ({folder})")
        report_s = time_report(folder, output, args.repeat)
        size_mb = output.stat().st_size / 1e6
        ready_s, open_s, page = time_page(output, args.repeat)
    finally:
        if tmp is not None:
            tmp.cleanup()

    measured = {"report_s": statistics.median(report_s), "size_mb": size_mb, "ready_s": statistics.median(ready_s)}
    labels = {"report_s": "gradwatch report (s)", "size_mb": "HTML file (MB)", "ready_s": "page interactive (s)"}
    spread = {"report_s": report_s, "ready_s": ready_s}
    print(f"\n{'':24}{'median':>9}{'min':>9}{'max':>9}{'target':>9}  ok")
    for key, label in labels.items():
        values = spread.get(key, [measured[key]])
        ok = "yes" if measured[key] < TARGETS[key] else "NO"
        print(f"{label:24}{measured[key]:9.2f}{min(values):9.2f}{max(values):9.2f}{'< ' + str(TARGETS[key]):>9}  {ok}")
    if open_s:
        print(f"{'open a run section (s)':24}{statistics.median(open_s):9.2f}{min(open_s):9.2f}{max(open_s):9.2f}")
    drawn = sum(c.drawn for c in page.charts if c.visible)
    nonblank = sum(c.nonblank for c in page.charts if c.visible)
    visible = sum(c.visible for c in page.charts)
    print(f"\ncharts: {len(page.charts)} in the page, {visible} visible at load: {drawn} drawn, {nonblank} nonblank")
    print(f"console errors: {len(page.console_errors)}; network requests (blocked): {len(page.network)}")
    for line in [*page.console_errors, *page.network][:10]:
        print(f"  {line}")

    if args.json is not None:
        result = {
            "config": vars(args),
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
            "data": {"generate_s": generated, "size_mb": data_mb},
            "report_s": _median(report_s),
            "size_mb": size_mb,
            "ready_s": _median(ready_s),
            "open_run_s": _median(open_s) if open_s else None,
            "targets": TARGETS,
            "met": {key: measured[key] < TARGETS[key] for key in TARGETS},
            "charts": [vars(c) for c in page.charts],
            "console_errors": page.console_errors,
            "network": page.network,
        }
        write_json(args.json, result)
        print(f"\nwrote {args.json}")
    finish(began)


if __name__ == "__main__":
    main()
