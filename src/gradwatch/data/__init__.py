"""LightningDataModules for images and sequences, and the albumentations presets."""

from gradwatch.data.augment import PRESETS, preset
from gradwatch.data.base import EpochSampler, SplitDataModule
from gradwatch.data.images import (
    CIFAR10DataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    ImageDataModule,
    ImageDataset,
    ImageFolderDataModule,
    MNISTDataModule,
    TorchvisionDataModule,
)
from gradwatch.data.sequences import (
    AddingProblemDataModule,
    CopyMemoryDataModule,
    SequenceDataModule,
    SequentialDigitsDataModule,
)

__all__ = [
    "PRESETS",
    "AddingProblemDataModule",
    "CIFAR10DataModule",
    "CopyMemoryDataModule",
    "DigitsDataModule",
    "EpochSampler",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "ImageDataset",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "SequenceDataModule",
    "SequentialDigitsDataModule",
    "SplitDataModule",
    "TorchvisionDataModule",
    "preset",
]
