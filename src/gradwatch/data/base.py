"""What every gradwatch DataModule shares: splits made once, epoch-seeded shuffling, checked loader arguments."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from gradwatch.errors import ConfigError, check_positive


def _is_fraction(split: int | float) -> bool:
    # 0.15 is a share of the data; 200 and 200.0 (jsonargparse may hand either) are counts.
    return isinstance(split, float) and not split.is_integer()


def check_held_out(owner: str, **splits: int | float | None) -> None:
    """Raise :class:`ConfigError` early for held-out splits no dataset size can satisfy (``None`` is skipped).

    Counts are checked against the data at :meth:`~SplitDataModule.setup`, by :func:`resolve_split`.
    """
    fractions = {}
    for param, split in splits.items():
        if split is None:
            continue
        if split <= 0 or (_is_fraction(split) and split >= 1.0):
            raise ConfigError(f"{owner}: {param} must be a fraction in (0, 1) or a count, got {split}", param=param)
        if _is_fraction(split):
            fractions[param] = split
    if sum(fractions.values()) >= 1.0:
        raise ConfigError(f"{owner}: {' + '.join(fractions)} = {sum(fractions.values())} leaves nothing to train on")


def resolve_split(owner: str, param: str, split: int | float, total: int) -> int:
    """The number of samples ``split`` asks for out of ``total``: a fraction in ``(0, 1)`` or a count ``>= 1``.

    Raises:
        ConfigError: the fraction is outside ``(0, 1)``, or the count is not below ``total``.
    """
    check_held_out(owner, **{param: split})
    if _is_fraction(split):
        return round(total * split)
    if split >= total:
        raise ConfigError(
            f"{owner}: {param}={split} samples must be between 1 and {total - 1} ({total} available)", param=param
        )
    return int(split)


def split_indices(n: int, sizes: tuple[int, ...], seed: int) -> list[torch.Tensor]:
    """Disjoint index sets of the given sizes, then the rest; the same for the same ``n``, sizes and seed."""
    if sum(sizes) >= n:
        raise ConfigError(f"held-out splits of {' + '.join(map(str, sizes))} samples leave none of {n} to train on")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return list(order.split([*sizes, n - sum(sizes)]))


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed for one ``(seed, epoch)`` pair (negative seeds too: numpy takes only naturals)."""
    return int(np.random.SeedSequence([seed % 2**64, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


class EpochSampler(Sampler):
    """Shuffles anew each epoch from ``(seed, epoch)`` alone, optionally handing each index its own sample seed.

    The order and the seeds are drawn in the main process, so augmentations that seed from them come out the same
    with 0, 1 or many workers, persistent or not, and a run resumed at epoch ``e`` sees what an uninterrupted run
    saw. Lightning calls :meth:`set_epoch`; iterating by hand advances the epoch after each pass.

    Args:
        size: Length of the dataset.
        seed: The DataModule's seed.
        sample_seeds: Yield ``(index, sample_seed)`` pairs instead of plain indices.

    """

    def __init__(self, size: int, seed: int, *, sample_seeds: bool = False) -> None:
        self.size = size
        self.seed = seed
        self.sample_seeds = sample_seeds
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next pass yields."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        self.epoch += 1
        order = torch.randperm(self.size, generator=generator).tolist()
        if not self.sample_seeds:
            return iter(order)
        seeds = torch.randint(0, 2**62, (self.size,), generator=generator).tolist()
        return zip(order, seeds, strict=True)

    def __len__(self) -> int:
        return self.size


def _quiesce_opencv() -> None:
    """Stop OpenCV's thread pool before DataLoader workers fork from this process.

    A worker forked while the pool holds threads deadlocks in its first OpenCV call (seen here in
    ``pthread_cond_destroy``). Sequential OpenCV costs nothing that matters: each worker handles its own samples,
    and the images are small. Nothing to do while OpenCV is not imported.
    """
    cv2 = sys.modules.get("cv2")
    if cv2 is not None:
        cv2.setNumThreads(0)


class SplitDataModule(pl.LightningDataModule):
    """Train / val / test datasets made once by :meth:`make_splits`, served by seeded loaders.

    Subclasses call ``save_hyperparameters()`` with at least ``batch_size``, ``seed`` and ``num_workers``; they may
    add ``pin_memory`` and ``persistent_workers`` (``None``: on when useful). A training set with a true
    ``takes_sample_seeds`` attribute is indexed with ``(index, sample_seed)`` pairs (see :class:`EpochSampler`).
    """

    #: How the loaders batch samples; ``None``: torch's default collate.
    collate_fn: Callable[[list[Any]], Any] | None = None

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
        hp = self.hparams
        workers = hp.num_workers
        persistent = hp.get("persistent_workers")
        pin = hp.get("pin_memory")
        sampler = None
        if workers > 0:
            _quiesce_opencv()
        if shuffle:
            seeds = bool(getattr(dataset, "takes_sample_seeds", False))
            sampler = EpochSampler(len(dataset), hp.seed, sample_seeds=seeds)  # type: ignore[arg-type]
        return DataLoader(
            dataset,
            batch_size=hp.batch_size,
            sampler=sampler,
            num_workers=workers,
            # Workers that live across epochs save their start-up (an import of torch each) every epoch.
            persistent_workers=workers > 0 if persistent is None else persistent and workers > 0,
            pin_memory=torch.cuda.is_available() if pin is None else pin,
            collate_fn=self.collate_fn,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches: the same order for the same seed and epoch."""
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order."""
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in a fixed order."""
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test set in a fixed order, for ``trainer.predict``."""
        return self._loader(self.test_set, shuffle=False)
