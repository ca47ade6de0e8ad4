"""What every gradwatch DataModule shares: three splits made once, seeded shuffling, checked arguments."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from gradwatch.errors import ConfigError
from gradwatch.models.base import check_positive


class SplitDataModule(pl.LightningDataModule):
    """Train / val / test datasets made once by :meth:`make_splits`, served by seeded loaders.

    Subclasses call ``save_hyperparameters()`` with at least ``batch_size``, ``seed`` and ``num_workers``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    @staticmethod
    def check_loader_args(owner: str, batch_size: int, num_workers: int) -> None:
        """Raise :class:`ConfigError` for a batch size below 1 or a negative worker count."""
        check_positive(owner, batch_size=batch_size)
        if num_workers < 0:
            raise ConfigError(f"{owner}: num_workers must be >= 0, got {num_workers}", param="num_workers")

    def make_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        """The train, validation and test datasets."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Make the splits once; later calls (``validate`` after ``fit``) reuse them."""
        if self.train_set is None:
            self.train_set, self.val_set, self.test_set = self.make_splits()

    def _loader(self, dataset: Dataset | None, *, shuffle: bool) -> DataLoader:
        # An own generator makes the order depend on `seed` alone, not on how much global randomness ran before.
        generator = torch.Generator().manual_seed(self.hparams.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches, the same order for the same seed."""
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order."""
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in a fixed order."""
        return self._loader(self.test_set, shuffle=False)
