"""Faults lose nothing: bad data and impossible arguments are one line naming the flag and file, before any run.

Every fault is a real file in its real format, damaged or odd the way disks and downloads leave them. The
DataModule tests pin the behaviour; the CLI tests run ``gradwatch fit`` as a user does and check that nothing was
created: no run folder, no W&B run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from formats import cut, write_blank_png, write_cifar, write_folder, write_idx, write_mnist

from conftest import make_trainer
from gradwatch import CNN
from gradwatch.data import CIFAR10DataModule, DigitsDataModule, ImageFolderDataModule, MNISTDataModule
from gradwatch.errors import ConfigError


def _train_batch_sizes(dm: DigitsDataModule) -> list[int]:
    dm.setup("fit")
    return [len(y) for _, y in dm.train_dataloader()]


@pytest.mark.parametrize("download", [True, False])
def test_a_truncated_mnist_file_is_named_with_its_sizes_at_construction(download, tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    cut(path)
    remedy = "delete it and the next run downloads it again" if download else "replace it with a complete copy"
    with pytest.raises(ConfigError) as info:
        MNISTDataModule(data_dir=str(tmp_path), download=download)
    assert str(info.value) == (
        f"MNISTDataModule: {path} is truncated: 23,528 bytes where its header (60×28×28) needs 47,056; {remedy}"
        + ("" if download else ", or delete it and pass download=True (--data.download true)")
    )
    assert info.value.param == "data_dir"


def test_an_mnist_file_that_is_no_idx_file_is_named(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"<html>rate limited</html>")  # what a proxy hands back instead of the file
    with pytest.raises(ConfigError, match=r"t10k-labels-idx1-ubyte is not an idx file of bytes \(it starts with 3c 68"):
        MNISTDataModule(data_dir=str(tmp_path))


def test_labels_outside_the_classes_fail_before_training(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte", np.full(60, 12, dtype=np.uint8))
    dm = MNISTDataModule(data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"60 train labels are outside 0..9 \(e.g. \[12\]\)") as info:
        CNN().check_data(dm)
    assert info.value.param == "data_dir"


def test_a_truncated_cifar_batch_is_named_when_loaded(tmp_path):
    write_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    cut(path)
    dm = CIFAR10DataModule(data_dir=str(tmp_path))  # a pickle shows its damage only when read
    with pytest.raises(ConfigError, match=r"data_batch_3 is unreadable \(UnpicklingError: pickle data was truncated\)"):
        CNN().check_data(dm)


def test_check_data_loads_the_data_once_and_setup_reuses_it(tmp_path):
    dm = DigitsDataModule()
    CNN().check_data(dm)
    train = dm.train_set
    assert train is not None
    dm.setup("fit")
    assert dm.train_set is train


def test_check_data_leaves_data_still_to_download_to_setup(tmp_path):
    dm = MNISTDataModule(data_dir=str(tmp_path / "empty"), download=True)
    CNN().check_data(dm)  # nothing to load yet, and no download here: prepare_data does that
    assert dm.train_set is None


@pytest.mark.parametrize(
    ("splits", "param", "message"),
    [
        (
            {"val_split": 5000},
            "val_split",
            "DigitsDataModule: val_split=5000 leaves nothing to train on: the data has 1797 samples, test_split=0.15"
            " holds out 270; val_split must be a count from 1 to 1526 or a fraction in (0, 1)",
        ),
        (
            {"val_split": 900, "test_split": 1000},
            "test_split",
            "DigitsDataModule: test_split=1000 leaves nothing to train on: the data has 1797 samples, val_split=900"
            " holds out 900; test_split must be a count from 1 to 896 or a fraction in (0, 1)",
        ),
    ],
)
def test_splits_larger_than_the_data_name_the_value_the_range_and_the_size(splits, param, message):
    dm = DigitsDataModule(**splits)  # the size is the data's: known once it is loaded
    with pytest.raises(ConfigError) as info:
        CNN().check_data(dm)
    assert str(info.value) == message
    assert info.value.param == param


def test_a_fraction_of_a_small_dataset_holds_out_at_least_one_sample(tmp_path):
    write_folder(tmp_path, classes=("cat", "dog"), n=3, size=(8, 8))
    dm = ImageFolderDataModule(data_dir=str(tmp_path), val_split=0.05, test_split=0.05)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (4, 1, 1)
    x, _ = next(iter(dm.val_dataloader()))  # a split of one keeps its batch axis
    assert x.shape == (1, 3, 8, 8)


def test_an_image_too_large_to_decode_is_named_at_construction(tmp_path):
    write_folder(tmp_path, classes=("cat", "dog"), n=2, size=(8, 8))
    write_blank_png(tmp_path / "dog" / "huge.png", 15000, 15000)  # 27 kB on disk, 225 million pixels
    with pytest.raises(ConfigError, match=r"dog/huge.png is too large to decode \(Image size \(225000000 pixels\)"):
        ImageFolderDataModule(data_dir=str(tmp_path), image_size=8)


@pytest.mark.parametrize(("train", "batch", "sizes"), [(17, 8, [8, 8]), (18, 8, [8, 8, 2]), (17, 1, [1] * 17)])
def test_only_a_last_training_batch_of_one_is_dropped(train, batch, sizes):
    dm = DigitsDataModule(val_split=1000, test_split=1797 - 1000 - train, batch_size=batch)
    assert _train_batch_sizes(dm) == sizes
    assert sum(len(y) for _, y in dm.val_dataloader()) == 1000  # evaluation keeps every sample


def test_batch_norm_trains_a_whole_epoch_whose_last_batch_would_hold_one_sample(tmp_path):
    dm = DigitsDataModule(val_split=1000, test_split=780, batch_size=8)  # 17 training samples
    model = CNN(depth=1, width=4, norm="batch")
    trainer = make_trainer(tmp_path, max_steps=-1, max_epochs=2, limit_val_batches=1)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 4  # two batches of 8 per epoch


def test_mixed_grayscale_and_rgb_folders_are_read_as_rgb_with_a_warning(tmp_path):
    write_folder(tmp_path, classes=("a_gray",), n=2, size=(8, 8), mode="L")  # the first images are grayscale
    write_folder(tmp_path, classes=("b_rgb",), n=3, size=(8, 8))
    with pytest.warns(UserWarning, match=r"the images in .* mix grayscale and colour: L \(2 files, e.g. .*a_gray") as w:
        dm = ImageFolderDataModule(data_dir=str(tmp_path), val_split=1, test_split=1)
    assert "RGB (3 files, e.g." in str(w[0].message)
    assert dm.dims == (3, 8, 8)
    dm.setup("fit")
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape[1] == 3
    assert ImageFolderDataModule(data_dir=str(tmp_path), channels=1).dims == (1, 8, 8)  # chosen: no warning


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_class_with_no_readable_image_is_an_error_naming_its_folder(damage, tmp_path):
    write_folder(tmp_path, classes=("cat", "dog"), n=3, size=(8, 8))
    for path in (tmp_path / "dog").iterdir():
        path.write_bytes(b"garbage") if damage == "garbage" else cut(path)
    # Garbage fails on its header, at construction; a truncated image only when decoded, before the run.
    with pytest.raises(ConfigError) as info:
        CNN().check_data(ImageFolderDataModule(data_dir=str(tmp_path), image_size=8))
    assert f"class folder '{tmp_path / 'dog'}' (3 files, none readable) has no readable image (e.g." in str(info.value)
    assert info.value.param == "data_dir"


def test_a_data_dir_under_a_file_fails_at_construction(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"data_dir '.*file/data' is under '.*file', which is a file, not a folder"):
        MNISTDataModule(data_dir=str(tmp_path / "file" / "data"))


def gradwatch_fit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m gradwatch fit --model CNN ARGS`` in ``cwd``, offline, for two steps at most, into ``cwd/runs``."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("WANDB_SERVICE", None)  # a W&B service of this test process must not adopt the child's run
    command = [sys.executable, "-m", "gradwatch", "fit", "--model", "CNN", *args, "--trainer.max_steps", "2"]
    command += ["--trainer.default_root_dir", "runs", "--trainer.enable_progress_bar", "false"]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _truncated_mnist(root: Path) -> list[str]:
    write_mnist(root / "data")
    cut(root / "data" / "MNIST" / "raw" / "t10k-images-idx3-ubyte")
    return ["--data", "MNISTDataModule", "--data.data_dir", "data"]


def _huge_image(root: Path) -> list[str]:
    write_folder(root / "images", classes=("cat", "dog"), n=2, size=(8, 8))
    write_blank_png(root / "images" / "dog" / "huge.png", 15000, 15000)
    return ["--data", "ImageFolderDataModule", "--data.data_dir", "images", "--data.image_size", "8"]


def _unreadable_class(root: Path) -> list[str]:
    write_folder(root / "images", classes=("cat", "dog"), n=3, size=(8, 8))
    for path in (root / "images" / "dog").iterdir():
        cut(path)
    return ["--data", "ImageFolderDataModule", "--data.data_dir", "images"]


def _data_dir_is_a_file(root: Path) -> list[str]:
    (root / "data").write_text("")
    return ["--data", "CIFAR10DataModule", "--data.data_dir", "data"]


FAULTS = {
    "truncated mnist": (
        _truncated_mnist,
        "--data.data_dir: MNISTDataModule: data/MNIST/raw/t10k-images-idx3-ubyte is truncated: 7,848 bytes where its"
        " header (20×28×28) needs 15,696; delete it and the next run downloads it again",
    ),
    "val_split too large": (
        lambda root: ["--data", "DigitsDataModule", "--data.val_split", "5000"],
        "--data.val_split: DigitsDataModule: val_split=5000 leaves nothing to train on: the data has 1797 samples,"
        " test_split=0.15 holds out 270; val_split must be a count from 1 to 1526 or a fraction in (0, 1)",
    ),
    "huge image": (
        _huge_image,
        "--data.data_dir: ImageFolderDataModule: images/dog/huge.png is too large to decode (Image size (225000000"
        " pixels) exceeds limit of 178956970 pixels, could be decompression bomb DOS attack); shrink it or take it"
        " out of images",
    ),
    "unreadable class": (
        _unreadable_class,
        "--data.data_dir: ImageFolderDataModule: class folder 'images/dog' (3 files, none readable) has no readable"
        " image (e.g. images/dog/0.jpg: OSError: ",
    ),
    "data_dir is a file": (
        _data_dir_is_a_file,
        "--data.data_dir: CIFAR10DataModule: data_dir 'data' is a file, not a folder",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
def test_a_fault_in_the_data_is_one_line_before_any_run(fault, tmp_path):
    make, message = FAULTS[fault]
    run = gradwatch_fit(*make(tmp_path), cwd=tmp_path)
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    (line,) = [line for line in run.stderr.splitlines() if "error" in line.lower()]
    assert line.startswith(f"gradwatch: error: {message}"), line
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())  # no run folder, no W&B run, no checkpoint


@pytest.mark.slow
def test_a_last_batch_of_one_and_a_mixed_folder_train_through_the_cli(tmp_path):
    digits = gradwatch_fit(
        "--data", "DigitsDataModule", "--data.val_split", "1000", "--data.test_split", "780",
        "--data.batch_size", "8", "--trainer.max_epochs", "1", cwd=tmp_path,
    )  # fmt: skip
    assert digits.returncode == 0, digits.stderr[-3000:]  # the default CNN has batch norm: 17 samples are 8 + 8
    write_folder(tmp_path / "images", classes=("a_gray",), n=2, size=(8, 8), mode="L")
    write_folder(tmp_path / "images", classes=("b_rgb", "c_rgb"), n=3, size=(8, 8))
    mixed = gradwatch_fit("--data", "ImageFolderDataModule", "--data.data_dir", "images", cwd=tmp_path)
    assert mixed.returncode == 0, mixed.stderr[-3000:]
    warned = [line for line in mixed.stderr.splitlines() if "mix grayscale and colour" in line]
    assert len(warned) == 1
    assert "the images in images mix grayscale and colour: L (2 files, e.g. images/a_gray/0.jpg), RGB (6" in warned[0]
    hparams = [(run / "hparams.yaml").read_text() for run in (tmp_path / "runs").iterdir()]
    assert sum("in_channels: 3" in text for text in hparams) == 1  # the digits run has 1, the mixed folder 3
