import itertools
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_learns_step, column, read_metrics
from gradwatch import CNN, DigitsDataModule
from gradwatch.errors import ConfigError
from gradwatch.layers import ACTIVATIONS, INITS, NORMS

GRID = list(itertools.product(ACTIVATIONS.names(), NORMS.names(), [False, True], INITS.names()))


@pytest.mark.parametrize(("activation", "norm", "residual", "init"), GRID)
def test_every_axis_combination_takes_a_training_step(activation, norm, residual, init):
    torch.manual_seed(0)
    model = CNN(
        depth=3, width=4, stages=2, activation=activation, norm=norm, residual=residual, init=init,
        num_classes=3, in_channels=1,
    )  # fmt: skip
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    logits = model(x)
    assert logits.shape == (4, 3)
    assert_learns_step(model, model.compute_loss(logits, y))
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize(("size", "stages"), [(8, 1), (8, 3), (16, 3), (28, 2), (32, 4)])
def test_any_image_size_and_stage_count(size, stages):
    model = CNN(depth=5, width=4, stages=stages, num_classes=7, in_channels=3)
    assert model(torch.randn(2, 3, size, size)).shape == (2, 7)
    widths = [block.conv.out_channels for block in model.backbone.blocks]
    assert len(widths) == 5
    assert widths[-1] == 4 * 2 ** (min(stages, 5) - 1)


def test_depth_counts_hidden_blocks_and_residual_projects_where_the_shape_changes():
    model = CNN(depth=6, width=4, stages=3, residual=True, num_classes=2, in_channels=1)
    assert len(model.backbone.blocks) == 6
    projections = [i for i, block in enumerate(model.backbone.blocks) if list(block.shortcut.parameters())]
    assert projections == [2, 4]  # the first block of each later stage


def test_fit_logs_design_metric_keys(tmp_path, trainer_factory):
    trainer = trainer_factory(max_steps=6, val_check_interval=3)
    trainer.fit(CNN(depth=2, width=8), datamodule=DigitsDataModule(batch_size=32))
    trainer.test(model=trainer.lightning_module, datamodule=trainer.datamodule)
    rows = read_metrics(tmp_path / "csv" / "metrics.csv")
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc"):
        values = column(rows, key)
        assert values, key
        assert all(math.isfinite(v) for v in values), key
    assert all(0.0 <= v <= 1.0 for v in column(rows, "val/acc"))


def test_learns_digits(trainer_factory):
    pl.seed_everything(0)
    trainer = trainer_factory(max_epochs=6, max_steps=-1, limit_val_batches=1.0)
    model = CNN(depth=2, width=16, residual=True)
    trainer.fit(model, datamodule=DigitsDataModule())
    assert trainer.callback_metrics["val/acc"] > 0.8


def test_optimizer_and_scheduler_callables(trainer_factory):
    model = CNN(
        depth=1, width=4,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0),
    )  # fmt: skip
    trainer = trainer_factory(max_epochs=2, max_steps=-1, limit_train_batches=2)
    trainer.fit(model, datamodule=DigitsDataModule())
    (optimizer,) = trainer.optimizers
    assert isinstance(optimizer, torch.optim.SGD)
    assert trainer.lr_scheduler_configs[0].monitor == "val/loss"


def test_torchvision_backbone_replaces_the_classifier_and_freezes_then_trains(trainer_factory):
    model = CNN(backbone="resnet18", pretrained=False, freeze_backbone_epochs=1)
    snapshots = []

    class Snapshot(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            snapshots.append(
                (pl_module.backbone.model.conv1.weight.detach().clone(), pl_module.head.weight.detach().clone())
            )

    trainer = trainer_factory(max_epochs=2, max_steps=-1, limit_train_batches=2, callbacks=[Snapshot()])
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=16))  # built in setup: shapes come from the data
    assert model.backbone.num_features == 512
    assert model.head.out_features == 10
    (conv_0, head_0), (conv_1, head_1) = snapshots
    assert not torch.equal(head_0, head_1)
    assert not torch.equal(conv_0, conv_1)  # trained in epoch 1 ...
    assert all(p.requires_grad for p in model.backbone.parameters())


def test_frozen_backbone_does_not_move_in_the_frozen_epoch(trainer_factory):
    torch.manual_seed(0)
    model = CNN(backbone="resnet18", freeze_backbone_epochs=1, num_classes=10, in_channels=1)
    start = model.backbone.model.conv1.weight.detach().clone()
    trainer_factory(max_epochs=1, max_steps=-1, limit_train_batches=2).fit(model, datamodule=DigitsDataModule())
    torch.testing.assert_close(model.backbone.model.conv1.weight, start)  # ... but not in epoch 0


@pytest.mark.parametrize(
    ("kwargs", "param", "match"),
    [
        ({"depth": 0}, "depth", "depth must be >= 1, got 0"),
        ({"width": 0}, "width", "width must be >= 1"),
        ({"dropout": 1.0}, "dropout", r"dropout must be in \[0, 1\)"),
        ({"activation": "swish"}, "activation", "unknown activation 'swish'; valid: elu, gelu"),
        ({"norm": "spectral"}, "norm", "unknown norm 'spectral'; valid: batch, group, instance, layer, none"),
        ({"init": "he"}, "init", "unknown init 'he'"),
        ({"backbone": "resnet19"}, "backbone", "torchvision has no classification model 'resnet19'; did you mean"),
        ({"pretrained": True}, "pretrained", "needs a backbone"),
        ({"freeze_backbone_epochs": -1}, "freeze_backbone_epochs", ">= 0"),
    ],
)
def test_bad_arguments(kwargs, param, match):
    with pytest.raises(ConfigError, match=match) as info:
        CNN(**kwargs)
    assert info.value.param == param


def test_custom_loss_through_compute_loss_override(trainer_factory):
    class LabelSmoothing(CNN):
        def compute_loss(self, outputs, targets):
            return F.cross_entropy(outputs, targets, label_smoothing=0.1)

    model = LabelSmoothing(depth=1, width=4, num_classes=10, in_channels=1)
    x, y = torch.randn(3, 1, 8, 8), torch.tensor([1, 2, 3])
    torch.testing.assert_close(model.compute_loss(model(x), y), F.cross_entropy(model(x), y, label_smoothing=0.1))


def test_pretrained_weights_load_through_torchvision_from_its_cache(tmp_path, monkeypatch):
    # The real download path, minus the network: torchvision reads $TORCH_HOME/hub/checkpoints/<file> when the
    # file is there. Weights of our own stand in for ImageNet's, so the test can tell they were loaded.
    import torchvision

    weights = torchvision.models.get_model_weights("resnet18").DEFAULT
    reference = torchvision.models.resnet18(num_classes=1000)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / Path(weights.url).name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    model = CNN(backbone="resnet18", pretrained=True, num_classes=10, in_channels=1)
    torch.testing.assert_close(model.backbone.model.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(model.backbone.model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert model.head.out_features == 10  # the ImageNet classifier is replaced
    # Inputs in [-1, 1] reach the weights normalized as ImageNet images were: gray -1 is black, (0 - mean) / std.
    reference.fc = torch.nn.Identity()
    reference.eval()
    model.eval()
    black = -torch.ones(1, 1, 32, 32)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    imagenet_black = (torch.zeros(1, 3, 32, 32) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    torch.testing.assert_close(model.backbone(black), reference(imagenet_black))
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
