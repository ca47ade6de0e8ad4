"""Image DataModules over files in their real formats: what is written is what the loaders yield."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from formats import IMAGE_DATAMODULES, build_datamodule, write_cifar, write_folder, write_mnist
from PIL import Image

from conftest import assert_learns_step, make_trainer
from gradwatch import CNN, GAN
from gradwatch.data import (
    PRESETS,
    CIFAR10DataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
)
from gradwatch.errors import ConfigError


def _all(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def _unit(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W[, C])`` as the loaders yield them: float ``(N, C, H, W)`` in ``[-1, 1]``."""
    tensor = torch.from_numpy(images if images.ndim == 4 else images[..., None]).permute(0, 3, 1, 2)
    return tensor.float() / 127.5 - 1.0


@pytest.mark.parametrize(("cls", "folder"), [(MNISTDataModule, "MNIST"), (FashionMNISTDataModule, "FashionMNIST")])
def test_mnist_idx_files_load_exactly(cls, folder, tmp_path):
    written = write_mnist(tmp_path, folder, n_train=50, n_test=20)
    dm = cls(data_dir=str(tmp_path), download=False, val_split=10, batch_size=8)
    assert (dm.dims, dm.num_classes) == ((1, 28, 28), 10)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (40, 10, 20)
    x, y = _all(dm.test_dataloader())  # the dataset's own test set, in file order
    torch.testing.assert_close(x, _unit(written["test_images"]))
    assert y.tolist() == written["test_labels"].tolist()


def test_cifar_pickled_batches_load_exactly(tmp_path):
    written = write_cifar(tmp_path, per_batch=6, n_test=10)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), download=False, val_split=0.2, batch_size=8)
    assert (dm.dims, dm.num_classes) == ((3, 32, 32), 10)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (24, 6, 10)
    x, y = _all(dm.test_dataloader())
    torch.testing.assert_close(x, _unit(written["test_images"]))
    assert y.tolist() == written["test_labels"].tolist()
    # Train and validation together are the five training batches, nothing lost, nothing shared.
    rows = torch.cat([_all(dm.val_dataloader())[0], _all(dm._loader(dm.train_set, shuffle=False))[0]]).flatten(1)
    expected = _unit(written["train_images"]).flatten(1)
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, expected.tolist()))


def test_resized_to_image_size(tmp_path):
    write_mnist(tmp_path)
    dm = MNISTDataModule(data_dir=str(tmp_path), download=False, image_size=32)
    assert dm.dims == (1, 32, 32)
    dm.setup("fit")
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (1, 32, 32)
    assert -1.0 <= x.min() <= x.max() <= 1.0


def test_missing_files_without_download_fail_at_construction(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ConfigError, match=r"lacks t10k-labels-idx1-ubyte; pass download=True") as info:
        MNISTDataModule(data_dir=str(tmp_path), download=False)
    assert info.value.param == "data_dir"
    with pytest.raises(ConfigError, match=r"cifar-10-batches-py lacks data_batch_1, .*batches.meta"):
        CIFAR10DataModule(data_dir=str(tmp_path / "empty"), download=False)


def test_failed_download_is_a_clear_error_naming_what_to_put_where(tmp_path):
    blocker = tmp_path / "MNIST" / "raw"
    blocker.parent.mkdir()
    blocker.write_text("")  # torchvision cannot create its folder where a file is: fails before any network access
    dm = MNISTDataModule(data_dir=str(tmp_path), download=True)
    with pytest.raises(ConfigError, match=r"could not download into .* put train-images-idx3-ubyte, .* into") as e:
        dm.prepare_data()
    assert e.value.param == "download"


def test_download_is_skipped_when_the_files_are_there(tmp_path):
    write_cifar(tmp_path)
    CIFAR10DataModule(data_dir=str(tmp_path), download=True).prepare_data()  # no network here: it must not try


def test_image_folder_any_size_rgb_or_gray(tmp_path):
    write_folder(tmp_path / "rgb", size=(20, 24), mode="RGB")
    write_folder(tmp_path / "gray", size=(30, 30), mode="L")
    rgb = ImageFolderDataModule(data_dir=str(tmp_path / "rgb"), image_size=16, val_split=3, test_split=3)
    gray = ImageFolderDataModule(data_dir=str(tmp_path / "gray"))
    assert (rgb.dims, rgb.num_classes, rgb.classes) == ((3, 16, 16), 3, ["cat", "dog", "owl"])
    assert (gray.dims, gray.hparams.image_size) == ((1, 30, 30), 30)  # native size, known before setup
    rgb.setup("fit")
    assert (len(rgb.train_set), len(rgb.val_set), len(rgb.test_set)) == (18, 3, 3)
    x, y = _all(rgb.train_dataloader())
    assert x.shape == (18, 3, 16, 16)
    assert set(y.tolist()) == {0, 1, 2}
    assert ImageFolderDataModule(data_dir=str(tmp_path / "gray"), channels=3).dims == (3, 30, 30)


def test_image_folder_labels_follow_the_sorted_class_folders(tmp_path):
    root = tmp_path / "images"
    for label, name in enumerate(["b_white", "a_black"]):
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (8, 8), color=255 * (1 - label)).save(root / name / f"{i}.png")
    dm = ImageFolderDataModule(data_dir=str(root), val_split=2, test_split=2)
    dm.setup("fit")
    x, y = _all(dm._loader(dm.train_set, shuffle=False))
    assert dm.classes == ["a_black", "b_white"]
    assert torch.all(x[y == 0] == -1.0)
    assert torch.all(x[y == 1] == 1.0)


def test_image_folder_with_a_test_dir(tmp_path):
    write_folder(tmp_path / "train", n=6)
    write_folder(tmp_path / "test", n=2)
    dm = ImageFolderDataModule(data_dir=str(tmp_path / "train"), test_dir=str(tmp_path / "test"), val_split=0.25)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (14, 4, 6)
    write_folder(tmp_path / "other", classes=("cat", "emu"), n=1)
    with pytest.raises(ConfigError, match=r"test_dir classes \['cat', 'emu'\] differ"):
        ImageFolderDataModule(data_dir=str(tmp_path / "train"), test_dir=str(tmp_path / "other"))


def test_unreadable_images_are_skipped_with_one_warning(tmp_path):
    root = write_folder(tmp_path / "images", n=4)
    (root / "cat" / "broken.png").write_bytes(b"not a png")
    good = (root / "dog" / "1.png").read_bytes()
    (root / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    dm = ImageFolderDataModule(data_dir=str(root), val_split=1, test_split=1)
    with pytest.warns(UserWarning, match=r"skipped 2 of 14 image files") as record:
        dm.setup("fit")
    assert len(record) == 1
    assert "broken.png" in str(record[0].message)
    assert "truncated.png" in str(record[0].message)
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 12


def test_no_readable_image_is_an_error(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "0.jpg").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=r"class folders '.*cat' \(1 files, none readable\), '.*dog' .* have no"):
        ImageFolderDataModule(data_dir=str(tmp_path), image_size=8, val_split=1, test_split=1)


@pytest.mark.parametrize(
    ("layout", "match"),
    [
        ("missing", r"data_dir '.*missing' is not a folder"),
        ("empty", r"has no class folders; it must hold one sub-folder of images per class"),
        ("no_images", r"class folder\(s\) '.*dog' hold no images"),
    ],
)
def test_bad_folders(layout, match, tmp_path):
    root = tmp_path / layout
    if layout != "missing":
        root.mkdir()
    if layout == "no_images":
        write_folder(root / "x", classes=("cat",), n=1)
        root = root / "x"
        (root / "dog").mkdir()
        (root / "dog" / "notes.txt").write_text("no image here")
    with pytest.raises(ConfigError, match=match) as info:
        ImageFolderDataModule(data_dir=str(root))
    assert info.value.param == "data_dir"


def test_images_of_different_sizes_need_an_image_size(tmp_path):
    write_folder(tmp_path / "x", classes=("cat",), n=2, size=(10, 10))
    write_folder(tmp_path / "y", classes=("dog",), n=2, size=(12, 14))
    (tmp_path / "y" / "dog").rename(tmp_path / "x" / "dog")
    with pytest.raises(ConfigError, match=r"differ in size \(10×10, 12×14, ...\); set image_size") as info:
        ImageFolderDataModule(data_dir=str(tmp_path / "x"))
    assert info.value.param == "image_size"
    assert ImageFolderDataModule(data_dir=str(tmp_path / "x"), image_size=12).dims == (3, 12, 12)


@pytest.mark.parametrize(
    ("kwargs", "param", "match"),
    [
        ({"val_split": 1.5}, "val_split", r"val_split must be a fraction in \(0, 1\) or a count, got 1.5"),
        ({"val_split": 0}, "val_split", r"got 0"),
        ({"val_split": 60}, "val_split", r"val_split=60 leaves nothing .* 60 samples; .* from 1 to 59"),
        ({"channels": 2}, "channels", r"channels must be 1, 3 or None"),
    ],
)
def test_bad_split_and_channel_arguments(kwargs, param, match, tmp_path):
    write_mnist(tmp_path, n_train=60)
    write_folder(tmp_path / "folder", n=2)

    def build() -> None:
        if param == "channels":
            ImageFolderDataModule(data_dir=str(tmp_path / "folder"), **kwargs)
        else:
            MNISTDataModule(data_dir=str(tmp_path), download=False, **kwargs).setup("fit")

    with pytest.raises(ConfigError, match=match) as info:
        build()
    assert info.value.param == param


@pytest.mark.parametrize("name", IMAGE_DATAMODULES)
@pytest.mark.parametrize("augment", PRESETS)
def test_every_preset_on_every_image_datamodule_feeds_a_training_step(name, augment, tmp_path):
    dm = build_datamodule(name, tmp_path, augment=augment, batch_size=8)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == dm.dims
    assert x.dtype == torch.float32
    assert -1.0 <= x.min() <= x.max() <= 1.0
    model = CNN(depth=2, width=4)
    model.check_data(dm)
    model.configure_model()
    assert_learns_step(model, model.compute_loss(model(x), y))


@pytest.mark.parametrize("name", IMAGE_DATAMODULES)
def test_every_image_datamodule_feeds_cnn_and_gan_without_glue(name, tmp_path):
    dm = build_datamodule(name, tmp_path, augment="light", batch_size=8)
    for model in (CNN(depth=2, width=4), GAN(g_depth=1, d_depth=1, g_width=4, d_width=4, latent_dim=4)):
        make_trainer(tmp_path / type(model).__name__, max_steps=1, limit_val_batches=1).fit(model, datamodule=dm)
        assert model.hparams.in_channels == dm.dims[0]
