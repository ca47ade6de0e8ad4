"""LightningDataModules for images and sequences."""

from gradwatch.data.base import SplitDataModule
from gradwatch.data.images import DigitsDataModule, ImageDataModule
from gradwatch.data.sequences import AddingProblemDataModule

__all__ = ["AddingProblemDataModule", "DigitsDataModule", "ImageDataModule", "SplitDataModule"]
