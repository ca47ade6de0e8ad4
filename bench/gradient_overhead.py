"""What does watching gradients cost per training step: GradientMonitor versus wandb.watch and Lightning's grad_norm?

The same CNN trained under ``Trainer.fit`` with each monitor, interleaved rounds sharing one offline W&B run, then a
micro-benchmark of one logging step's statistics. Targets, on CPU: ``GradientMonitor(log_every_n_steps=50)`` at most
1.02× the step time without a monitor; every step, at least 10× less added time than ``wandb.watch(log_freq=1)``;
one logging step's statistics at most 4× one bare ``torch._foreach_norm`` pass. ``.venv/bin/python
bench/gradient_overhead.py`` (about 8 minutes on 2 cores); ``--quick`` is a smoke run; ``--json PATH``. What it
measures and how to read it: ``bench/README.md``.
"""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import argparse
import cProfile
import gc
import io
import logging
import platform
import pstats
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as pl
import numpy as np
import torch
import wandb
from common import (
    LOG_EVERY_N_STEPS,
    SEED,
    add_quick_and_json,
    finish,
    make_loader,
    periodic_extra_ms,
    resolve_defaults,
    step_timer,
    write_json,
)
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import grad_norm
from torch.utils.data import DataLoader
from typing_extensions import override

import gradwatch
from gradwatch.callbacks import GradientMonitor
from gradwatch.health import GradientStatistics, find_layers, forward_order

TARGET_SPARSE = 1.02
TARGET_ADDED = 10.0
TARGET_MICRO = 4.0
UNTIMED_STEPS = 6
PROFILE_STEPS = (1, 2, 48, 49, 50, 51)


# --- the variants -----------------------------------------------------------------------------------------------


class GradNormLogger(pl.Callback):
    """Lightning's documented recipe: ``grad_norm`` before each optimizer step, logged with ``log_dict``."""

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        pl_module.log_dict(grad_norm(pl_module, norm_type=2))


class WandbWatch(pl.Callback):
    """``wandb.watch(model, log="gradients", log_freq=...)`` once the model is on its device; unwatched at the end."""

    def __init__(self, log_freq: int) -> None:
        self.log_freq = log_freq

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        wandb.watch(pl_module, log="gradients", log_freq=self.log_freq)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        wandb.unwatch(pl_module)


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    callbacks: Callable[[], list[pl.Callback]]


def _monitor(every: int) -> Callable[[], list[pl.Callback]]:
    return lambda: [GradientMonitor(log_every_n_steps=every, flow_every_n_epochs=None)]


VARIANTS = (
    Variant("none", "no monitor", list),
    Variant("gm1", "GradientMonitor every step", _monitor(1)),
    Variant("gm50", "GradientMonitor every 50 steps", _monitor(50)),
    Variant("watch1", "wandb.watch log_freq=1", lambda: [WandbWatch(1)]),
    Variant("watch50", "wandb.watch log_freq=50", lambda: [WandbWatch(50)]),
    Variant("grad_norm", "Lightning grad_norm every step", lambda: [GradNormLogger()]),
)
BY_KEY = {v.key: v for v in VARIANTS}
SPARSE = ("gm50", "watch50")  # the variants whose work recurs every 50 steps


# --- training -----------------------------------------------------------------------------------------------------


@dataclass
class Bench:
    """What every fit shares: arguments, data, the W&B run."""

    args: argparse.Namespace
    loader: DataLoader
    run: Any
    tmp: Path
    final_loss: dict[str, list[float]] = field(default_factory=dict)


def build_model(args: argparse.Namespace) -> gradwatch.CNN:
    torch.manual_seed(SEED)
    return gradwatch.CNN(depth=args.depth, width=args.width, num_classes=10, in_channels=3)


def trainer_for(
    args: argparse.Namespace, steps: int, callbacks: list[pl.Callback], logger: Any, root: Path
) -> pl.Trainer:
    return pl.Trainer(
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        max_steps=steps,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=LOG_EVERY_N_STEPS,
        callbacks=callbacks,
        default_root_dir=root,
    )


def run_fit(bench: Bench, variant: Variant, warmup: int, steps: int) -> np.ndarray:
    """Step times (s) of steps ``warmup`` .. ``warmup + steps - 1`` of one fit."""
    args = bench.args
    timer = step_timer(args.device == "cuda")
    model = build_model(args)
    trainer = trainer_for(
        args, warmup + steps + 1, [timer, *variant.callbacks()], WandbLogger(experiment=bench.run), bench.tmp
    )
    gc.collect()
    trainer.fit(model, train_dataloaders=bench.loader)
    if trainer.global_step != warmup + steps + 1:
        raise RuntimeError(f"{variant.label}: ran {trainer.global_step} of {warmup + steps + 1} steps")
    bench.final_loss.setdefault(variant.key, []).append(float(trainer.callback_metrics["train/loss"]))
    return np.diff(timer.starts)[warmup : warmup + steps]


def part_training(bench: Bench) -> dict[str, np.ndarray]:
    args = bench.args
    for variant in VARIANTS:  # untimed: first-use costs (imports, kernel selection, the first watch)
        run_fit(bench, variant, 0, UNTIMED_STEPS)
    bench.final_loss.clear()
    times: dict[str, list[np.ndarray]] = {v.key: [] for v in VARIANTS}
    for r in range(args.repeats):
        order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
        for variant in order:
            times[variant.key].append(run_fit(bench, variant, args.warmup, args.steps))
        print(f"  round {r + 1}/{args.repeats} done", flush=True)
    return {key: np.stack(runs) for key, runs in times.items()}


def report_training(times: dict[str, np.ndarray], final_loss: dict[str, list[float]], warmup: int) -> dict[str, Any]:
    """Per variant: per-step medians (ms), run means (ms), ratios and added time against no monitor."""
    summary: dict[str, Any] = {}
    for key, runs in times.items():
        means = 1000.0 * runs.mean(axis=1)
        summary[key] = {
            "per_step_median_ms": 1000.0 * float(np.median(runs, axis=0).mean()),
            "run_mean_median_ms": float(np.median(means)),
            "run_mean_min_ms": float(means.min()),
            "run_mean_max_ms": float(means.max()),
            "run_step_median_ms": 1000.0 * float(np.median(np.median(runs, axis=1))),
            "periodic_extra_ms": periodic_extra_ms(runs, warmup),
        }
    base = summary["none"]
    for s in summary.values():
        s["ratio"] = s["per_step_median_ms"] / base["per_step_median_ms"]
        s["added_ms"] = s["per_step_median_ms"] - base["per_step_median_ms"]
        s["run_mean_ratio"] = s["run_mean_median_ms"] / base["run_mean_median_ms"]
        # Paired within each run, so free of run-to-run drift; the baseline's own extra at those steps (Lightning
        # logs train/loss at step 49 mod 50) is subtracted. Meaningful for the every-50-steps variants.
        extra = s["periodic_extra_ms"] - base["periodic_extra_ms"]
        s["within_run_ratio"] = 1.0 + extra / (LOG_EVERY_N_STEPS * base["run_step_median_ms"])

    print()
    print(f"{'':32}{'per-step medians':>30}{'run means':>33}{'steps 49+50 (mod 50)':>26}")
    print(
        f"{'':32}{'ms/step':>10}{'ratio':>8}{'added ms':>12}{'median [min-max] ms':>25}{'ratio':>8}"
        f"{'extra ms':>12}{'ratio':>14}"
    )
    for variant in VARIANTS:
        s = summary[variant.key]
        spread = f"{s['run_mean_median_ms']:.2f} [{s['run_mean_min_ms']:.2f}-{s['run_mean_max_ms']:.2f}]"
        sparse = f"{s['within_run_ratio']:14.4f}" if variant.key in SPARSE else f"{'':14}"
        print(
            f"{variant.label:32}{s['per_step_median_ms']:10.2f}{s['ratio']:8.3f}{s['added_ms']:+12.3f}"
            f"{spread:>25}{s['run_mean_ratio']:8.3f}{s['periodic_extra_ms']:+12.2f}{sparse}"
        )
    losses = [loss for runs in final_loss.values() for loss in runs]
    if losses:
        print(f"same work check: final train/loss over every run and variant spans {max(losses) - min(losses):.3g}")
    return summary


# --- micro-benchmark ----------------------------------------------------------------------------------------------


def part_micro(args: argparse.Namespace) -> dict[str, float]:
    device = torch.device(args.device)
    model = build_model(args).to(device).train()
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=g).to(device)
    loss = model.compute_loss(model(x), y)
    order = forward_order(loss)
    loss.backward()
    stats = GradientStatistics(find_layers(model, order=order))
    grads = [p.grad for p in stats.params if p.grad is not None]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    cuda = device.type == "cuda"
    scratch = torch.ones(args.flush_mb * 2**20 // 4, device=device)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def timed(fn: Callable[[], Any], cold: bool) -> float:
        if cold:
            scratch.mul_(1.0)  # stream the buffer through the cache, evicting what the last unit left there
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    keys = ("foreach_norm", "measure", "snapshot", "measure_update")
    samples: dict[str, list[float]] = {f"{key}{suffix}": [] for key in keys for suffix in ("", "_cold")}

    def floor(suffix: str) -> None:
        t = timed(lambda: torch.stack(torch._foreach_norm(grads)).cpu(), bool(suffix))
        samples[f"foreach_norm{suffix}"].append(t)

    def plain(suffix: str) -> None:
        samples[f"measure{suffix}"].append(timed(stats.measure, bool(suffix)))

    def with_update(suffix: str) -> None:
        samples[f"snapshot{suffix}"].append(timed(stats.snapshot, bool(suffix)))
        optimizer.step()
        samples[f"measure_update{suffix}"].append(timed(stats.measure, bool(suffix)))

    units = [(unit, suffix) for suffix in ("", "_cold") for unit in (floor, plain, with_update)]
    warm = max(10, args.micro_repeats // 20)
    for i in range(warm + args.micro_repeats):
        for unit, suffix in units[i % len(units) :] + units[: i % len(units)]:
            unit(suffix)
    med = {key: 1e6 * statistics.median(values[warm:]) for key, values in samples.items()}
    for suffix in ("", "_cold"):
        med[f"update_total{suffix}"] = med[f"snapshot{suffix}"] + med[f"measure_update{suffix}"]

    n_params = sum(g.numel() for g in grads)
    print()
    print(
        f"micro-benchmark: {len(grads)} gradients ({n_params:,} elements, {len(stats.layers)} layers),"
        f" median of {args.micro_repeats} interleaved repetitions; cold: after streaming {args.flush_mb} MB"
    )
    print(f"{'':52}{'hot µs':>10}{'× floor':>10}{'cold µs':>10}{'× floor':>10}")
    rows = (
        ("foreach_norm", "torch.stack(torch._foreach_norm(grads)).cpu()"),
        ("measure", "measure(), no update ratio"),
        ("snapshot", "snapshot() (the step before)"),
        ("measure_update", "measure() with update ratio"),
        ("update_total", "snapshot() + measure(): one default logging step"),
    )
    for key, label in rows:
        cells = "".join(
            f"{med[key + suffix]:10.1f}{med[key + suffix] / med['foreach_norm' + suffix]:10.2f}"
            for suffix in ("", "_cold")
        )
        print(f"{label:52}{cells}")
    return med


# --- profiles -----------------------------------------------------------------------------------------------------


class StepProfiler(pl.Callback):
    """One torch profiler per chosen step, from ``on_train_batch_start`` to ``on_train_batch_end``; counts events."""

    def __init__(self, steps: tuple[int, ...]) -> None:
        self.steps = set(steps)
        self.counts: dict[int, dict[str, int]] = {}
        self._prof: torch.profiler.profile | None = None
        self._step = -1

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step in self.steps:
            torch.cuda.synchronize()
            self._step = trainer.global_step
            activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            self._prof = torch.profiler.profile(activities=activities)
            self._prof.start()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._prof is None:
            return
        torch.cuda.synchronize()
        self._prof.stop()
        self.counts[self._step] = count_events(self._prof.events())
        self._prof = None


def count_events(events: Any) -> dict[str, int]:
    """CUDA kernels, device-to-host copies and host-side ``cuda*Synchronize`` calls among profiler events."""
    counts = {"kernels": 0, "dtoh": 0, "syncs": 0}
    for evt in events:
        name = evt.name
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            if name.startswith("Memcpy DtoH"):
                counts["dtoh"] += 1
            elif not name.startswith(("Memcpy", "Memset")) and getattr(evt, "activity_type", "kernel") in (
                "kernel",
                "",
                None,
            ):
                counts["kernels"] += 1
        elif name.startswith("cuda") and name.endswith("Synchronize"):
            counts["syncs"] += 1
    return counts


def profile_cuda(args: argparse.Namespace, loader: DataLoader, tmp: Path) -> dict[str, Any]:
    counts = {}
    for key in ("none", "gm50"):
        profiler = StepProfiler(PROFILE_STEPS)
        model = build_model(args)
        trainer = trainer_for(args, max(PROFILE_STEPS) + 1, [profiler, *BY_KEY[key].callbacks()], False, tmp)
        trainer.fit(model, train_dataloaders=loader)
        counts[key] = profiler.counts
    print()
    print("CUDA profile, GradientMonitor(log_every_n_steps=50) against no monitor (logger=False), per step:")
    print(f"{'step':>6}  {'role':10}{'kernels':>24}{'Memcpy DtoH':>24}{'cuda*Synchronize':>24}")
    print(f"{'':18}" + f"{'none':>8}{'GM':>8}{'added':>8}" * 3)
    checks = {"quiet steps add no kernel, copy or sync": True, "the logging step adds exactly one DtoH copy": True}
    for step in PROFILE_STEPS:
        none, gm = counts["none"][step], counts["gm50"][step]
        added = {k: gm[k] - none[k] for k in none}
        role = "logging" if step % 50 == 0 else "snapshot" if (step + 1) % 50 == 0 else "quiet"
        cells = "".join(f"{none[k]:8d}{gm[k]:8d}{added[k]:+8d}" for k in ("kernels", "dtoh", "syncs"))
        print(f"{step:6d}  {role:10}{cells}")
        if role == "quiet" and any(added.values()):
            checks["quiet steps add no kernel, copy or sync"] = False
        if role == "logging" and added["dtoh"] != 1:
            checks["the logging step adds exactly one DtoH copy"] = False
    print("(the snapshot step, one before the logging step, adds the parameter copy's kernels and no transfer)")
    if not any(c["kernels"] for c in counts["none"].values()):
        print("  WARNING: the profiler recorded no CUDA kernel (is CUPTI available?); the checks below mean nothing")
    for label, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}: {label}")
    return {"counts": counts, "checks": checks}


def profile_cpu(bench: Bench) -> None:
    pattern = (
        r"gradient_monitor|health/stats|health/tracker|gradwatch/loggers|wandb_torch|wandb_run|utilities/grads"
        r"|loggers/wandb"
    )
    for key in ("gm1", "watch1"):
        profiler = cProfile.Profile()
        profiler.enable()
        run_fit(bench, BY_KEY[key], 0, 100)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(pattern, 14)
        lines = [line for line in out.getvalue().splitlines() if line.strip()]
        start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
        print()
        print(f"cProfile, {BY_KEY[key].label}, 101 steps (cumulative time; the monitor's own code):")
        print("\n".join(lines[start:]))


# --- main ---------------------------------------------------------------------------------------------------------


def verdicts(summary: dict[str, Any], micro: dict[str, float]) -> dict[str, bool]:
    results: dict[str, bool] = {}
    print()
    for key, label in (("ratio", "per-step medians"), ("within_run_ratio", "within runs")):
        ratio = summary["gm50"][key]
        results[f"every_50_{key}"] = ratio <= TARGET_SPARSE
        print(
            f"{'PASS' if ratio <= TARGET_SPARSE else 'FAIL'}: GradientMonitor every 50 steps, {label}: step-time"
            f" ratio {ratio:.4f} (target <= {TARGET_SPARSE:.2f}; {100 * (ratio - 1):+.2f} %)"
        )
    gm, watch = summary["gm1"]["added_ms"], summary["watch1"]["added_ms"]
    if gm <= 0:
        results["every_step"] = watch > 0
        print(
            f"{'PASS' if results['every_step'] else 'FAIL'}: GradientMonitor every step added {gm:+.3f} ms/step (no"
            f" measurable time), wandb.watch log_freq=1 added {watch:+.3f} ms/step (target: 10× less added time)"
        )
    else:
        factor = watch / gm
        results["every_step"] = factor >= TARGET_ADDED
        print(
            f"{'PASS' if results['every_step'] else 'FAIL'}: GradientMonitor every step added {gm:.3f} ms/step,"
            f" wandb.watch log_freq=1 {watch:.3f} ms/step: {factor:.1f}× less (target >= {TARGET_ADDED:.0f}×)"
        )
    for key, label in (
        ("update_total", "with update ratio (default), snapshot included"),
        ("measure_update", "with update ratio, snapshot (the step before) excluded"),
        ("measure", "without update ratio"),
    ):
        factor = micro[f"{key}_cold"] / micro["foreach_norm_cold"]
        hot = micro[key] / micro["foreach_norm"]
        results[f"micro_{key}"] = factor <= TARGET_MICRO
        print(
            f"{'PASS' if factor <= TARGET_MICRO else 'FAIL'}: one logging step's statistics {label}:"
            f" {factor:.2f}× one foreach_norm pass, cold caches (target <= {TARGET_MICRO:.0f}×; hot: {hot:.2f}×)"
        )
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to train (default: cpu)")
    parser.add_argument("--steps", type=int, help="timed steps per fit, a multiple of 50 (default: 200; quick: 50)")
    parser.add_argument("--repeats", type=int, help="interleaved rounds of every variant (default: 5; quick: 2)")
    parser.add_argument("--warmup", type=int, help="untimed steps at the start of each fit (default: 10; quick: 5)")
    parser.add_argument("--micro-repeats", type=int, help="micro-benchmark repetitions (default: 2000; quick: 200)")
    parser.add_argument("--depth", type=int, default=8, help="CNN depth (default: 8)")
    parser.add_argument("--width", type=int, default=32, help="CNN width (default: 32)")
    parser.add_argument("--image-size", type=int, default=8, help="side of the random RGB images (default: 8)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default: 1)")
    parser.add_argument(
        "--flush-mb", type=int, default=16, help="buffer streamed before each cold micro timing (default: 16, 4× L2)"
    )
    parser.add_argument("--profile", action="store_true", help="also profile (kernel counts on CUDA, cProfile on CPU)")
    add_quick_and_json(parser, "a smoke run of about a minute; numbers meaningless")
    args = parser.parse_args(argv)
    resolve_defaults(args, {"steps": (200, 50), "repeats": (5, 2), "warmup": (10, 5), "micro_repeats": (2000, 200)})
    if args.steps < 1 or args.repeats < 1 or args.warmup < 0 or args.micro_repeats < 1:
        parser.error("--steps, --repeats and --micro-repeats must be >= 1, --warmup >= 0")
    if args.steps % LOG_EVERY_N_STEPS:
        parser.error(f"--steps must be a multiple of {LOG_EVERY_N_STEPS}, so every fit holds as many logging steps")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    began = time.perf_counter()
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("gradwatch").setLevel(logging.ERROR)  # a verdict on random data would be noise here
    for message in (
        "does not have many workers",
        "have no `val_dataloader`",
        "There is a wandb run already in progress",
        "smaller than the logging interval",
        r"isinstance\(treespec, LeafSpec\)",
    ):
        warnings.filterwarnings("ignore", message=f".*{message}")

    model = build_model(args)
    n_params = sum(p.numel() for p in model.parameters())
    mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    print(
        f"gradwatch.CNN(depth={args.depth}, width={args.width}, num_classes=10, in_channels=3): {n_params:,}"
        f" parameters = {mb:.2f} MB in {len(list(model.parameters()))} tensors; random {args.image_size}×"
        f"{args.image_size} RGB, batch {args.batch_size}"
    )
    print(
        f"{args.steps} timed steps (after {args.warmup}) × {args.repeats} interleaved rounds on {where};"
        f" torch {torch.__version__}, lightning {lightning.__version__}, wandb {wandb.__version__},"
        f" python {platform.python_version()}"
    )

    with tempfile.TemporaryDirectory(prefix="gradwatch-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        run = wandb.init(
            mode="offline",
            dir=tmp,
            project="gradwatch-bench",
            settings=wandb.Settings(x_disable_stats=True, console="off", silent=True),
        )
        # The x-axis WandbLogger defines on runs it creates (here the run is handed to it).
        run.define_metric("trainer/global_step")
        run.define_metric("*", step_metric="trainer/global_step", step_sync=True)
        loader = make_loader(args, args.warmup + args.steps + 1)
        bench = Bench(args, loader, run, tmp)
        try:
            times = part_training(bench)
            summary = report_training(times, bench.final_loss, args.warmup)
            micro = part_micro(args)
            results = verdicts(summary, micro)
            profile = None
            if args.profile and args.device == "cuda":
                profile = profile_cuda(args, loader, tmp)
            elif args.profile:
                profile_cpu(bench)
        finally:
            wandb.finish()

    write_json(
        args.json,
        {
            "config": vars(args),
            "versions": {"torch": torch.__version__, "lightning": lightning.__version__, "wandb": wandb.__version__},
            "parameters_mb": mb,
            "step_times_ms": {key: (1000.0 * runs).tolist() for key, runs in times.items()},
            "summary": summary,
            "micro_us": micro,
            "targets": results,
            "profile": profile,
        },
    )
    finish(began)


if __name__ == "__main__":
    main()
