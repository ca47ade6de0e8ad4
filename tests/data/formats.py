"""Small datasets written by the tests in the real on-disk formats: idx (MNIST), pickled batches (CIFAR-10), folders."""

from __future__ import annotations

import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from gradwatch.data import (
    CIFAR10DataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    ImageDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
)

RNG = np.random.default_rng(0)


def write_idx(path: Path, array: np.ndarray) -> None:
    """``array`` (uint8) as an idx file: big-endian magic ``0x08 <ndim>``, the dimensions, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 60, n_test: int = 20) -> dict[str, np.ndarray]:
    """An MNIST-format dataset under ``root/<folder>/raw``; returns what was written."""
    data = {
        "train_images": RNG.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": np.arange(n_train, dtype=np.uint8) % 10,
        "test_images": RNG.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": np.arange(n_test, dtype=np.uint8) % 10,
    }
    raw = root / folder / "raw"
    for prefix, split in (("train", "train"), ("t10k", "test")):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", data[f"{split}_images"])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", data[f"{split}_labels"])
    return data


def write_cifar(root: Path, per_batch: int = 12, n_test: int = 20) -> dict[str, np.ndarray]:
    """A CIFAR-10-format dataset: five pickled training batches, a test batch and the meta file."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written: dict[str, list] = {"train_images": [], "train_labels": []}
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", n_test)]:
        images = RNG.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = [int(v) for v in RNG.integers(0, 10, n)]
        # The dataset's layout: rows of 3072 bytes, the red plane, then green, then blue.
        batch = {"data": images.transpose(0, 3, 1, 2).reshape(n, -1), "labels": labels, "batch_label": name}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        if name == "test_batch":
            written["test_images"], written["test_labels"] = images, np.asarray(labels)
        else:
            written["train_images"].append(images)
            written["train_labels"].extend(labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}, f, protocol=2)
    written["train_images"] = np.concatenate(written["train_images"])
    written["train_labels"] = np.asarray(written["train_labels"])
    return written  # type: ignore[return-value]


def write_folder(
    root: Path, classes: tuple[str, ...] = ("cat", "dog", "owl"), n: int = 8, size=(20, 24), mode: str = "RGB"
) -> Path:
    """``n`` images per class folder, PNG and JPEG alternating, of ``size`` ``(H, W)`` in PIL ``mode``."""
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(n):
            shape = (*size, 3) if mode == "RGB" else size
            image = Image.fromarray(RNG.integers(0, 256, shape, dtype=np.uint8), mode=mode)
            image.save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def write_blank_png(path: Path, width: int, height: int) -> None:
    """A valid black 1-bit PNG of any size, written in a blink: a huge one compresses to a few kilobytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (width + 7) // 8)  # filter type 0, then one bit per pixel
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grayscale, no interlace
    pixels = zlib.compress(row * height, 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


def cut(path: Path, keep: float = 0.5) -> None:
    """Truncate ``path`` to its first ``keep`` share of bytes, as an interrupted copy or download leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def build_datamodule(name: str, tmp_path: Path, **kwargs: object) -> ImageDataModule:
    """Any image DataModule by name, over files written into ``tmp_path`` where it needs them."""
    if name == "digits":
        return DigitsDataModule(**kwargs)
    if name in ("mnist", "fashion"):
        folder, cls = ("MNIST", MNISTDataModule) if name == "mnist" else ("FashionMNIST", FashionMNISTDataModule)
        if not (tmp_path / folder).exists():
            write_mnist(tmp_path, folder)
        return cls(data_dir=str(tmp_path), download=False, **kwargs)
    if name == "cifar":
        if not (tmp_path / "cifar-10-batches-py").exists():
            write_cifar(tmp_path)
        return CIFAR10DataModule(data_dir=str(tmp_path), download=False, **kwargs)
    root = tmp_path / name
    if not root.exists():
        write_folder(root, mode={"folder_rgb": "RGB", "folder_gray": "L"}[name])
    return ImageFolderDataModule(data_dir=str(root), **{"image_size": 16, **kwargs})


IMAGE_DATAMODULES = ("digits", "mnist", "fashion", "cifar", "folder_rgb", "folder_gray")
