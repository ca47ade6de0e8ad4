import math

import pytest
import torch
import torch.nn.functional as F

from gradwatch import AddingProblemDataModule, DigitsDataModule
from gradwatch.data.sequences import CopyMemoryDataModule, SequenceDataModule, SequentialDigitsDataModule
from gradwatch.errors import ConfigError


def test_each_sequence_marks_one_value_in_each_half_and_the_target_is_their_sum():
    dm = AddingProblemDataModule(seq_len=30, num_train=200)
    dm.setup("fit")
    x, y = dm.train_set.tensors
    assert x.shape == (200, 30, 2)
    assert y.shape == (200, 1)
    values, markers = x[..., 0], x[..., 1]
    assert torch.all(markers[:, :15].sum(1) == 1)
    assert torch.all(markers[:, 15:].sum(1) == 1)
    torch.testing.assert_close(y[:, 0], (values * markers).sum(1))
    assert values.min() >= 0
    assert values.max() <= 1


def test_predicting_the_mean_scores_about_one_sixth():
    dm = AddingProblemDataModule(num_train=4096)
    dm.setup("fit")
    y = dm.train_set.tensors[1]
    assert ((y - 1.0) ** 2).mean().item() == pytest.approx(1 / 6, abs=0.01)


def test_seeded_and_each_split_independent_of_the_others_sizes():
    def val(num_train: int, seed: int = 0) -> torch.Tensor:
        dm = AddingProblemDataModule(num_train=num_train, seed=seed)
        dm.setup("fit")
        return dm.val_set.tensors[0]

    assert torch.equal(val(100), val(100))
    assert torch.equal(val(100), val(300))  # changing the training set leaves validation alone
    assert not torch.equal(val(100), val(100, seed=1))


def test_splits_differ():
    dm = AddingProblemDataModule(num_train=64, num_val=64, num_test=64)
    dm.setup("fit")
    assert not torch.equal(dm.train_set.tensors[0], dm.val_set.tensors[0])
    assert not torch.equal(dm.val_set.tensors[0], dm.test_set.tensors[0])


def test_datamodule_describes_its_data_for_the_model():
    assert (AddingProblemDataModule.input_size, AddingProblemDataModule.task) == (2, "regression")
    assert AddingProblemDataModule.num_outputs == 1


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [({"seq_len": 1}, "seq_len"), ({"num_train": 0}, "num_train"), ({"batch_size": 0}, "batch_size")],
)
def test_bad_arguments(kwargs, param):
    with pytest.raises(ConfigError) as info:
        AddingProblemDataModule(**kwargs)
    assert info.value.param == param


# --- the sequence contract ---------------------------------------------------------------------------------------


def test_every_sequence_datamodule_declares_the_contract_models_read():
    copy = CopyMemoryDataModule(copy_length=3, alphabet=5)
    digits = SequentialDigitsDataModule(order="row", image_size=6)
    for dm in (AddingProblemDataModule(), copy, digits):
        assert isinstance(dm, SequenceDataModule)
    assert AddingProblemDataModule.output_steps == 1
    assert (copy.input_size, copy.num_outputs, copy.output_steps, copy.task) == (7, 5, 3, "classification")
    assert (digits.input_size, digits.num_outputs, digits.output_steps, digits.task) == (6, 10, 1, "classification")


# --- copy memory -------------------------------------------------------------------------------------------------


def test_copy_memory_layout_symbols_blanks_delimiter_blanks_and_targets_are_the_symbols():
    dm = CopyMemoryDataModule(delay=4, copy_length=3, alphabet=5, num_train=50)
    dm.setup("fit")
    x, y = dm.train_set.tensors
    assert x.shape == (50, 4 + 2 * 3, 7)
    assert x.dtype == torch.float32
    assert (y.shape, y.dtype) == ((50, 3), torch.long)
    assert torch.all(x.sum(-1) == 1)  # one-hot
    blank, delimiter = 5, 6
    for tokens, symbols in zip(x.argmax(-1), y, strict=True):
        expected = [*symbols.tolist(), blank, blank, blank, delimiter, blank, blank, blank]
        assert tokens.tolist() == expected
    assert y.min() >= 0
    assert y.max() <= 4


def test_copy_memory_with_a_delay_of_one_puts_the_delimiter_right_after_the_symbols():
    dm = CopyMemoryDataModule(delay=1, copy_length=2, alphabet=3, num_train=8)
    dm.setup("fit")
    x, y = dm.train_set.tensors
    assert x.shape == (8, 5, 5)
    tokens = x.argmax(-1)
    assert torch.equal(tokens[:, :2], y)
    assert torch.all(tokens[:, 2] == 4)
    assert torch.all(tokens[:, 3:] == 3)


def test_copy_memory_chance_level_is_log_alphabet_loss_and_one_over_alphabet_accuracy():
    dm = CopyMemoryDataModule(alphabet=8, num_train=4096)
    dm.setup("fit")
    y = dm.train_set.tensors[1].flatten()
    frequencies = torch.bincount(y, minlength=8).float() / len(y)
    # The best guess that ignores the input predicts these frequencies: its loss is their entropy, its accuracy
    # the largest of them.
    entropy = -(frequencies * frequencies.log()).sum().item()
    assert entropy == pytest.approx(math.log(8), abs=0.005)
    assert frequencies.max().item() == pytest.approx(1 / 8, abs=0.01)
    uniform = torch.zeros(len(y), 8)
    assert F.cross_entropy(uniform, y).item() == pytest.approx(math.log(8))


def test_copy_memory_seeded_and_each_split_independent_of_the_others_sizes():
    def val(num_train: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
        dm = CopyMemoryDataModule(delay=3, copy_length=4, num_train=num_train, num_val=32, seed=seed)
        dm.setup("fit")
        return dm.val_set.tensors

    assert all(torch.equal(a, b) for a, b in zip(val(100), val(100), strict=True))
    assert torch.equal(val(100)[1], val(300)[1])  # changing the training set leaves validation alone
    assert not torch.equal(val(100)[1], val(100, seed=1)[1])
    dm = CopyMemoryDataModule(num_train=32, num_val=32, num_test=32)
    dm.setup("fit")
    assert not torch.equal(dm.train_set.tensors[1], dm.val_set.tensors[1])
    assert not torch.equal(dm.val_set.tensors[1], dm.test_set.tensors[1])


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"delay": 0}, "delay"),
        ({"copy_length": 0}, "copy_length"),
        ({"alphabet": 1}, "alphabet"),
        ({"num_val": 0}, "num_val"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_workers": -1}, "num_workers"),
    ],
)
def test_copy_memory_bad_arguments(kwargs, param):
    with pytest.raises(ConfigError, match=f"CopyMemoryDataModule: {param} must be") as info:
        CopyMemoryDataModule(**kwargs)
    assert info.value.param == param


# --- sequential digits -------------------------------------------------------------------------------------------


def digit_splits(**kwargs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    dm = SequentialDigitsDataModule(**kwargs)
    dm.setup("fit")
    return [split.tensors for split in (dm.train_set, dm.val_set, dm.test_set)]


@pytest.mark.parametrize(
    ("order", "image_size", "shape"),
    [("pixel", 8, (64, 1)), ("pixel", 5, (25, 1)), ("row", 8, (8, 8)), ("row", 12, (12, 12))],
)
def test_sequential_digits_shapes(order, image_size, shape):
    dm = SequentialDigitsDataModule(order=order, image_size=image_size)
    assert (dm.seq_len, dm.input_size) == shape
    (x, y), (val_x, _), _ = digit_splits(order=order, image_size=image_size)
    assert x.shape[1:] == shape
    assert val_x.shape[1:] == shape
    assert x.dtype == torch.float32
    assert y.dtype == torch.long
    assert x.min() >= -1
    assert x.max() <= 1


def test_sequential_digits_are_digits_datamodule_splits_read_in_raster_order():
    images = DigitsDataModule(image_size=8, seed=3).make_splits()
    pixels = digit_splits(order="pixel", seed=3)
    rows = digit_splits(order="row", seed=3)
    for split, (pixel_x, pixel_y), (row_x, row_y) in zip(images, pixels, rows, strict=True):
        expected = torch.from_numpy(split.images).float()[..., 0] / 127.5 - 1  # (N, 8, 8)
        assert torch.equal(pixel_y, split.labels)
        assert torch.equal(row_y, split.labels)
        torch.testing.assert_close(row_x, expected)  # step r is row r
        torch.testing.assert_close(pixel_x[:, :, 0], expected.flatten(1))  # step 8 r + c is pixel (r, c)
    assert sum(len(y) for _, y in pixels) == 1797


def test_permuted_digits_use_one_fixed_seeded_permutation_of_the_steps():
    plain = digit_splits(order="pixel")
    permuted = digit_splits(order="pixel", permute=True)
    order = SequentialDigitsDataModule(permute=True).permutation()
    assert sorted(order.tolist()) == list(range(64))
    assert not torch.equal(order, torch.arange(64))
    for (x, y), (px, py) in zip(plain, permuted, strict=True):  # the same permutation in every split
        assert torch.equal(px, x[:, order])
        assert torch.equal(py, y)
    assert torch.equal(SequentialDigitsDataModule(permute=True).permutation(), order)
    assert not torch.equal(SequentialDigitsDataModule(permute=True, seed=1).permutation(), order)
    assert SequentialDigitsDataModule().permutation() is None
    rows = SequentialDigitsDataModule(order="row", permute=True).permutation()
    assert sorted(rows.tolist()) == list(range(8))  # rows are the steps: whole rows move


@pytest.mark.parametrize(
    ("kwargs", "param", "match"),
    [
        ({"order": "pixels"}, "order", "unknown order 'pixels'; valid: pixel, row \\(did you mean 'pixel'\\?\\)"),
        ({"order": "column"}, "order", "unknown order 'column'; valid: pixel, row$"),
        ({"image_size": 0}, "image_size", "image_size must be >= 1"),
        ({"val_split": 1.5}, "val_split", "val_split must be a fraction"),
        ({"test_split": -1}, "test_split", "test_split must be a fraction"),
        ({"batch_size": 0}, "batch_size", "batch_size must be >= 1"),
    ],
)
def test_sequential_digits_bad_arguments(kwargs, param, match):
    with pytest.raises(ConfigError, match=match) as info:
        SequentialDigitsDataModule(**kwargs)
    assert info.value.param == param
    assert str(info.value).startswith("SequentialDigitsDataModule: ")
