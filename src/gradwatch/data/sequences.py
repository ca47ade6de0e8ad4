"""Sequence DataModules: tasks whose answer depends on inputs far back in time."""

from __future__ import annotations

from typing import Literal

import torch
from torch.utils.data import TensorDataset

from gradwatch.data.base import SplitDataModule
from gradwatch.errors import ConfigError
from gradwatch.models.base import check_positive


class AddingProblemDataModule(SplitDataModule):
    """Hochreiter & Schmidhuber's adding problem, generated from a seed (no files).

    Each step carries ``(value, marker)``: values are uniform in ``[0, 1]``, and two markers, one in each half of
    the sequence, flag the values whose sum is the target. Predicting the mean (1.0) scores an MSE of about
    0.167; beating it means gradients reached back ``seq_len / 2`` steps or more.

    Args:
        seq_len: Steps per sequence, the distance gradients must travel.
        num_train: Training sequences.
        num_val: Validation sequences.
        num_test: Test sequences.
        batch_size: Sequences per batch.
        seed: Seeds the data (each split its own stream) and the shuffling.
        num_workers: DataLoader worker processes.

    Example::

        >>> dm = AddingProblemDataModule(seq_len=20)
        >>> dm.setup("fit")
        >>> x, y = dm.train_set[0]
        >>> x.shape, y.shape
        (torch.Size([20, 2]), torch.Size([1]))

    """

    input_size = 2
    num_outputs = 1
    task: Literal["regression"] = "regression"

    def __init__(
        self,
        seq_len: int = 50,
        num_train: int = 4096,
        num_val: int = 512,
        num_test: int = 512,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_positive(name, num_train=num_train, num_val=num_val, num_test=num_test)
        self.check_loader_args(name, batch_size, num_workers)
        if seq_len < 2:
            raise ConfigError(f"{name}: seq_len must be >= 2 (one marker per half), got {seq_len}", param="seq_len")
        self.save_hyperparameters()

    @staticmethod
    def generate(n: int, seq_len: int, generator: torch.Generator) -> TensorDataset:
        """``n`` sequences ``(seq_len, 2)`` with targets ``(1,)``."""
        values = torch.rand(n, seq_len, generator=generator)
        half = seq_len // 2
        first = torch.randint(0, half, (n,), generator=generator)
        second = torch.randint(half, seq_len, (n,), generator=generator)
        markers = torch.zeros(n, seq_len)
        rows = torch.arange(n)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        targets = (values * markers).sum(dim=1, keepdim=True)
        return TensorDataset(torch.stack([values, markers], dim=-1), targets)

    def make_splits(self) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
        """The three splits, each from its own seeded stream: changing one size leaves the others alone."""
        hp = self.hparams
        sizes = (hp.num_train, hp.num_val, hp.num_test)
        return tuple(  # type: ignore[return-value]
            self.generate(n, hp.seq_len, torch.Generator().manual_seed(hp.seed * len(sizes) + i))
            for i, n in enumerate(sizes)
        )
