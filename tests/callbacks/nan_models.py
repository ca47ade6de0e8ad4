"""Small LightningModules whose first non-finite value is planted at a known step, in a known module.

A helper of ``test_nan_origin.py``, importable by path (``nan_models.Planted``) in the fresh process that
``gradwatch replay`` starts, and runnable as a script for the 2-process DDP test (``python
tests/callbacks/nan_models.py --out DIR``: Lightning re-launches this file for rank 1).

- ``forward``: ``LogOf`` takes the log of the raw input; the batch of :data:`NAN_STEP` holds :data:`NEGATIVES`
  negative values (on rank :data:`NAN_RANK` only under DDP), so its output holds that many NaNs.
- ``backward``: ``Spike`` is an identity whose custom backward returns Inf for the samples the batch marks (one
  sample, :data:`WIDTH` elements, at :data:`NAN_STEP`); the forward is finite throughout.
- ``batch``: the batch of :data:`NAN_STEP` holds one NaN input.

Each model has dropout and batch norm, so a replay that perturbed the RNG or the running statistics would show.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

#: The step whose batch carries the planted value; the batch size; the hidden width; negative inputs planted.
NAN_STEP, BATCH, FEATURES, WIDTH, NEGATIVES = 3, 16, 4, 8, 3
#: Under DDP, the process whose batch carries it.
NAN_RANK = 1


class LogOf(nn.Module):
    """``log(x)``: NaN where ``x`` is negative."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


class InfGrad(torch.autograd.Function):
    """The identity forward; backward: Inf for the marked samples' gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, marked: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(marked)
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (marked,) = ctx.saved_tensors
        grad = grad.clone()
        grad[marked] = float("inf")
        return grad, None


class Spike(nn.Module):
    """:class:`InfGrad` as a module."""

    def forward(self, x: torch.Tensor, marked: torch.Tensor) -> torch.Tensor:
        return InfGrad.apply(x, marked)


class Planted(pl.LightningModule):
    """An MLP on :data:`FEATURES` inputs with a planted non-finite value (see the module's docstring).

    Args:
        kind: ``forward``, ``backward`` or ``batch``.
        manual: Manual optimization with two optimizers: the first trains ``side`` on a finite loss, the second the
            rest on the loss that carries the planted value (so the replay must skip the first backward pass).
        lr: SGD's learning rate.
    """

    def __init__(self, kind: str = "forward", manual: bool = False, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = not manual
        self.log_of = LogOf()
        self.body = nn.Sequential(nn.Linear(FEATURES, WIDTH), nn.BatchNorm1d(WIDTH), nn.Tanh(), nn.Dropout(0.2))
        self.spike = Spike()
        self.head = nn.Linear(WIDTH, 1)
        self.side = nn.Linear(FEATURES, 1) if manual else None  # DDP refuses parameters the loss does not use

    def forward(self, x: torch.Tensor, marked: torch.Tensor) -> torch.Tensor:
        h = self.body(self.log_of(x) if self.hparams.kind == "forward" else x)
        return self.head(self.spike(h, marked))

    def loss(self, batch: Any) -> torch.Tensor:
        x, y, marked = batch
        loss = F.mse_loss(self(x, marked).squeeze(-1), y)
        self.log("train/loss", loss)
        return loss

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        if self.automatic_optimization:
            return self.loss(batch)
        side_opt, main_opt = self.optimizers()
        with self.toggled_optimizer(side_opt):
            side = F.mse_loss(self.side(batch[0].abs()).squeeze(-1), batch[1])
            side_opt.zero_grad()
            self.manual_backward(side)
            side_opt.step()
        with self.toggled_optimizer(main_opt):
            loss = self.loss(batch)
            main_opt.zero_grad()
            self.manual_backward(loss)
            main_opt.step()
        return None

    @override
    def configure_optimizers(self) -> Any:
        if self.side is None:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        main = [p for name, p in self.named_parameters() if not name.startswith("side.")]
        return [torch.optim.SGD(self.side.parameters(), lr=self.hparams.lr), torch.optim.SGD(main, lr=self.hparams.lr)]


def planted_data(kind: str, steps: int = 6, *, planted: bool = True, seed: int = 0) -> DataLoader:
    """``steps`` batches of positive inputs, unshuffled; the batch of :data:`NAN_STEP` carries the planted value."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(steps * BATCH, FEATURES, generator=generator) + 0.5
    y = torch.randn(steps * BATCH, generator=generator)
    marked = torch.zeros(steps * BATCH, dtype=torch.bool)
    first = NAN_STEP * BATCH
    if planted and kind == "forward":
        x.view(-1)[first * FEATURES + torch.tensor([1, 6, 17])] *= -1.0
    elif planted and kind == "backward":
        marked[first + 5] = True
    elif planted and kind == "batch":
        x[first + 2, 1] = float("nan")
    return DataLoader(TensorDataset(x, y, marked), batch_size=BATCH)


def main() -> None:
    """A 2-process DDP fit (gloo) whose batch of :data:`NAN_STEP` on rank :data:`NAN_RANK` carries the NaN."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--kind", default="forward")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from gradwatch.callbacks import GradientMonitor

    class PerRank(pl.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            rank = self.trainer.global_rank
            return planted_data(args.kind, planted=rank == NAN_RANK, seed=rank)

    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=5,
        logger=CSVLogger(args.out, name="csv", version=""),
        log_every_n_steps=50,
        callbacks=[GradientMonitor(nonfinite_guard=True, on_nonfinite="skip", flow_every_n_epochs=None)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(Planted(args.kind), datamodule=PerRank())


if __name__ == "__main__":
    main()
