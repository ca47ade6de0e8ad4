import pytest
import torch

from gradwatch import DigitsDataModule
from gradwatch.errors import ConfigError


def _all(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_shapes_are_known_before_setup():
    dm = DigitsDataModule(image_size=12)
    assert dm.dims == (1, 12, 12)
    assert dm.num_classes == 10


def test_native_size_by_default_and_recorded_as_such():
    dm = DigitsDataModule()
    assert dm.dims == (1, 8, 8)
    assert dm.hparams.image_size == 8
    assert dm.hparams_initial.image_size == 8  # what loggers record


@pytest.mark.parametrize("size", [8, 16, 28])
def test_images_are_resized_and_in_minus_one_one(size):
    dm = DigitsDataModule(image_size=size)
    dm.setup("fit")
    x, y = _all(dm.train_dataloader())
    assert x.shape[1:] == (1, size, size)
    assert x.min() >= -1.0 - 1e-5
    assert x.max() <= 1.0 + 1e-5
    assert set(y.tolist()) == set(range(10))


def test_splits_are_disjoint_cover_everything_and_follow_the_fractions():
    dm = DigitsDataModule(val_split=0.2, test_split=0.1)
    dm.setup("fit")
    sizes = [len(s) for s in (dm.train_set, dm.val_set, dm.test_set)]
    assert sizes == [1797 - 359 - 180, 359, 180]
    images = [_all(dm._loader(s, shuffle=False))[0].flatten(1) for s in (dm.train_set, dm.val_set, dm.test_set)]
    rows = torch.cat(images)
    # The dataset has a few duplicate images; with none shared across splits the unique count adds up.
    assert len({tuple(r.tolist()) for r in rows}) == sum(len({tuple(r.tolist()) for r in part}) for part in images)


def test_same_seed_same_split_and_order_other_seed_differs():
    def first_batch(seed: int) -> torch.Tensor:
        dm = DigitsDataModule(seed=seed)
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))[1]

    assert torch.equal(first_batch(0), first_batch(0))
    assert not torch.equal(first_batch(0), first_batch(1))


def test_validation_batches_never_change_between_epochs():
    dm = DigitsDataModule()
    dm.setup("fit")
    first, second = _all(dm.val_dataloader()), _all(dm.val_dataloader())
    assert torch.equal(first[0], second[0])
    assert torch.equal(first[1], second[1])


def test_setup_twice_keeps_the_splits():
    dm = DigitsDataModule()
    dm.setup("fit")
    train = dm.train_set
    dm.setup("test")
    assert dm.train_set is train


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"image_size": 0}, "image_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"val_split": 1.5}, "val_split"),
        ({"test_split": 0.0}, "test_split"),
        ({"num_workers": -1}, "num_workers"),
    ],
)
def test_bad_arguments(kwargs, param):
    with pytest.raises(ConfigError) as info:
        DigitsDataModule(**kwargs)
    assert info.value.param == param
    assert str(next(iter(kwargs.values()))) in str(info.value)


def test_splits_that_leave_nothing_to_train_on():
    with pytest.raises(ConfigError, match=r"val_split \+ test_split = 1.0 leaves nothing to train on"):
        DigitsDataModule(val_split=0.5, test_split=0.5)
