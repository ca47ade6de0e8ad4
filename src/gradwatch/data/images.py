"""Image DataModules: every one yields ``(images, labels)``, images float ``(C, H, W)`` in ``[-1, 1]``, shape ``dims``.

Images are held in memory as uint8 ``(N, H, W, C)`` arrays at the requested size, resized once; augmentation
(albumentations, train data only) runs per sample on those arrays, reseeded per batch from seeds the sampler draws
in the main process, so the same seed gives the same batches with any number of workers.
"""

from __future__ import annotations

import math
import os
import pickle
import struct
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import Dataset
from typing_extensions import override

from gradwatch.data.augment import (
    AugmentType,
    collate_images,
    describe_augment,
    reseed,
    resolve_augment,
    to_tensor,
    to_unit_range,
)
from gradwatch.data.base import SplitDataModule, check_held_out, resolve_splits, split_indices
from gradwatch.errors import ConfigError, check_positive

Split = Literal["train", "test"]


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 ``(N, H, W, C)`` images to ``size`` ``(H, W)``: area averaging to shrink, bilinear to grow."""
    if images.shape[1:3] == size:
        return images
    import cv2

    shrink = size[0] * size[1] < images.shape[1] * images.shape[2]
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    resized = [cv2.resize(image, (size[1], size[0]), interpolation=interpolation) for image in images]
    return np.stack(resized).reshape(len(images), *size, images.shape[3])


class ImageDataset(Dataset):
    """uint8 ``(N, H, W, C)`` images and their labels, through an optional albumentations-style transform.

    Keys are ``(index, sample_seed)`` pairs (what :class:`~gradwatch.data.base.EpochSampler` yields) or plain
    indices. The transform is reseeded once per batch from its first key's seed, or from its first index, so
    evaluation data never varies.
    """

    def __init__(self, images: np.ndarray, labels: torch.Tensor, transform: Callable[..., Any] | None = None) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    @property
    def takes_sample_seeds(self) -> bool:
        """Whether indexing with a sample seed makes a difference."""
        return self.transform is not None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[int | tuple[int, int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Samples ``(uint8 (C, H, W) image, label)``; the DataLoader fetches whole batches through this.

        The transform is reseeded once per batch, from its first key: batches are formed in the main process, so
        this is as reproducible across worker counts as seeding each sample, at a fraction of the cost.
        """
        indices = [key[0] if isinstance(key, tuple) else key for key in keys]
        images = self.images[indices]
        if self.transform is not None:
            first = keys[0]
            reseed(self.transform, first[1] if isinstance(first, tuple) else first)
            images = [self.transform(image=image)["image"] for image in images]
        return [(to_tensor(image), self.labels[i]) for image, i in zip(images, indices, strict=True)]


class ImageDataModule(SplitDataModule):
    """Base of the image DataModules, in the style of bolts' ``VisionDataModule``; subclasses load the arrays.

    ``dims`` ``(C, H, W)`` and ``num_classes`` are known before :meth:`setup`, so models can read them. Validation
    and test data are never augmented.

    Args:
        image_size: Side of the square images the loaders yield; ``None`` keeps the dataset's native size.
        augment: Training augmentation: a preset (``none``, ``light``, ``standard``, ``strong``), a path to an
            albumentations YAML / JSON file, or an albumentations transform.
        batch_size: Samples per batch.
        val_split: Validation share of the training data: a fraction in ``(0, 1)`` or a count.
        seed: Seeds the splits, the shuffling and the augmentation.
        num_workers: DataLoader worker processes.
        pin_memory: Page-locked batches for faster GPU transfer; ``None``: when CUDA is available.
        persistent_workers: Keep workers between epochs; ``None``: whenever there are workers.
        train_transforms: Replaces the training pipeline (and ``augment``): a callable taking ``image=`` (an
            albumentations transform) on uint8 ``(H, W, C)`` arrays. uint8 output is mapped to ``[-1, 1]``; float
            arrays and tensors are used as they are.
        val_transforms: The same for validation, test and predict data (by default none).

    Raises:
        ConfigError: a bad value, or a pipeline that fails on or resizes an image of shape ``dims``.

    """

    num_classes: int
    channels: int
    #: ``(H, W)`` of the dataset's images, ``None`` where they differ.
    native_size: tuple[int, int] | None
    #: Whether a mirrored image keeps its label (not for digits): presets flip only when it does.
    mirror: bool = True

    @property
    def chance_loss(self) -> float:
        """The cross-entropy of a model that learned nothing, ``ln(num_classes)`` (the ``stalled`` verdict's scale)."""
        return math.log(self.num_classes)

    def __init__(
        self,
        image_size: int | None = None,
        augment: AugmentType = "none",
        batch_size: int = 64,
        val_split: int | float = 0.15,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool | None = None,
        train_transforms: Callable[..., Any] | None = None,
        val_transforms: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if image_size is not None:
            check_positive(name, image_size=image_size)
            size = (image_size, image_size)
        elif self.native_size is None:
            raise ConfigError(f"{name}: the images differ in size; set image_size", param="image_size")
        else:
            size = self.native_size
        self.check_loader_args(name, batch_size, num_workers)
        if train_transforms is not None and augment != "none":
            raise ConfigError(
                f"{name}: pass augment={augment!r} or train_transforms, not both (train_transforms replaces augment)",
                param="augment",
            )
        self.dims = (self.channels, *size)
        self.train_pipeline = train_transforms or resolve_augment(augment, size, self.channels, mirror=self.mirror)
        self.val_pipeline = val_transforms
        self._check_pipeline(self.train_pipeline, "train_transforms" if train_transforms else "augment")
        self._check_pipeline(self.val_pipeline, "val_transforms")
        self.save_hyperparameters(ignore=["train_transforms", "val_transforms"])
        # Record the resolved size (models log an `image_size` too, and Lightning refuses two values under one key)
        # and the pipeline in a loggable form.
        square = size[0] if size[0] == size[1] else None
        self.save_hyperparameters({**self.hparams, "image_size": square, "augment": describe_augment(augment)})
        check_held_out(name, val_split=val_split, test_split=self.hparams.get("test_split"))

    def _check_pipeline(self, pipeline: Callable[..., Any] | None, param: str) -> None:
        """Run ``pipeline`` on blank images of shape ``dims``: it must not fail and must keep the shape."""
        if pipeline is None:
            return
        c, h, w = self.dims
        for seed in range(4):  # a few seeds, so transforms applied with probability p most likely run
            reseed(pipeline, seed)
            try:
                out = to_unit_range(to_tensor(pipeline(image=np.zeros((h, w, c), np.uint8))["image"]))
            except Exception as error:  # a crop larger than the image, a wrong channel count, ...
                raise ConfigError(
                    f"{type(self).__name__}: the {param} pipeline fails on {h}×{w}×{c} images:"
                    f" {type(error).__name__}: {error}",
                    param=param,
                ) from error
            if tuple(out.shape) != self.dims:
                raise ConfigError(
                    f"{type(self).__name__}: the {param} pipeline turns {h}×{w}×{c} images into"
                    f" {'×'.join(map(str, out.shape[1:]))}×{out.shape[0]}; it must keep the image_size the model"
                    f" is built for (set image_size to the size it produces, or change the pipeline)",
                    param=param,
                )

    collate_fn = staticmethod(collate_images)

    def load_images(self, split: Split) -> tuple[np.ndarray, np.ndarray] | None:
        """uint8 ``(N, H, W, C)`` images at their native size and integer labels ``(N,)`` of one split.

        Return ``None`` for ``"test"`` when the dataset has no test set of its own: ``test_split`` of the training
        data is held out instead.
        """
        raise NotImplementedError

    def _images(self, split: Split) -> tuple[np.ndarray, torch.Tensor] | None:
        loaded = self.load_images(split)
        if loaded is None:
            return None
        images, labels = loaded
        labels = torch.as_tensor(labels, dtype=torch.long)
        wrong = labels[(labels < 0) | (labels >= self.num_classes)]
        if len(wrong):  # the loss would fail on them mid-epoch
            raise ConfigError(
                f"{type(self).__name__}: {len(wrong)} {split} labels are outside 0..{self.num_classes - 1}"
                f" (e.g. {wrong.unique()[:5].tolist()}); the dataset has {self.num_classes} classes",
                param="data_dir" if "data_dir" in self.hparams else None,
            )
        return resize_images(images, self.dims[1:]), labels

    def make_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        """Load and resize once, hold out validation (and test) data with the seed, attach the pipelines."""
        hp, name = self.hparams, type(self).__name__
        images, labels = self._images("train")  # type: ignore[misc]
        test = self._images("test")
        if test is None and hp.get("test_split") is None:
            raise TypeError(f"{name}.load_images('test') returned None: the class needs a `test_split` argument")
        held = resolve_splits(
            name, len(labels), val_split=hp.val_split, test_split=hp.test_split if test is None else None
        )
        # As numpy arrays: numpy reads a one-element tensor as a scalar index, and a split of one would lose its axis.
        val_idx, test_idx, train_idx = (
            idx.numpy() for idx in split_indices(len(labels), (held["val_split"], held.get("test_split", 0)), hp.seed)
        )
        test_images, test_labels = test if test is not None else (images[test_idx], labels[test_idx])
        return (
            ImageDataset(images[train_idx], labels[train_idx], self.train_pipeline),
            ImageDataset(images[val_idx], labels[val_idx], self.val_pipeline),
            ImageDataset(test_images, test_labels, self.val_pipeline),
        )


class DigitsDataModule(ImageDataModule):
    """scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes): real data, no download.

    Args:
        test_split: Test share of the data: a fraction in ``(0, 1)`` or a count.
        **kwargs: :class:`ImageDataModule`'s arguments (``image_size``, ``augment``, ``batch_size``, ...).

    Example::

        >>> dm = DigitsDataModule(image_size=16, augment="standard")
        >>> dm.dims, dm.num_classes
        ((1, 16, 16), 10)

    """

    num_classes = 10
    channels = 1
    native_size = (8, 8)
    mirror = False

    def __init__(self, test_split: int | float = 0.15, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def load_images(self, split: Split) -> tuple[np.ndarray, np.ndarray] | None:
        """All 1,797 digits for ``"train"`` (pixel values 0..16 scaled to 0..255); ``None`` for ``"test"``."""
        if split == "test":
            return None
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
        return images, digits.target


class TorchvisionDataModule(ImageDataModule):
    """Base of the DataModules over a torchvision dataset: downloaded by ``prepare_data``, checked up front.

    Subclasses name the dataset's folder under ``data_dir`` and its files, and read them in :meth:`load_images`.
    The files already there are checked at construction (:meth:`file_problem`) and loaded by :meth:`verify_data`
    before a run starts; a damaged one is named in one line with how to get it again.

    Args:
        data_dir: Where the dataset lives (or is downloaded to).
        download: Fetch the dataset (on rank 0, in ``prepare_data``) when its files are missing.
        **kwargs: :class:`ImageDataModule`'s arguments (``image_size``, ``augment``, ``batch_size``, ...).

    """

    #: The folder under ``data_dir`` that holds the dataset's files.
    folder: str
    #: The files that folder must hold.
    files: tuple[str, ...]

    def __init__(self, data_dir: str = "data", download: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        # The download would fail on it later, inside the run: the first part of the path that exists must be a folder.
        there = next((p for p in (Path(data_dir), *Path(data_dir).parents) if p.exists()), Path("."))
        if not there.is_dir():
            where = "" if there == Path(data_dir) else f" is under {str(there)!r}, which"
            raise ConfigError(f"{name}: data_dir {data_dir!r}{where} is a file, not a folder", param="data_dir")
        missing = self.missing_files()
        if missing and not download:
            raise ConfigError(
                f"{name}: {self.root} lacks {', '.join(missing)}; pass download=True"
                f" (--data.download true) or put the dataset's files there",
                param="data_dir",
            )
        for file in set(self.files) - set(missing):
            problem = self.file_problem(self.root / file)
            if problem is not None:
                raise self.damaged(self.root / file, problem)

    @property
    def root(self) -> Path:
        """The dataset's own folder."""
        return Path(self.hparams.data_dir) / self.folder

    def missing_files(self) -> list[str]:
        """The expected files not found under :attr:`root`."""
        return [name for name in self.files if not (self.root / name).is_file()]

    def file_problem(self, path: Path) -> str | None:
        """What is wrong with one of the dataset's files, as far as a glance shows; ``None`` when nothing is.

        Runs at construction on every file there, so it must be cheap (a header, a length); :meth:`load_images`
        reports what only a full read finds through :meth:`damaged`.
        """
        return None

    def damaged(self, path: Path, problem: str) -> ConfigError:
        """The error for a damaged dataset file: which one, what is wrong with it, and how to get a good copy."""
        if self.hparams.download:
            remedy = "delete it and the next run downloads it again"
        else:
            remedy = "replace it with a complete copy, or delete it and pass download=True (--data.download true)"
        return ConfigError(f"{type(self).__name__}: {path} is {problem}; {remedy}", param="data_dir")

    @override
    def verify_data(self) -> None:
        """Load the data now if its files are here; files still to be downloaded are loaded by ``setup``."""
        if not self.missing_files():
            super().verify_data()

    def download(self) -> None:
        """Fetch and unpack the dataset into ``data_dir`` (torchvision checks the archives' checksums)."""
        raise NotImplementedError

    @override
    def prepare_data(self) -> None:
        """Download when files are missing and ``download`` is on (Lightning calls this on one process only)."""
        if not self.missing_files() or not self.hparams.download:
            return
        try:
            self.download()
        except Exception as error:  # URLError, a checksum mismatch, a full disk: all end the same way
            raise ConfigError(
                f"{type(self).__name__}: could not download into {self.hparams.data_dir}"
                f" ({type(error).__name__}: {' '.join(str(error).split())});"
                f" put {', '.join(self.missing_files())} into {self.root} yourself, or retry with network access",
                param="download",
            ) from error


def idx_problem(path: Path) -> str | None:
    """What is wrong with an idx file of bytes (MNIST's format) by its header and length; ``None`` when nothing is.

    The format: ``00 00 08 <ndim>``, ``ndim`` big-endian 32-bit sizes, then their product of bytes.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(4)
        ndim = magic[3] if len(magic) == 4 and magic[:3] == b"\0\0\x08" else 0
        dims = f.read(4 * ndim)
    if not 1 <= ndim <= 3:
        return f"not an idx file of bytes (it starts with {magic.hex(' ') or 'nothing'}, not 00 00 08 01..03)"
    if len(dims) < 4 * ndim:
        return f"truncated: {size} bytes, not even its header"
    shape = struct.unpack(f">{ndim}I", dims)
    expected = 4 + 4 * ndim + math.prod(shape)
    if size == expected:
        return None
    state = "truncated" if size < expected else "longer than its header says"
    return f"{state}: {size:,} bytes where its header ({'×'.join(map(str, shape))}) needs {expected:,}"


class MNISTDataModule(TorchvisionDataModule):
    """MNIST handwritten digits (60,000 training and 10,000 test images, 28×28 grayscale, 10 classes).

    Files are torchvision's layout: ``<data_dir>/MNIST/raw/*-idx?-ubyte``, read with torchvision's idx reader.

    Example::

        >>> dm = MNISTDataModule(data_dir="data", image_size=32)  # downloads in prepare_data if missing
        >>> dm.dims, dm.num_classes
        ((1, 32, 32), 10)

    """

    num_classes = 10
    channels = 1
    native_size = (28, 28)
    mirror = False
    folder = "MNIST/raw"
    files = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

    @override
    def file_problem(self, path: Path) -> str | None:
        return idx_problem(path)

    def _dataset_class(self) -> Any:
        import torchvision.datasets

        return getattr(torchvision.datasets, self.folder.split("/")[0])

    @override
    def download(self) -> None:
        self._dataset_class()(self.hparams.data_dir, train=True, download=True)

    @override
    def load_images(self, split: Split) -> tuple[np.ndarray, np.ndarray]:
        dataset = self._dataset_class()(self.hparams.data_dir, train=split == "train", download=False)
        return dataset.data.numpy()[..., None], dataset.targets.numpy()


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST clothing images (60,000 + 10,000, 28×28 grayscale, 10 classes), MNIST's file format.

    Files: ``<data_dir>/FashionMNIST/raw/*-idx?-ubyte``.
    """

    mirror = True
    folder = "FashionMNIST/raw"


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10 (50,000 training and 10,000 test images, 32×32 RGB, 10 classes).

    Files are the dataset's own pickled batches in ``<data_dir>/cifar-10-batches-py/``; torchvision downloads and
    checksums the archive, and gradwatch reads the batches itself (so any file in that format loads, and a
    corrupt one fails with the reason).
    """

    num_classes = 10
    channels = 3
    native_size = (32, 32)
    folder = "cifar-10-batches-py"
    files = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")

    @override
    def download(self) -> None:
        from torchvision.datasets import CIFAR10

        CIFAR10(self.hparams.data_dir, train=True, download=True)

    @override
    def load_images(self, split: Split) -> tuple[np.ndarray, np.ndarray]:
        names = self.files[:5] if split == "train" else ("test_batch",)
        images, labels = [], []
        for name in names:
            try:
                with open(self.root / name, "rb") as f:
                    batch = pickle.load(f, encoding="latin1")
                images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.extend(batch["labels"])
            except Exception as error:  # truncated, corrupt or another pickle: whatever it is, this file is bad
                raise self.damaged(self.root / name, f"unreadable ({type(error).__name__}: {error})") from error
        return np.concatenate(images).transpose(0, 2, 3, 1), np.asarray(labels)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp")
#: PIL modes read as one channel.
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
_PEEK = 16


def scan_folder(root: Path, owner: str, param: str) -> dict[str, list[Path]]:
    """``{class name: image files}`` of a folder with one sub-folder per class, in sorted order.

    Raises:
        ConfigError: ``root`` is missing or holds no class folders, or a class folder holds no image files.
    """
    if not root.is_dir():
        raise ConfigError(f"{owner}: {param} {str(root)!r} is not a folder", param=param)
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ConfigError(
            f"{owner}: {str(root)!r} has no class folders; it must hold one sub-folder of images per class",
            param=param,
        )
    found = {c.name: sorted(f for f in c.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES) for c in classes}
    empty = [name for name, files in found.items() if not files]
    if empty:
        raise ConfigError(
            f"{owner}: class folder(s) {', '.join(repr(str(root / n)) for n in empty)} hold no images"
            f" ({', '.join(IMAGE_SUFFIXES)})",
            param=param,
        )
    return found


#: Why PIL could not read a file: the exception's type and message.
Unreadable = str


def _why(error: Exception) -> Unreadable:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


class _TooLarge(Exception):
    """An image whose header promises more pixels than PIL decodes: ``(path, PIL's DecompressionBombError)``."""


def _read_header(path: Path) -> tuple[str, tuple[int, int]] | Unreadable:
    """Mode and ``(H, W)`` of an image from its header alone, or why it cannot be opened.

    Raises:
        _TooLarge: the header promises more pixels than PIL agrees to decode.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.mode, (image.height, image.width)
    except Image.DecompressionBombError as error:
        raise _TooLarge(path, error) from error
    except (OSError, ValueError, SyntaxError) as error:  # PIL's errors for unknown and corrupt files
        return _why(error)


def _read_image(path: Path, mode: str, size: tuple[int, int]) -> np.ndarray | Unreadable:
    """``path`` decoded as uint8 ``(H, W, C)`` in ``mode`` at ``size`` ``(H, W)``, or why it cannot be."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert(mode)
            if image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as error:  # PIL's errors for unknown, truncated and corrupt files
        return _why(error)
    return array[..., None] if array.ndim == 2 else array


def _in_threads(read: Callable[[Path], Any], paths: list[Path]) -> list[Any]:
    # PIL releases the GIL while reading, decoding and resizing, so threads use every core.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(read, paths))


class ImageFolderDataModule(ImageDataModule):
    """Your own images: one sub-folder per class (torchvision's ``ImageFolder`` layout), any size, RGB or gray.

    At construction every file's header is read (mode and size, not the pixels), so ``dims`` and ``num_classes``
    are known before ``setup`` and describe all the images: the channel count is 1 only when every image is
    grayscale (a folder that mixes both is read as RGB, with a warning naming the modes found). Images are decoded
    once, by :meth:`~SplitDataModule.verify_data` before a run starts or by ``setup``, resized to ``image_size`` and
    held in memory (so a 100,000-image dataset at 64×64 RGB takes 1.2 GB). Files that cannot be read are skipped
    with one warning; a class none of whose files can be read is an error.

    Args:
        data_dir: The folder of class folders (training data, and test data unless ``test_dir`` is given).
        test_dir: A folder with the same class folders holding the test data.
        channels: 1 (grayscale) or 3 (RGB); ``None``: 1 when every image is grayscale, else 3.
        test_split: Test share of ``data_dir`` when there is no ``test_dir``: a fraction in ``(0, 1)`` or a count.
        mirror: Whether a mirrored image keeps its label (presets flip only then).
        **kwargs: :class:`ImageDataModule`'s arguments (``image_size``, ``augment``, ``batch_size``, ...).

    Raises:
        ConfigError: a missing or empty folder, a class folder without images or with none readable, different
            classes in ``test_dir``, an image too large for PIL to decode, or images of different sizes without
            ``image_size``.

    """

    def __init__(
        self,
        data_dir: str,
        test_dir: str | None = None,
        channels: int | None = None,
        test_split: int | float = 0.15,
        mirror: bool = True,
        **kwargs: Any,
    ) -> None:
        name = type(self).__name__
        self.data_dir = data_dir
        self.class_files = scan_folder(Path(data_dir), name, "data_dir")
        self.test_class_files = scan_folder(Path(test_dir), name, "test_dir") if test_dir is not None else None
        if self.test_class_files is not None and list(self.test_class_files) != list(self.class_files):
            raise ConfigError(
                f"{name}: test_dir classes {list(self.test_class_files)} differ from"
                f" data_dir classes {list(self.class_files)}",
                param="test_dir",
            )
        if channels not in (None, 1, 3):
            raise ConfigError(f"{name}: channels must be 1, 3 or None (detect), got {channels}", param="channels")
        self.classes = list(self.class_files)
        self.num_classes = len(self.classes)
        self.mirror = mirror
        headers = self._read_headers(data_dir, test_dir)
        self.channels = channels or self._channels_of(
            headers, data_dir if test_dir is None else f"{data_dir} and {test_dir}"
        )
        sizes = {size for _, size in headers.values()}
        if kwargs.get("image_size") is None and len(sizes) > 1:
            examples = ", ".join(f"{h}×{w}" for h, w in sorted(sizes)[:4])
            raise ConfigError(
                f"{name}: the images in {data_dir} differ in size ({examples}, ...); set image_size to resize them all",
                param="image_size",
            )
        self.native_size = sizes.pop() if len(sizes) == 1 else None
        super().__init__(**kwargs)

    def _folders(self, data_dir: str, test_dir: str | None) -> list[tuple[str, Path, dict[str, list[Path]]]]:
        """``(argument, folder, class files)`` of the training folder and, if given, the test folder."""
        folders = [("data_dir", Path(data_dir), self.class_files)]
        if test_dir is not None and self.test_class_files is not None:
            folders.append(("test_dir", Path(test_dir), self.test_class_files))
        return folders

    def _read_headers(self, data_dir: str, test_dir: str | None) -> dict[Path, tuple[str, tuple[int, int]]]:
        """Mode and ``(H, W)`` of every readable image of both folders.

        Raises:
            ConfigError: an image is too large for PIL to decode, or a class has no file PIL can open.
        """
        found = {}
        for param, root, class_files in self._folders(data_dir, test_dir):
            paths = [path for files in class_files.values() for path in files]
            try:
                headers = _in_threads(_read_header, paths)
            except _TooLarge as error:  # loading would fail on it, after the run has started
                path, why = error.args
                raise ConfigError(
                    f"{type(self).__name__}: {path} is too large to decode ({str(why).rstrip('.')});"
                    f" shrink it or take it out of {root}",
                    param=param,
                ) from None
            unreadable = {p: h for p, h in zip(paths, headers, strict=True) if isinstance(h, Unreadable)}
            self._refuse_unreadable_classes(root, class_files, unreadable, param)
            found.update({p: h for p, h in zip(paths, headers, strict=True) if not isinstance(h, Unreadable)})
        return found

    def _channels_of(self, headers: dict[Path, tuple[str, tuple[int, int]]], where: str) -> int:
        """1 when every image is grayscale, else 3; a warning names the folders and modes when they mix both."""
        modes = Counter(mode for mode, _ in headers.values())
        gray = [mode for mode in modes if mode in GRAY_MODES]
        if not gray or len(gray) == len(modes):
            return 1 if gray else 3
        example = {mode: path for path, (mode, _) in reversed(headers.items())}  # the first file of each mode
        found = ", ".join(f"{mode} ({n} files, e.g. {example[mode]})" for mode, n in sorted(modes.items()))
        rank_zero_warn(
            f"{type(self).__name__}: the images in {where} mix grayscale and colour: {found}; all are read as"
            f" RGB (3 channels); pass channels=1 (--data.channels 1) to read them all as grayscale"
        )
        return 3

    def _refuse_unreadable_classes(
        self, root: Path, class_files: dict[str, list[Path]], unreadable: dict[Path, Unreadable], param: str
    ) -> None:
        """Raise when no file of a class can be read: a model trained on the rest would never see that class."""
        dead = [name for name, files in class_files.items() if all(path in unreadable for path in files)]
        if not dead:
            return
        folders = ", ".join(f"{str(root / name)!r} ({len(class_files[name])} files, none readable)" for name in dead)
        first = class_files[dead[0]][0]
        plural = len(dead) > 1
        raise ConfigError(
            f"{type(self).__name__}: class folder{'s' * plural} {folders} {'have' if plural else 'has'} no readable"
            f" image (e.g. {first}: {unreadable[first]}); a model would never see {'those' if plural else 'that'}"
            f" class{'es' * plural}: repair the files or remove the folder{'s' * plural}",
            param=param,
        )

    @override
    def load_images(self, split: Split) -> tuple[np.ndarray, np.ndarray] | None:
        files = self.class_files if split == "train" else self.test_class_files
        if files is None:
            return None
        param = "data_dir" if split == "train" else "test_dir"
        paths = [(path, label) for label, name in enumerate(self.classes) for path in files[name]]
        mode = "L" if self.channels == 1 else "RGB"
        arrays = _in_threads(lambda path: _read_image(path, mode, self.dims[1:]), [path for path, _ in paths])
        bad = {path: array for (path, _), array in zip(paths, arrays, strict=True) if isinstance(array, Unreadable)}
        self._refuse_unreadable_classes(Path(self.hparams[param]), files, bad, param)
        if bad:
            rank_zero_warn(
                f"{type(self).__name__}: skipped {len(bad)} of {len(paths)} image files that could not be read:"
                f" {', '.join(map(str, list(bad)[:5]))}{', ...' if len(bad) > 5 else ''}"
            )
        kept = [
            (array, label) for array, (_, label) in zip(arrays, paths, strict=True) if not isinstance(array, Unreadable)
        ]
        return np.stack([array for array, _ in kept]), np.asarray([label for _, label in kept])
