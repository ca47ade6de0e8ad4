"""Augmentation: presets, user pipelines and files, reproducible batches with any number of workers."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2

from gradwatch import DigitsDataModule
from gradwatch.data import EpochSampler, preset
from gradwatch.data.augment import reseed
from gradwatch.data.transforms import Cutout, RandomShift
from gradwatch.errors import ConfigError


def _epochs(dm: DigitsDataModule, epochs: int = 2) -> list[torch.Tensor]:
    """Every training image of each epoch, in order, as Lightning iterates them (``set_epoch`` first)."""
    dm.setup("fit")
    loader = dm.train_dataloader()
    out = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        out.append(torch.cat([x for x, _ in loader]))
    return out


def test_same_seed_same_augmented_batches_with_0_1_or_2_workers():
    runs = {
        workers: _epochs(DigitsDataModule(augment="strong", batch_size=128, num_workers=workers))
        for workers in (0, 1, 2)
    }
    for epoch in range(2):
        assert torch.equal(runs[0][epoch], runs[1][epoch])
        assert torch.equal(runs[0][epoch], runs[2][epoch])
    assert not torch.equal(runs[0][0], runs[0][1])  # each epoch is augmented anew


def test_another_seed_gives_other_augmentations_of_the_same_images():
    def first(seed: int) -> torch.Tensor:
        return _epochs(DigitsDataModule(augment="strong", seed=seed), epochs=1)[0]

    assert torch.equal(first(3), first(3))
    assert not torch.equal(first(3), first(4))


def test_augmentation_changes_training_images_only():
    plain, augmented = DigitsDataModule(), DigitsDataModule(augment="strong")
    for dm in (plain, augmented):
        dm.setup("fit")
    for name in ("val_set", "test_set"):
        loaders = [dm._loader(getattr(dm, name), shuffle=False) for dm in (plain, augmented)]
        x_plain, x_augmented = (torch.cat([x for x, _ in loader]) for loader in loaders)
        assert torch.equal(x_plain, x_augmented), name
    assert not torch.equal(_epochs(plain, 1)[0], _epochs(augmented, 1)[0])


def test_validation_batches_never_change_even_with_a_random_val_transform():
    dm = DigitsDataModule(val_transforms=A.Compose([A.CoarseDropout(p=0.5)]))
    dm.setup("fit")
    first, second = (torch.cat([x for x, _ in dm.val_dataloader()]) for _ in range(2))
    assert torch.equal(first, second)


def test_sampler_orders_depend_on_seed_and_epoch_only():
    a, b = EpochSampler(100, seed=1), EpochSampler(100, seed=1)
    a.set_epoch(5)
    b.set_epoch(5)
    assert list(a) == list(b)
    assert list(a) != list(EpochSampler(100, seed=2))
    assert sorted(EpochSampler(100, seed=-7)) == list(range(100))  # any int a user may pass as seed
    assert sorted(a) == list(range(100))
    seeded = list(EpochSampler(10, seed=1, sample_seeds=True))
    assert [i for i, _ in seeded] == list(EpochSampler(10, seed=1))
    assert len({s for _, s in seeded}) == 10


@pytest.mark.parametrize(("size", "pad"), [(8, 1), (16, 2), (32, 4), (224, 28)])
def test_presets_scale_with_the_image(size, pad):
    pipeline = preset("standard", size, 3)
    (shift,) = [t for t in pipeline.transforms if isinstance(t, RandomShift)]
    assert shift.max_shift == pad
    out = pipeline(image=np.zeros((size, size, 3), np.uint8))["image"]
    assert out.shape == (size, size, 3)


def test_presets_flip_only_where_a_mirror_image_keeps_its_label_and_jitter_colour_only_on_rgb():
    def kinds(name: str, channels: int, mirror: bool) -> set[type]:
        return {type(t) for t in preset(name, 32, channels, mirror=mirror).transforms}

    assert A.HorizontalFlip in kinds("light", 3, mirror=True)
    assert A.HorizontalFlip not in kinds("strong", 1, mirror=False)
    assert A.HueSaturationValue in kinds("strong", 3, mirror=True)
    assert A.HueSaturationValue not in kinds("strong", 1, mirror=True)
    assert {RandomShift, A.Affine, Cutout} <= kinds("strong", 1, mirror=True)
    assert not DigitsDataModule.mirror  # a mirrored digit is another symbol


@pytest.mark.parametrize("name", ["light", "standard", "strong"])
def test_every_preset_round_trips_through_an_albumentations_file(name, tmp_path):
    path = tmp_path / f"{name}.yaml"
    A.save(preset(name, 8, 1), str(path), data_format="yaml")
    assert "gradwatch.data.transforms.RandomShift" in path.read_text()
    loaded = DigitsDataModule(augment=str(path)).train_pipeline
    assert A.to_dict(loaded) == A.to_dict(preset(name, 8, 1))


def test_random_shift_is_pad_and_random_crop():
    image = np.arange(5 * 6 * 2, dtype=np.uint8).reshape(5, 6, 2)
    padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            crop = padded[2 - dy : 7 - dy, 2 - dx : 8 - dx]
            assert np.array_equal(RandomShift(max_shift=2).apply(image, dy=dy, dx=dx), crop), (dy, dx)
    shift = RandomShift(max_shift=3)
    reseed(shift, 0)
    draws = {tuple(shift.get_params().values()) for _ in range(400)}
    assert draws == {(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)}


def test_cutout_fills_one_hole_of_the_requested_size():
    image = np.full((40, 50, 3), 200, np.uint8)
    cutout = Cutout(size_range=(0.2, 0.4), fill=0, p=1.0)
    for seed in range(50):
        reseed(cutout, seed)
        out = cutout(image=image)["image"]
        rows, cols = np.nonzero((out == 0).all(-1))
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert (out == 0).all(-1).sum() == height * width  # one rectangle
        assert 8 <= height <= 16
        assert 10 <= width <= 20
    assert (image == 200).all()  # the input is left alone


def test_unknown_preset_names_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        DigitsDataModule(augment="strog")
    assert str(info.value).startswith(
        "unknown augment preset 'strog'; valid: light, none, standard, strong (did you mean 'strong'?)"
    )
    assert info.value.param == "augment"


@pytest.mark.parametrize("data_format", ["yaml", "json"])
def test_an_albumentations_file_in_either_format(data_format, tmp_path):
    pipeline = A.Compose([A.HorizontalFlip(p=1.0), A.RandomBrightnessContrast(p=1.0), Cutout(p=1.0)])
    path = tmp_path / f"augment.{data_format}"
    A.save(pipeline, str(path), data_format=data_format)
    dm = DigitsDataModule(augment=str(path))
    assert A.to_dict(dm.train_pipeline) == A.to_dict(pipeline)
    assert dm.hparams.augment == str(path)
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))[0].shape[1:] == (1, 8, 8)


@pytest.mark.parametrize(
    ("text", "suffix", "match"),
    [
        ("transform: [unclosed", ".yaml", r"is not an albumentations pipeline: \w+Error: "),
        ('{"transform": {"__class_fullname__": "NoSuchTransform", "p": 1.0}}', ".json", r"NoSuchTransform"),
        (None, ".yaml", r"does not exist"),
        ("", ".txt", r"must end in .yaml, .yml or .json"),
    ],
)
def test_bad_augment_files(text, suffix, match, tmp_path):
    path = tmp_path / f"augment{suffix}"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        DigitsDataModule(augment=str(path))
    assert info.value.param == "augment"


def test_a_users_pipeline_is_used_and_logged_as_a_dict():
    dm = DigitsDataModule(augment=A.Compose([A.HorizontalFlip(p=1.0)]))
    dm.setup("fit")
    assert dm.hparams.augment["transform"]["transforms"][0]["__class_fullname__"] == "HorizontalFlip"
    x, _ = next(iter(dm._loader(dm.train_set, shuffle=False)))
    plain = torch.from_numpy(dm.train_set.images[: len(x)]).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.equal(x, plain.flip(-1))


@pytest.mark.parametrize(
    ("pipeline", "match"),
    [
        (A.Compose([A.RandomCrop(6, 6)]), r"augment pipeline turns 8×8×1 images into 6×6×1; it must keep the"),
        (
            A.Compose([A.RandomCrop(16, 16)]),
            r"augment pipeline fails on 8×8×1 images: CropSizeError: Crop size .* exceeds",
        ),
    ],
)
def test_a_pipeline_that_cannot_produce_the_image_size_fails_at_construction(pipeline, match):
    with pytest.raises(ConfigError, match=match):
        DigitsDataModule(augment=pipeline)


def test_train_and_val_transforms_replace_the_pipelines_and_float_output_passes_through():
    normalize = A.Compose([A.Normalize(mean=0.5, std=0.5), ToTensorV2()])  # the same [-1, 1] mapping, user-made
    ours, theirs = DigitsDataModule(), DigitsDataModule(train_transforms=normalize, val_transforms=normalize)
    for dm in (ours, theirs):
        dm.setup("fit")
    torch.testing.assert_close(next(iter(theirs.val_dataloader()))[0], next(iter(ours.val_dataloader()))[0])
    torch.testing.assert_close(next(iter(theirs.train_dataloader()))[0], next(iter(ours.train_dataloader()))[0])
    with pytest.raises(ConfigError, match=r"pass augment='light' or train_transforms, not both"):
        DigitsDataModule(augment="light", train_transforms=normalize)


def test_a_resumed_fit_trains_on_the_batches_an_uninterrupted_fit_would(tmp_path):
    """The Trainer sets the sampler's epoch: epoch e after a resume is what ``set_epoch(e)`` yields, augmented."""
    import lightning.pytorch as pl

    from conftest import make_trainer
    from gradwatch import CNN

    seen: list[torch.Tensor] = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch[0].clone())

    first = make_trainer(tmp_path / "a", max_epochs=1, max_steps=-1, limit_val_batches=0)
    first.fit(CNN(depth=1, width=4), datamodule=DigitsDataModule(augment="standard", batch_size=256))
    first.save_checkpoint(tmp_path / "epoch0.ckpt")
    resumed = make_trainer(tmp_path / "b", max_epochs=3, max_steps=-1, limit_val_batches=0, callbacks=[Record()])
    resumed.fit(
        CNN(depth=1, width=4),
        datamodule=DigitsDataModule(augment="standard", batch_size=256),  # a fresh sampler, at epoch 0
        ckpt_path=tmp_path / "epoch0.ckpt",
    )
    expected = _epochs(DigitsDataModule(augment="standard", batch_size=256), epochs=3)
    assert torch.equal(torch.cat(seen), torch.cat(expected[1:]))
