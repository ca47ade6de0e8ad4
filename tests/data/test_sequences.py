import pytest
import torch

from gradwatch import AddingProblemDataModule
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
