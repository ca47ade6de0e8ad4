"""Shared training, validation and test steps of the supervised models (CNN, RNN)."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from gradwatch.data.sequences import Task
from gradwatch.models.base import GradwatchModule

Stage = Literal["train", "val", "test"]
STAGES: tuple[Stage, ...] = ("train", "val", "test")


class SupervisedModule(GradwatchModule):
    """A backbone, a head and a loss; logs ``<stage>/loss`` and, for classification, ``<stage>/acc``.

    Override points (the subclassing contract):

    - :meth:`build_backbone` returns a module mapping inputs to features, with a ``num_features`` attribute.
    - :meth:`build_head` maps those features to outputs.
    - :meth:`compute_loss` turns outputs and targets into the training loss.

    Classification outputs may carry a step dimension, ``(N, k, C)`` logits for ``(N, k)`` targets (a sequence
    answered at several steps): the loss and the accuracy then count each step's prediction as one sample.
    """

    task: Task = "classification"

    def __init__(
        self, optimizer: OptimizerCallable = torch.optim.Adam, lr_scheduler: LRSchedulerCallable | None = None
    ) -> None:
        super().__init__()
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler

    def build_backbone(self) -> nn.Module:
        """The feature extractor; it must expose ``num_features``."""
        raise NotImplementedError

    def build_head(self, num_features: int) -> nn.Module:
        """The output layer on ``num_features`` features."""
        raise NotImplementedError

    def init_networks(self) -> None:
        """Apply the model's ``init`` scheme; called right after the networks are built."""

    @property
    def num_outputs(self) -> int:
        """Classes (classification) or targets (regression) the head predicts."""
        raise NotImplementedError

    @override
    def build(self) -> None:
        self.backbone = self.build_backbone()
        self.head = self.build_head(self.backbone.num_features)
        self.init_networks()
        if self.task == "classification":
            # Keys get a suffix: a ModuleDict key "train" would shadow ``nn.Module.train``.
            self.accuracy = nn.ModuleDict(
                {f"{stage}_acc": MulticlassAccuracy(num_classes=self.num_outputs, average="micro") for stage in STAGES}
            )

    @staticmethod
    def flatten_steps(outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Classification outputs ``(N, k, C)`` and targets ``(N, k)`` as ``(N * k, C)`` and ``(N * k,)``.

        Outputs ``(N, C)`` pass through unchanged.
        """
        if outputs.dim() <= 2:
            return outputs, targets
        return outputs.flatten(0, -2), targets.flatten()

    def compute_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy for classification (averaged over steps too), mean squared error for regression."""
        if self.task == "classification":
            return F.cross_entropy(*self.flatten_steps(outputs, targets))
        return F.mse_loss(outputs, targets.view_as(outputs))

    def _step(self, batch: Any, stage: Stage) -> torch.Tensor:
        x, y = batch
        outputs = self(x)
        loss = self.compute_loss(outputs, y)
        self.log(f"{stage}/loss", loss, prog_bar=stage != "test", on_epoch=stage != "train")
        if self.task == "classification":
            self.accuracy[f"{stage}_acc"].update(*self.flatten_steps(outputs.detach(), y))
        return loss

    def _log_accuracy(self, stage: Stage) -> None:
        # Accuracy is accumulated per step and logged once per epoch. Logging the metric object itself every step
        # (or calling its forward) costs more than Lightning's whole training loop on small models: measured as most
        # of `Trainer.fit`'s overhead over a bare loop (bench/lightning_overhead.py).
        if self.task == "classification":
            accuracy = self.accuracy[f"{stage}_acc"]
            if accuracy.update_count:
                self.log(f"{stage}/acc", accuracy.compute(), prog_bar=stage == "val")
            accuracy.reset()

    @override
    def on_train_epoch_end(self) -> None:
        self._log_accuracy("train")

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_accuracy("val")

    @override
    def on_test_epoch_end(self) -> None:
        self._log_accuracy("test")

    @override
    def configure_optimizers(self) -> Any:
        """The optimizer, with the scheduler when one is configured, in Lightning's return format."""
        opt = self.optimizer(self.parameters())
        if self.lr_scheduler is None:
            return opt
        scheduler = self.lr_scheduler(opt)
        # Plateau schedulers step on a metric; the validation loss is the one every supervised model logs.
        monitor = {"monitor": "val/loss"} if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) else {}
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, **monitor}}

    @override
    def logged_metrics(self) -> list[str]:
        """``<stage>/loss`` and, for classification, ``<stage>/acc`` for the train, val and test stages."""
        metrics = ["loss", "acc"] if self.task == "classification" else ["loss"]
        return [f"{stage}/{metric}" for stage in STAGES for metric in metrics]

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    @override
    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    @override
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """The model's outputs (logits or values) for a batch ``(inputs, targets)`` or bare ``inputs``."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x)
