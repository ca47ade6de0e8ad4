"""Fit a small CNN with ``GradientMonitor`` on CPU, on one process or under DDP (gloo); a helper of the DDP tests.

Run as a script (``python tests/callbacks/ddp_fit.py --devices 2 --batch-size 16 --out DIR``): under DDP Lightning
re-launches this file for rank 1. Tests also call :func:`fit` in-process for a single-process reference.

The data is fixed and unshuffled, so ``--devices 2 --batch-size 16`` and ``--devices 1 --batch-size 32`` train on
the same global batches: rank r takes samples r, r + 2, ..., and the two halves of a global batch average to the
single process's gradient. Rank 0 logs to ``DIR/csv/metrics.csv``; every rank writes what its monitor measured to
``DIR/rank<r>.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from typing_extensions import override

from gradwatch import CNN
from gradwatch.callbacks import GradientMonitor

torch.set_num_threads(1)


class InjectNaN(pl.Callback):
    """Put a NaN into the stem's gradient at ``step`` on the processes in ``ranks``, after DDP averaged gradients."""

    def __init__(self, step: int, ranks: set[int]) -> None:
        self.step, self.ranks = step, ranks

    @override
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step == self.step and trainer.global_rank in self.ranks:
            pl_module.backbone.stem.conv.weight.grad.view(-1)[0] = float("nan")


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


def fit(
    out: Path,
    *,
    devices: int = 1,
    batch_size: int = 32,
    steps: int = 4,
    on_nonfinite: str = "warn",
    nan_step: int | None = None,
    nan_ranks: tuple[int, ...] = (0, 1),
) -> dict[str, Any]:
    """Train for at most ``steps`` (up to 8) steps; what this process's monitor measured (also in ``rank<r>.json``)."""
    pl.seed_everything(0, verbose=False)
    model = CNN(
        depth=2,
        width=4,
        norm="layer",  # per-sample statistics: batch norm would see different batches on each process
        num_classes=10,
        in_channels=1,
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
    )
    monitor = GradientMonitor(log_every_n_steps=1, flow_every_n_epochs=None, on_nonfinite=on_nonfinite)
    callbacks: list[pl.Callback] = [monitor]
    if nan_step is not None:
        callbacks.append(InjectNaN(nan_step, set(nan_ranks)))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_steps=steps,
        logger=CSVLogger(out, name="csv", version=""),
        log_every_n_steps=1,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(model, datamodule=FixedImages(batch_size))

    (group,) = monitor._groups.values()
    record = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "global_step": trainer.global_step,
        "measured_steps": group.steps,
        "layers": list(group.stats.names),
        "grad_norms": group.history,
        "grad_norm_total": float(trainer.callback_metrics["grad/norm_total"]),
        "should_stop": trainer.should_stop,
        "stopped_reason": monitor.stopped_reason,
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record, indent=1))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="at most 8")
    parser.add_argument("--on-nonfinite", default="warn")
    parser.add_argument("--nan-step", type=int, default=None, help="put a NaN into a gradient at this step")
    parser.add_argument("--nan-ranks", default="0,1", help="comma-separated ranks that get the NaN")
    args = parser.parse_args()
    fit(
        args.out,
        devices=args.devices,
        batch_size=args.batch_size,
        steps=args.steps,
        on_nonfinite=args.on_nonfinite,
        nan_step=args.nan_step,
        nan_ranks=tuple(int(rank) for rank in args.nan_ranks.split(",")),
    )


if __name__ == "__main__":
    main()
