import itertools

import pytest
import torch

from conftest import assert_learns_step, column, read_metrics
from gradwatch import RNN, AddingProblemDataModule
from gradwatch.errors import ConfigError
from gradwatch.layers import ACTIVATIONS, INITS, RECURRENT_NORMS

NORMS = list(RECURRENT_NORMS)
VANILLA = [
    ("rnn", act, norm, res, init)
    for act, norm, res, init in itertools.product(ACTIVATIONS.names(), NORMS, [False, True], INITS.names())
]
GATED = [
    (cell, "tanh", norm, res, init)
    for cell, norm, res, init in itertools.product(["lstm", "gru"], NORMS, [False, True], INITS.names())
]


@pytest.mark.parametrize(("cell", "activation", "norm", "residual", "init"), VANILLA + GATED)
def test_every_axis_combination_takes_a_training_step(cell, activation, norm, residual, init):
    torch.manual_seed(0)
    model = RNN(
        cell=cell, depth=2, hidden_size=6, activation=activation, norm=norm, residual=residual, init=init,
        task="regression", input_size=2, num_outputs=1,
    )  # fmt: skip
    x, y = torch.randn(4, 12, 2), torch.randn(4, 1)
    out = model(x)
    assert out.shape == (4, 1)
    assert_learns_step(model, model.compute_loss(out, y))


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_classification_and_bidirectional_readout(cell, bidirectional):
    model = RNN(
        cell=cell,
        depth=3,
        hidden_size=5,
        bidirectional=bidirectional,
        task="classification",
        input_size=3,
        num_outputs=4,
    )
    x, y = torch.randn(2, 7, 3), torch.tensor([0, 3])
    logits = model(x)
    assert logits.shape == (2, 4)
    assert_learns_step(model, model.compute_loss(logits, y))


def test_bidirectional_readout_sees_the_whole_sequence_in_both_directions():
    torch.manual_seed(0)
    model = RNN(cell="gru", hidden_size=4, bidirectional=True, task="regression", input_size=1, num_outputs=1)
    x = torch.randn(1, 6, 1)
    first, last = x.clone(), x.clone()
    first[0, 0] += 1.0
    last[0, -1] += 1.0
    base = model.readout(model.backbone(x))
    # The forward half reads at the last step and the backward half at the first: both see both ends.
    for changed in (first, last):
        diff = (model.readout(model.backbone(changed)) - base).abs()
        assert diff[0, :4].sum() > 0
        assert diff[0, 4:].sum() > 0


def test_fits_the_adding_problem_with_design_keys(trainer_factory, tmp_path):
    trainer = trainer_factory(max_steps=6, val_check_interval=3)
    trainer.fit(RNN(cell="gru", hidden_size=16), datamodule=AddingProblemDataModule(seq_len=20, num_train=192))
    rows = read_metrics(tmp_path / "csv" / "metrics.csv")
    assert len(column(rows, "train/loss")) == 6
    assert len(column(rows, "val/loss")) == 2
    assert "train/acc" not in rows[0]  # regression logs no accuracy


def test_learns_a_short_adding_problem(trainer_factory):
    trainer = trainer_factory(max_epochs=8, max_steps=-1, limit_val_batches=1.0)
    model = RNN(cell="gru", hidden_size=32, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    trainer.fit(model, datamodule=AddingProblemDataModule(seq_len=10, num_train=2048, batch_size=64))
    assert trainer.callback_metrics["val/loss"] < 0.05  # predicting the mean scores about 0.167


@pytest.mark.parametrize(
    ("kwargs", "param", "match"),
    [
        ({"cell": "transformer"}, "cell", "unknown cell 'transformer'; valid: gru, lstm, rnn"),
        ({"norm": "group"}, "norm", "norm for recurrent layers 'group'"),
        ({"activation": "relu"}, "activation", "vanilla cell only"),
        ({"cell": "rnn", "activation": "swish"}, "activation", "unknown activation 'swish'"),
        ({"depth": 0}, "depth", "depth must be >= 1"),
        ({"hidden_size": 0}, "hidden_size", "hidden_size must be >= 1"),
        ({"task": "ranking"}, "task", "unknown task 'ranking'; valid: classification, regression"),
        ({"init": "lecun"}, "init", "unknown init 'lecun'"),
    ],
)
def test_bad_arguments(kwargs, param, match):
    with pytest.raises(ConfigError, match=match) as info:
        RNN(**kwargs)
    assert info.value.param == param
