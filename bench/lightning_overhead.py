"""How much does training ``gradwatch.CNN`` under ``Trainer.fit`` cost versus a hand-written PyTorch loop?

The same model, data and optimizer trained both ways, interleaved repetitions, whole runs and steady-state steps.
Target: a ratio of medians (Lightning / hand loop) of at most 1.10 on CPU. ``.venv/bin/python
bench/lightning_overhead.py`` (a minute or two on 2 cores); ``--quick`` is a smoke run; ``--json PATH``. What it
measures and how to read it: ``bench/README.md``.
"""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import argparse
import gc
import logging
import platform
import statistics
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import lightning
import lightning.pytorch as pl
import torch
from common import LOG_EVERY_N_STEPS, SEED, add_quick_and_json, finish, resolve_defaults, write_json
from torch.utils.data import DataLoader
from typing_extensions import override

import gradwatch

TARGET_RATIO = 1.10
UNTIMED_STEPS = 10


@dataclass
class Timing:
    """One run of one side."""

    whole_s: float
    steady_s: float
    steady_steps: int
    final_loss: float

    @property
    def step_ms(self) -> float:
        return 1000.0 * self.steady_s / self.steady_steps


class SteadyStateTimer(pl.Callback):
    """Records the time at the start of optimizer step ``warmup`` and at the end of training."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.end: float | None = None

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # global_step counts optimizer steps taken, so it equals `warmup` as step `warmup` begins.
        if self.start is None and trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.end = time.perf_counter()


def build_model(args: argparse.Namespace) -> gradwatch.CNN:
    torch.manual_seed(SEED)
    return gradwatch.CNN(depth=args.depth, width=args.width, num_classes=10, in_channels=1)


def run_hand(model: gradwatch.CNN, loader: DataLoader, steps: int, warmup: int) -> Timing:
    gc.collect()
    start = time.perf_counter()
    opt = model.configure_optimizers()
    assert isinstance(opt, torch.optim.Optimizer), "a scheduler would make the two sides differ"
    model.train()
    step, steady_start, final_loss = 0, start, float("nan")
    while step < steps:  # epochs: re-iterate the loader, as the Trainer does
        for x, y in loader:
            if step == warmup:
                steady_start = time.perf_counter()
            logits = model(x)
            loss = model.compute_loss(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % LOG_EVERY_N_STEPS == 0 or step == steps:  # sync only where Lightning does
                final_loss = loss.item()
            if step == steps:
                break
    end = time.perf_counter()
    return Timing(end - start, end - steady_start, steps - warmup, final_loss)


def run_lightning(model: gradwatch.CNN, loader: DataLoader, steps: int, warmup: int) -> Timing:
    timer = SteadyStateTimer(warmup)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=LOG_EVERY_N_STEPS,
        callbacks=[timer],
    )
    gc.collect()
    start = time.perf_counter()
    trainer.fit(model, train_dataloaders=loader)
    end = time.perf_counter()
    if trainer.global_step != steps or timer.start is None or timer.end is None:
        raise RuntimeError(f"Lightning ran {trainer.global_step} of {steps} steps; the timings would be meaningless")
    final_loss = float(trainer.callback_metrics["train/loss"])
    return Timing(end - start, timer.end - timer.start, steps - warmup, final_loss)


def max_weight_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Largest absolute difference over the floating-point entries of two state dicts (BatchNorm stats too)."""
    sb = b.state_dict()
    diffs = [(t - sb[k]).abs().max().item() for k, t in a.state_dict().items() if t.is_floating_point()]
    return max(diffs, default=0.0)


def summarize(values: Iterable[float]) -> dict[str, float]:
    values = list(values)
    return {"median": statistics.median(values), "min": min(values)}


def report(args: argparse.Namespace, runs: dict[str, list[Timing]], weight_diff: float) -> dict[str, Any]:
    rows = {"whole run (s)": "whole_s", "per step (ms)": "step_ms"}
    summary: dict[str, Any] = {}
    for attr in rows.values():
        sides = {side: summarize(getattr(t, attr) for t in timings) for side, timings in runs.items()}
        summary[attr] = {**sides, "ratio_of_medians": sides["lightning"]["median"] / sides["hand"]["median"]}

    print(
        f"gradwatch.CNN(depth={args.depth}, width={args.width}) on digits {args.image_size}×{args.image_size},"
        f" batch {args.batch_size}: {args.steps} steps × {args.repeats} repeats"
    )
    print(
        f"torch {torch.__version__} (threads: {torch.get_num_threads()}), lightning {lightning.__version__},"
        f" python {platform.python_version()}; steady state = steps {args.warmup}..{args.steps - 1}"
    )
    print()
    print(f"{'':16}{'hand loop':>20}{'Lightning':>20}{'ratio of':>12}")
    print(f"{'':16}{'median':>10}{'min':>10}{'median':>10}{'min':>10}{'medians':>12}")
    for label, attr in rows.items():
        s = summary[attr]
        cells = [s["hand"]["median"], s["hand"]["min"], s["lightning"]["median"], s["lightning"]["min"]]
        print(f"{label:16}" + "".join(f"{c:10.3f}" for c in cells) + f"{s['ratio_of_medians']:12.3f}")
    print()
    verdicts = ", ".join(
        f"{label.split(' (')[0]} {'yes' if summary[attr]['ratio_of_medians'] <= TARGET_RATIO else 'NO'}"
        for label, attr in rows.items()
    )
    print(f"ratio of medians <= {TARGET_RATIO:.2f}: {verdicts}")
    print(f"same work check: max |weight difference| between the sides = {weight_diff:.3g}")
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default: 200; quick: 20)")
    parser.add_argument("--repeats", type=int, help="interleaved repetitions per side (default: 7; quick: 1)")
    parser.add_argument("--warmup", type=int, help="steps before the steady-state window (default: min(20, steps//2))")
    parser.add_argument("--depth", type=int, default=4, help="CNN depth (default: 4)")
    parser.add_argument("--width", type=int, default=16, help="CNN width (default: 16)")
    parser.add_argument("--image-size", type=int, default=16, help="side of the digits images (default: 16)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own choice)")
    add_quick_and_json(parser, "a smoke run of seconds; numbers meaningless")
    args = parser.parse_args(argv)
    resolve_defaults(args, {"steps": (200, 20), "repeats": (7, 1)})
    if args.steps < 2 or args.repeats < 1:
        parser.error("--steps must be >= 2 and --repeats >= 1")
    if args.warmup is None:
        args.warmup = min(20, args.steps // 2)
    if not 0 <= args.warmup < args.steps:
        parser.error(f"--warmup must be in [0, {args.steps}), got {args.warmup}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    began = time.perf_counter()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    # Lightning's advice for real trainings (workers, a val loader we switched off on purpose) is noise here.
    for message in ("does not have many workers", "have no `val_dataloader`", r"isinstance\(treespec, LeafSpec\)"):
        warnings.filterwarnings("ignore", message=f".*{message}")

    dm = gradwatch.DigitsDataModule(image_size=args.image_size, batch_size=args.batch_size, seed=SEED)
    dm.setup()
    sides = {"hand": run_hand, "lightning": run_lightning}

    for run in sides.values():  # untimed: first-use costs are start-up, not per-fit cost
        run(build_model(args), dm.train_dataloader(), min(UNTIMED_STEPS, args.steps), 0)

    runs: dict[str, list[Timing]] = {side: [] for side in sides}
    weight_diff = 0.0
    for _ in range(args.repeats):
        models = {}
        for side, run in sides.items():
            models[side] = build_model(args)
            runs[side].append(run(models[side], dm.train_dataloader(), args.steps, args.warmup))
        weight_diff = max(weight_diff, max_weight_diff(models["hand"], models["lightning"]))

    summary = report(args, runs, weight_diff)
    write_json(
        args.json,
        {
            "config": vars(args),
            "versions": {"torch": torch.__version__, "lightning": lightning.__version__},
            "threads": torch.get_num_threads(),
            "runs": {side: [{**asdict(t), "step_ms": t.step_ms} for t in timings] for side, timings in runs.items()},
            "summary": summary,
            "max_weight_diff": weight_diff,
        },
    )
    finish(began)


if __name__ == "__main__":
    main()
