"""What does GradientMonitor cost under FSDP2 on two CPU processes (gloo), and how many collectives does it issue?

The CNN of ``gradient_overhead.py`` sharded with ``fully_shard`` under ``ModelParallelStrategy``, with and without
``GradientMonitor(log_every_n_steps=50)``, interleaved rounds. Targets: a step-time ratio of at most 1.05, and exactly
one collective per measurement, none on other steps. ``.venv/bin/python bench/fsdp_overhead.py`` (a few minutes on 2
cores); ``--quick`` is a smoke run; ``--json PATH``. What it measures and how to read it: ``bench/README.md``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.multiprocessing as mp
from common import (
    LOG_EVERY_N_STEPS,
    add_quick_and_json,
    finish,
    make_loader,
    periodic_extra_ms,
    resolve_defaults,
    step_timer,
    write_json,
)
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.fsdp import fully_shard
from torch.utils._python_dispatch import TorchDispatchMode
from typing_extensions import override

import gradwatch
from gradwatch.callbacks import GradientMonitor

TARGET = 1.05
VARIANTS = ("none", "gm50")


class ShardedCNN(gradwatch.CNN):
    """gradwatch's CNN, each block and container sharded with FSDP2 on the strategy's data-parallel mesh."""

    @override
    def configure_model(self) -> None:
        super().configure_model()
        mesh = self.device_mesh["data_parallel"]
        for block in self.backbone.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(self.backbone, mesh=mesh)
        fully_shard(self.head, mesh=mesh)


class Collectives(TorchDispatchMode):
    """Counts the ``c10d`` collectives dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.count += "c10d" in str(func)
        return func(*args, **(kwargs or {}))


class CountedMonitor(GradientMonitor):
    """GradientMonitor counting the collectives of its optimizer-step hook, per step."""

    def __init__(self) -> None:
        super().__init__(log_every_n_steps=LOG_EVERY_N_STEPS, flow_every_n_epochs=None)
        self.collectives: dict[int, int] = {}

    @override
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        with Collectives() as counter:
            super().on_before_optimizer_step(trainer, pl_module, optimizer)
        self.collectives[trainer.global_step] = counter.count


def fit(args: argparse.Namespace, variant: str, steps: int) -> tuple[np.ndarray, dict[int, int]]:
    """Step times (s) of one fit, and the monitor's collectives per step."""
    timer = step_timer(cuda=False)
    monitor = CountedMonitor() if variant == "gm50" else None
    callbacks = [timer] + ([monitor] if monitor else [])
    torch.manual_seed(0)
    model = ShardedCNN(depth=args.depth, width=args.width, num_classes=10, in_channels=3)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=LOG_EVERY_N_STEPS,
        callbacks=callbacks,
    )
    trainer.fit(model, train_dataloaders=make_loader(args, steps))
    return np.diff(timer.starts), (monitor.collectives if monitor else {})


def worker(rank: int, args: argparse.Namespace, port: int, out: Path) -> None:
    """One of the two processes: every fit of every round, in the same order as the other process."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank)
    )
    os.environ["NODE_RANK"] = "0"
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    steps = args.warmup + args.steps + 1
    fit(args, "none", 6)  # untimed: first-use costs
    times: dict[str, list[list[float]]] = {v: [] for v in VARIANTS}
    collectives: dict[int, int] = {}
    for r in range(args.repeats):
        for variant in VARIANTS[r % 2 :] + VARIANTS[: r % 2]:
            run, counted = fit(args, variant, steps)
            times[variant].append(run[args.warmup : args.warmup + args.steps].tolist())
            collectives = counted or collectives
    if rank == 0:
        (out / "times.json").write_text(json.dumps({"times": times, "collectives": collectives}))


def report(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    runs = {v: np.array(result["times"][v]) for v in VARIANTS}
    per_step = {v: 1000.0 * float(np.median(runs[v], axis=0).mean()) for v in VARIANTS}
    ratio = per_step["gm50"] / per_step["none"]
    extra = periodic_extra_ms(runs["gm50"], args.warmup) - periodic_extra_ms(runs["none"], args.warmup)
    base = 1000.0 * float(np.median(np.median(runs["none"], axis=1)))
    within = 1.0 + extra / (LOG_EVERY_N_STEPS * base)
    collectives = {int(k): v for k, v in result["collectives"].items()}
    measured = [s for s in collectives if s % LOG_EVERY_N_STEPS == 0]
    one_each = all(collectives[s] == 1 for s in measured) and all(
        n == 0 for s, n in collectives.items() if s not in measured
    )
    print(f"FSDP2, 2 CPU processes (gloo), {args.steps} timed steps × {args.repeats} rounds; torch {torch.__version__}")
    print(f"{'no monitor':32}{per_step['none']:10.2f} ms/step")
    print(f"{'GradientMonitor every 50 steps':32}{per_step['gm50']:10.2f} ms/step  ratio {ratio:.4f}")
    print(f"within runs (steps 49 and 0 mod 50): ratio {within:.4f}")
    print(
        f"{'PASS' if max(ratio, within) <= TARGET else 'FAIL'}: every 50 steps <= {TARGET}"
        " (per-step medians and within runs)"
    )
    print(
        f"{'PASS' if one_each else 'FAIL'}: collectives per measurement {[collectives[s] for s in measured]},"
        f" on other steps {sum(n for s, n in collectives.items() if s not in measured)}"
    )
    return {"per_step_ms": per_step, "ratio": ratio, "within_run_ratio": within, "collectives": collectives}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="timed steps per fit, a multiple of 50 (default: 200; quick: 50)")
    parser.add_argument("--repeats", type=int, help="interleaved rounds (default: 3; quick: 1)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps at the start of each fit")
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32, help="per process (default: 32)")
    add_quick_and_json(parser)
    args = parser.parse_args(argv)
    resolve_defaults(args, {"steps": (200, 50), "repeats": (3, 1)})
    if args.steps % LOG_EVERY_N_STEPS:
        parser.error(f"--steps must be a multiple of {LOG_EVERY_N_STEPS}")
    began = time.perf_counter()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="gradwatch-fsdp-bench-") as tmp:
        mp.start_processes(worker, args=(args, port, Path(tmp)), nprocs=2, start_method="spawn")
        result = json.loads((Path(tmp) / "times.json").read_text())
    summary = report(result, args)
    write_json(args.json, {"config": vars(args), **result, **summary})
    finish(began)


if __name__ == "__main__":
    main()
