"""The subclassing contract: users override ``build_*`` and the loss, and register their own layers by name."""

import functools

import torch
import torch.nn.functional as F
from torch import nn

from conftest import column, read_metrics
from gradwatch import CNN, GAN, RNN, AddingProblemDataModule, DigitsDataModule
from gradwatch.layers import ACTIVATIONS, NORMS, register_activation, register_norm


class MLPHeadCNN(CNN):
    """A custom head: two layers with dropout instead of one linear layer."""

    def build_head(self, num_features: int) -> nn.Module:
        return nn.Sequential(
            nn.Linear(num_features, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, self.hparams.num_classes)
        )


class TinyBackboneCNN(CNN):
    """A custom backbone: anything with ``num_features``."""

    def build_backbone(self) -> nn.Module:
        backbone = nn.Sequential(
            nn.Conv2d(self.hparams.in_channels, 6, 3), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten()
        )
        backbone.num_features = 6
        return backbone


class HuberMeanPoolRNN(RNN):
    """A custom loss and a custom readout (mean over time instead of the last step)."""

    def compute_loss(self, outputs, targets):
        return F.huber_loss(outputs, targets.view_as(outputs), delta=0.5)

    def readout(self, states):
        return states.mean(dim=1)


def _fit(model, datamodule, trainer_factory, tmp_path, steps=4):
    trainer_factory(max_steps=steps).fit(model, datamodule=datamodule)
    return read_metrics(tmp_path / "csv" / "metrics.csv")


def test_custom_head_is_built_from_data_shapes_and_trains(trainer_factory, tmp_path):
    model = MLPHeadCNN(depth=2, width=8)
    rows = _fit(model, DigitsDataModule(), trainer_factory, tmp_path)
    assert isinstance(model.head, nn.Sequential)
    assert model.head[-1].out_features == 10
    assert len(column(rows, "train/loss")) == 4


def test_custom_backbone_feeds_the_default_head(trainer_factory, tmp_path):
    model = TinyBackboneCNN()
    _fit(model, DigitsDataModule(), trainer_factory, tmp_path)
    assert model.head.in_features == 6


def test_custom_loss_and_readout(trainer_factory, tmp_path):
    model = HuberMeanPoolRNN(cell="gru", hidden_size=8)
    rows = _fit(model, AddingProblemDataModule(seq_len=12, num_train=256), trainer_factory, tmp_path)
    x, y = torch.randn(3, 12, 2), torch.rand(3, 1)
    expected = F.huber_loss(model.head(model.backbone(x).mean(1)), y, delta=0.5)
    torch.testing.assert_close(model.compute_loss(model(x), y), expected)
    assert len(column(rows, "train/loss")) == 4


class Swish(nn.Module):
    """A user activation with a learnable slope: it has parameters of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * torch.sigmoid(self.beta * x)


def test_registered_activation_and_norm_are_selected_by_name_in_every_family(trainer_factory, tmp_path):
    register_activation("learned_swish", Swish)
    register_norm("batch_no_affine", functools.partial(nn.BatchNorm2d, affine=False))
    try:
        cnn = CNN(depth=2, width=4, activation="learned_swish", norm="batch_no_affine")
        _fit(cnn, DigitsDataModule(), trainer_factory, tmp_path)
        swishes = [m for m in cnn.modules() if isinstance(m, Swish)]
        assert len(swishes) == 3  # stem + 2 blocks
        assert all(s.beta.grad is not None for s in swishes)
        rnn = RNN(cell="rnn", activation="learned_swish", task="regression", input_size=2, num_outputs=1)
        assert any(isinstance(m, Swish) for m in rnn.modules())
        gan = GAN(g_activation="learned_swish", g_norm="batch_no_affine", in_channels=1, image_size=8, g_width=8)
        assert any(isinstance(m, Swish) for m in gan.generator.modules())
    finally:
        ACTIVATIONS.unregister("learned_swish")
        NORMS.unregister("batch_no_affine")
