import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_learns_step, column, read_metrics
from gradwatch import RNN, AddingProblemDataModule
from gradwatch.data.sequences import CopyMemoryDataModule, SequentialDigitsDataModule
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
    assert "train/acc" not in rows.columns  # regression logs no accuracy


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


# --- multi-step readout ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize(("output_steps", "shape"), [(1, (2, 4)), (3, (2, 3, 4))])
def test_output_shape_follows_output_steps(output_steps, shape, bidirectional):
    torch.manual_seed(0)
    model = RNN(
        cell="gru", depth=2, hidden_size=5, bidirectional=bidirectional,
        task="classification", input_size=3, num_outputs=4, output_steps=output_steps,
    )  # fmt: skip
    x, y = torch.randn(2, 7, 3), torch.randint(0, 4, shape[:-1])
    logits = model(x)
    assert logits.shape == shape
    assert_learns_step(model, model.compute_loss(logits, y))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_multi_step_readout_is_the_states_at_the_last_steps(bidirectional):
    torch.manual_seed(0)
    model = RNN(
        cell="gru", hidden_size=4, bidirectional=bidirectional,
        task="classification", input_size=2, num_outputs=3, output_steps=3,
    )  # fmt: skip
    x = torch.randn(2, 6, 2)
    states = model.backbone(x)
    assert states.shape == (2, 6, 8 if bidirectional else 4)
    # Both directions' states at each of the last three steps, read by one shared head.
    torch.testing.assert_close(model.readout(states), states[:, 3:])
    torch.testing.assert_close(model(x), model.head(states[:, 3:]))


def test_output_steps_longer_than_the_sequence_is_an_error():
    model = RNN(task="classification", input_size=1, num_outputs=2, output_steps=5)
    with pytest.raises(ConfigError, match="output_steps=5 needs sequences of at least 5 steps, got 4") as info:
        model(torch.zeros(1, 4, 1))
    assert info.value.param == "output_steps"


def test_multi_step_loss_and_accuracy_count_each_step(monkeypatch):
    model = RNN(hidden_size=4, task="classification", input_size=1, num_outputs=3, output_steps=2)
    logits = torch.tensor([[[5.0, 0, 0], [0, 5, 0]], [[0, 0, 5], [0, 0, 5]]])  # predicts [[0, 1], [2, 2]]
    targets = torch.tensor([[0, 1], [2, 0]])
    monkeypatch.setattr(model, "forward", lambda x: logits)
    monkeypatch.setattr(model, "log", lambda *args, **kwargs: None)
    loss = model._step((torch.zeros(2, 4, 1), targets), "test")
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(4, 3), targets.reshape(4)))
    assert model.accuracy["test_acc"].compute().item() == pytest.approx(0.75)  # 3 of 4 symbols


class OneTargetData:
    """A sequence DataModule from before multi-step targets: no `output_steps`."""

    task, input_size, num_outputs = "regression", 2, 1


def test_output_steps_is_read_from_the_data_and_defaults_to_one():
    model = RNN(hidden_size=4)
    model.check_data(CopyMemoryDataModule(delay=5, copy_length=3, alphabet=4))
    assert (model.hparams.output_steps, model.hparams.input_size, model.hparams.num_outputs) == (3, 6, 4)
    model = RNN(hidden_size=4)
    model.check_data(OneTargetData())
    assert model.hparams.output_steps == 1
    model = RNN(hidden_size=4, task="regression", input_size=2, num_outputs=1)
    model.check_data(None)  # fitted on bare dataloaders
    assert model.hparams.output_steps == 1
    assert model(torch.zeros(3, 5, 2)).shape == (3, 1)


def test_given_output_steps_must_match_the_data():
    with pytest.raises(ConfigError, match=r"RNN\(output_steps=2\) contradicts .* output_steps=3") as info:
        RNN(output_steps=2).check_data(CopyMemoryDataModule(copy_length=3))
    assert info.value.param == "output_steps"
    with pytest.raises(ConfigError, match="output_steps must be >= 1"):
        RNN(output_steps=0)


def test_learns_copy_memory_below_chance_and_predicts_every_step(trainer_factory, tmp_path):
    torch.manual_seed(0)
    trainer = trainer_factory(max_epochs=4, max_steps=-1, limit_val_batches=1.0)
    model = RNN(cell="gru", hidden_size=32, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    dm = CopyMemoryDataModule(delay=5, copy_length=3, alphabet=4, num_train=1024, num_val=256, num_test=96)
    trainer.fit(model, datamodule=dm)
    rows = read_metrics(tmp_path / "csv" / "metrics.csv")
    assert all(math.isfinite(loss) for loss in column(rows, "train/loss"))
    # Chance: cross-entropy ln(4) = 1.39, per-symbol accuracy 0.25.
    assert column(rows, "val/loss")[-1] < 0.75 * math.log(4)
    assert column(rows, "val/acc")[-1] > 0.45
    outputs = torch.cat(trainer.predict(model, datamodule=dm))
    assert outputs.shape == (96, 3, 4)


def test_trains_and_predicts_on_sequential_digits_by_rows(trainer_factory, tmp_path):
    trainer = trainer_factory(max_steps=4, val_check_interval=4)
    model = RNN(cell="gru", hidden_size=32)
    dm = SequentialDigitsDataModule(order="row", batch_size=32)
    trainer.fit(model, datamodule=dm)
    assert (model.hparams.input_size, model.hparams.num_outputs, model.hparams.output_steps) == (8, 10, 1)
    rows = read_metrics(tmp_path / "csv" / "metrics.csv")
    losses = column(rows, "train/loss")
    assert len(losses) == 4
    assert all(math.isfinite(loss) for loss in losses)
    assert 0 <= column(rows, "val/acc")[-1] <= 1
    outputs = torch.cat(trainer.predict(model, datamodule=dm, ckpt_path=None))
    assert outputs.shape == (len(dm.test_set), 10)
