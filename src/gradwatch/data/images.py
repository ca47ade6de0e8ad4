"""Image DataModules. Every one yields ``(images, labels)`` with images in ``[-1, 1]``, shape ``dims``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from gradwatch.data.base import SplitDataModule
from gradwatch.errors import ConfigError
from gradwatch.models.base import check_positive


def split_indices(n: int, fractions: tuple[float, ...], seed: int) -> list[torch.Tensor]:
    """Disjoint index sets: one per fraction, then the rest; the same for the same ``n``, fractions and seed."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    sizes = [round(n * f) for f in fractions]
    return list(order.split([*sizes, n - sum(sizes)]))


def check_fractions(owner: str, **fractions: float) -> None:
    """Raise :class:`ConfigError` unless each fraction is in ``(0, 1)`` and together they leave data to train on."""
    for param, value in fractions.items():
        if not 0.0 < value < 1.0:
            raise ConfigError(f"{owner}: {param} must be in (0, 1), got {value}", param=param)
    if sum(fractions.values()) >= 1.0:
        raise ConfigError(f"{owner}: {' + '.join(fractions)} = {sum(fractions.values())} leaves nothing to train on")


class ImageDataModule(SplitDataModule):
    """Base of the image DataModules: seeded splits and loaders; subclasses load the tensors.

    ``dims`` ``(C, H, W)`` and ``num_classes`` are known before :meth:`setup`, so models can read them.

    Args:
        image_size: Side of the square images the loaders yield; ``None`` keeps the dataset's ``native_size``.
        batch_size: Samples per batch.
        val_split: Fraction of the data held out for validation.
        test_split: Fraction held out for testing.
        seed: Seeds the splits and the shuffling.
        num_workers: DataLoader worker processes.

    """

    num_classes: int
    channels: int
    native_size: int

    def __init__(
        self,
        image_size: int | None = None,
        batch_size: int = 64,
        val_split: float = 0.15,
        test_split: float = 0.15,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        image_size = self.native_size if image_size is None else image_size
        check_positive(name, image_size=image_size)
        self.check_loader_args(name, batch_size, num_workers)
        check_fractions(name, val_split=val_split, test_split=test_split)
        self.save_hyperparameters()
        # Record the resolved size, not None (LightningCLI hands save_hyperparameters the values as given): models
        # log an `image_size` too, and Lightning refuses to log two different values under one key.
        self.save_hyperparameters({**self.hparams, "image_size": image_size})
        self.dims = (self.channels, image_size, image_size)

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images ``(N, C, H, W)`` in ``[-1, 1]`` at their native size, and labels ``(N,)``."""
        raise NotImplementedError

    def make_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        """Load, resize to ``image_size`` and split with the seed."""
        images, labels = self.load()
        size = self.hparams.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        val, test, train = split_indices(
            len(labels), (self.hparams.val_split, self.hparams.test_split), self.hparams.seed
        )
        return (
            TensorDataset(images[train], labels[train]),
            TensorDataset(images[val], labels[val]),
            TensorDataset(images[test], labels[test]),
        )


class DigitsDataModule(ImageDataModule):
    """scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes): real data, no download.

    Args:
        image_size: Side of the images; ``None`` keeps the native 8, other sizes are resized bilinearly.
        batch_size: Samples per batch.
        val_split: Fraction held out for validation.
        test_split: Fraction held out for testing.
        seed: Seeds the splits and the shuffling.
        num_workers: DataLoader worker processes.

    Example::

        >>> dm = DigitsDataModule(image_size=16)
        >>> dm.dims, dm.num_classes
        ((1, 16, 16), 10)

    """

    num_classes = 10
    channels = 1
    native_size = 8

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The digits as ``(1797, 1, 8, 8)`` in ``[-1, 1]`` (pixel values 0..16) and their labels."""
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
        return images, torch.as_tensor(digits.target, dtype=torch.long)
