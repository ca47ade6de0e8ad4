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

    Counts are checked against the data by :func:`resolve_splits`, which :meth:`~SplitDataModule.verify_data` runs
    before any run starts.
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


def resolve_splits(owner: str, total: int, **splits: int | float | None) -> dict[str, int]:
    """The samples each held-out split asks for out of ``total``; at least one is left to train on.

    A split is a fraction in ``(0, 1)`` (at least one sample, so a small dataset still validates) or a count;
    ``None`` holds out nothing.

    Raises:
        ConfigError: a split outside those ranges, or splits that leave nothing to train on; the message names the
            split to change, its value, the counts it could take and ``total``.
    """
    check_held_out(owner, **splits)
    counts = {
        param: max(1, round(total * split)) if _is_fraction(split) else int(split)
        for param, split in splits.items()
        if split is not None
    }
    if sum(counts.values()) < total:
        return counts
    param = max(counts, key=counts.__getitem__)  # the largest is the one to change
    others = {p: n for p, n in counts.items() if p != param}
    held = "".join(f", {p}={splits[p]} holds out {n}" for p, n in others.items())
    room = total - 1 - sum(others.values())
    remedy = (
        f"{param} must be a count from 1 to {room} or a fraction in (0, 1)"
        if room >= 1
        else f"too few samples to hold out {' and '.join(counts)}"
    )
    raise ConfigError(
        f"{owner}: {param}={splits[param]} leaves nothing to train on: the data has {total} samples{held}; {remedy}",
        param=param,
    )


def split_indices(n: int, sizes: tuple[int, ...], seed: int) -> list[torch.Tensor]:
    """Disjoint index sets of the given sizes (:func:`resolve_splits`'), then the rest; the same for the same seed."""
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
    :meth:`verify_data` loads the data before a run starts; a training epoch never ends on a batch of one sample.
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

    def verify_data(self) -> None:
        """Load the data now, so that a fault in it ends the command before any run starts.

        Models call this from ``check_data``, which the CLI runs before the Trainer creates a run folder or a W&B
        run: a damaged file, a split the data cannot satisfy or a class without a readable image is one
        :class:`ConfigError`, not a traceback in a run. The data is loaded once: :meth:`setup` reuses it. Data yet
        to be downloaded (subclasses say so by overriding this) is loaded and checked by :meth:`setup` as usual.

        Raises:
            ConfigError: the data cannot be used as configured; the message names the argument and the file.
        """
        self.setup()

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
            drop_last=shuffle and self._last_batch_of_one(len(dataset)),  # type: ignore[arg-type]
            num_workers=workers,
            # Workers that live across epochs save their start-up (an import of torch each) every epoch.
            persistent_workers=workers > 0 if persistent is None else persistent and workers > 0,
            pin_memory=torch.cuda.is_available() if pin is None else pin,
            collate_fn=self.collate_fn,
        )

    def _last_batch_of_one(self, size: int) -> bool:
        """Whether each process's last training batch would hold one sample (batch norm cannot train on one)."""
        world = self.trainer.world_size if self.trainer is not None else 1
        per_process = -(-size // world)  # Lightning's distributed sampler pads every process to the same count
        return per_process > 1 and per_process % self.hparams.batch_size == 1

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches: the same order for the same seed and epoch.

        A last batch that would hold a single sample is dropped (``drop_last`` then, and only then): batch norm
        cannot normalize one sample in training, and the run would fail at the end of its first epoch. Shuffling
        drops another sample each epoch, so none is left out for good. Full batches and larger remainders are kept.
        """
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
