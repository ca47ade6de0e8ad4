"""Fit a small CNN with the monitors on CPU: one process, DDP or FSDP2 (gloo); a helper of the distributed tests.

Run as a script (``python tests/callbacks/distributed_fit.py --strategy ddp --devices 2 --batch-size 16 --out
DIR``): Lightning re-launches this file for rank 1. Tests also call :func:`fit` in-process for a single-process
reference.

The data is fixed and unshuffled, so ``--devices 2 --batch-size 16`` and ``--devices 1 --batch-size 32`` train on
the same global batches: rank r takes samples r, r + 2, ..., and the two halves of a global batch average to the
single process's gradient. FSDP2 is the user's pattern from Lightning's docs: ``fully_shard`` each block, then the
containers, in ``configure_model``, with ``ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)``.

Rank 0 logs to ``DIR/csv/metrics.csv`` (and with ``--wandb`` to an offline W&B run in ``DIR``, as ``gradwatch
fit`` does); every rank writes what its monitors saw to ``DIR/rank<r>.json``: measured steps, layers, gradient
norms, and the collectives each monitor's hook issued at each step, counted by a dispatch mode that sees every
``c10d`` op (independently of gradwatch's code).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).parents[1]))  # run as a script too: the tests' shared helpers

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from typing_extensions import override

from collectives import Collectives
from gradwatch import CNN
from gradwatch.callbacks import ActivationMonitor, GradientMonitor

torch.set_num_threads(1)

#: The layer NaNs are put into.
NAN_LAYER = "backbone.stem.conv"


class CountedGradientMonitor(GradientMonitor):
    """GradientMonitor recording the collectives its optimizer-step hook issues, per step."""

    collectives: dict[int, list[str]]

    @override
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        with Collectives() as counter:
            super().on_before_optimizer_step(trainer, pl_module, optimizer)
        self.collectives[trainer.global_step] = counter.ops


class CountedActivationMonitor(ActivationMonitor):
    """ActivationMonitor recording the collectives its batch-end hook issues, per step."""

    collectives: dict[int, list[str]]

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with Collectives() as counter:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.collectives[trainer.global_step] = counter.ops


class InjectNaN(pl.Callback):
    """Put a NaN into the stem's gradient at ``step`` on the processes in ``ranks``, after gradients are synced.

    Under FSDP2 the gradient is this process's shard, so the NaN is in one piece of the full gradient.
    """

    def __init__(self, step: int, ranks: set[int]) -> None:
        self.step, self.ranks = step, ranks

    @override
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step == self.step and trainer.global_rank in self.ranks:
            grad = pl_module.get_submodule(NAN_LAYER).weight.grad
            local = grad.to_local() if hasattr(grad, "to_local") else grad
            local.view(-1)[0] = float("nan")


class FixedImages(pl.LightningDataModule):
    """The same 8 global batches of 32 random images and labels in every run, served in order."""

    dims = (1, 8, 8)
    num_classes = 10

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(1)
        images = torch.randn(8 * 32, *self.dims, generator=generator)
        labels = torch.randint(0, self.num_classes, (8 * 32,), generator=generator)
        self.dataset, self.batch_size = TensorDataset(images, labels), batch_size

    @override
    def train_dataloader(self) -> DataLoader:
        # Lightning's own DistributedSampler shuffles training data whatever the loader says (Lightning 2.6), so the
        # shards are made here (with `use_distributed_sampler=False`), once the process group is up.
        sampler = DistributedSampler(self.dataset, shuffle=False) if dist.is_initialized() else None
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=sampler)


class ShardedCNN(CNN):
    """gradwatch's CNN, sharded with FSDP2 when the strategy gives it a device mesh (a user's subclass)."""

    @override
    def configure_model(self) -> None:
        super().configure_model()
        if self.device_mesh is None:
            return
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for block in self.backbone.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(self.backbone, mesh=mesh)
        fully_shard(self.head, mesh=mesh)


def strategy_for(name: str) -> Any:
    if name == "fsdp2":
        from lightning.pytorch.strategies import ModelParallelStrategy

        return ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    return name


def fit(
    out: Path,
    *,
    strategy: str = "auto",
    devices: int = 1,
    batch_size: int = 32,
    steps: int = 4,
    epochs: int = 1,
    every: int = 1,
    flow: int | None = None,
    on_nonfinite: str = "warn",
    guard: bool = False,
    nan_step: int | None = None,
    nan_ranks: tuple[int, ...] = (0, 1),
    wandb: bool = False,
) -> dict[str, Any]:
    """Train ``steps`` steps (at most 8), or ``epochs`` whole epochs of 8 steps; what this process's monitors saw
    (also in ``rank<r>.json``)."""
    pl.seed_everything(0, verbose=False)
    model = ShardedCNN(
        depth=2,
        width=4,
        activation="tanh",  # saturation fractions to compare, next to the ReLU-free stem
        norm="layer",  # per-sample statistics: batch norm would see different batches on each process
        num_classes=10,
        in_channels=1,
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
    )
    monitor = CountedGradientMonitor(
        log_every_n_steps=every, flow_every_n_epochs=flow, on_nonfinite=on_nonfinite, nonfinite_guard=guard
    )
    activations = CountedActivationMonitor(every_n_steps=every)
    monitor.collectives, activations.collectives = {}, {}
    callbacks: list[pl.Callback] = [monitor, activations]
    if nan_step is not None:
        callbacks.append(InjectNaN(nan_step, set(nan_ranks)))
    loggers: list[Any] = [CSVLogger(out, name="csv", version="")]
    if wandb:
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(save_dir=out, id="distributed", offline=True))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy_for(strategy) if devices > 1 else "auto",
        max_steps=steps if epochs == 1 else -1,
        max_epochs=epochs,
        logger=loggers,
        log_every_n_steps=every,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(model, datamodule=FixedImages(batch_size))

    (group,) = monitor.tracker.groups
    record = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "global_step": trainer.global_step,
        "measured_steps": group.steps,
        "layers": list(group.names),
        "history": group.history,
        "grad_norm_total": float(trainer.callback_metrics["grad/norm_total"]),
        "should_stop": trainer.should_stop,
        "stopped_reason": monitor.stopped_reason,
        "gradient_collectives": monitor.collectives,
        "activation_collectives": activations.collectives,
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record, indent=1))
    if wandb and trainer.is_global_zero:
        import wandb as wandb_module

        wandb_module.finish()
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--strategy", choices=["ddp", "fsdp2"], default="ddp")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="at most 8 an epoch")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--flow", type=int, default=None, help="flow_every_n_epochs")
    parser.add_argument("--on-nonfinite", default="warn")
    parser.add_argument("--guard", action="store_true")
    parser.add_argument("--nan-step", type=int, default=None, help="put a NaN into a gradient at this step")
    parser.add_argument("--nan-ranks", default="0,1", help="comma-separated ranks that get the NaN")
    parser.add_argument("--wandb", action="store_true", help="also log to an offline W&B run")
    args = parser.parse_args()
    fit(
        args.out,
        strategy=args.strategy,
        devices=args.devices,
        batch_size=args.batch_size,
        steps=args.steps,
        epochs=args.epochs,
        every=args.every,
        flow=args.flow,
        on_nonfinite=args.on_nonfinite,
        guard=args.guard,
        nan_step=args.nan_step,
        nan_ranks=tuple(int(rank) for rank in args.nan_ranks.split(",")),
        wandb=args.wandb,
    )


if __name__ == "__main__":
    main()
