"""Shapes come from the DataModule when not given, and a given shape that contradicts the data is an error."""

import lightning.pytorch as pl
import pytest
import torch

from gradwatch import CNN, RNN, AddingProblemDataModule, DigitsDataModule
from gradwatch.errors import ConfigError


def test_cnn_reads_channels_and_classes_from_the_datamodule(trainer_factory):
    model = CNN(depth=1, width=4)
    assert not hasattr(model, "backbone")  # nothing to build before the data is known
    trainer_factory(max_steps=1).fit(model, datamodule=DigitsDataModule(image_size=12))
    assert (model.hparams.in_channels, model.hparams.num_classes) == (1, 10)
    assert model.head.out_features == 10


def test_rnn_reads_task_input_and_outputs_from_the_datamodule(trainer_factory):
    model = RNN(hidden_size=4)
    trainer_factory(max_steps=1).fit(model, datamodule=AddingProblemDataModule(seq_len=8, num_train=64))
    assert (model.hparams.task, model.hparams.input_size, model.hparams.num_outputs) == ("regression", 2, 1)


@pytest.mark.parametrize(
    ("model", "datamodule", "match"),
    [
        (
            lambda: CNN(num_classes=5),
            DigitsDataModule,
            r"CNN\(num_classes=5\) contradicts DigitsDataModule, whose data has num_classes=10",
        ),
        (lambda: CNN(in_channels=3), DigitsDataModule, r"CNN\(in_channels=3\) contradicts .* in_channels=1"),
        (lambda: RNN(input_size=3), AddingProblemDataModule, r"RNN\(input_size=3\) contradicts .* input_size=2"),
        (lambda: RNN(task="classification"), AddingProblemDataModule, "task='regression'"),
        (lambda: RNN(), DigitsDataModule, "RNN needs sequences .* DigitsDataModule provides none"),
        (lambda: CNN(), AddingProblemDataModule, "CNN needs images .* AddingProblemDataModule provides none"),
    ],
)
def test_mismatch_fails_before_training(model, datamodule, match, trainer_factory):
    trainer = trainer_factory(max_steps=1)
    with pytest.raises(ConfigError, match=match):
        trainer.fit(model(), datamodule=datamodule())
    assert trainer.global_step == 0


def test_check_data_needs_no_trainer():
    model = CNN()
    model.check_data(DigitsDataModule())
    assert model.hparams.num_classes == 10


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
def test_without_a_datamodule_shapes_must_be_given(trainer_factory):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 1, 8, 8), torch.zeros(8).long()))
    with pytest.raises(ConfigError, match="num_classes is unknown; pass it, or fit with a DataModule"):
        trainer_factory(max_steps=1).fit(CNN(), train_dataloaders=data)
    model = CNN(num_classes=2, in_channels=1)
    trainer_factory(max_steps=1).fit(model, train_dataloaders=data)
    assert model.head.out_features == 2


def test_checkpoint_carries_the_shapes_read_from_data(trainer_factory, tmp_path):
    trainer = trainer_factory(max_steps=2)
    model = CNN(depth=2, width=4, residual=True)
    trainer.fit(model, datamodule=DigitsDataModule())
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    restored = CNN.load_from_checkpoint(path)
    x = torch.randn(3, 1, 8, 8)
    model.eval(), restored.eval()
    torch.testing.assert_close(restored(x), model(x))
    assert isinstance(restored, pl.LightningModule)
