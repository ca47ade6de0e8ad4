from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch._dynamo.utils import counters

from conftest import column, make_trainer, read_metrics, steps
from gradwatch import CNN, GAN, ConfigError, DigitsDataModule
from gradwatch.callbacks.activation_monitor import ActivationMonitor

CNN_ACTS = ("backbone.stem.act", "backbone.blocks.0.act", "backbone.blocks.1.act")


def tiny_cnn(**overrides: Any) -> CNN:
    torch.manual_seed(0)
    return CNN(**{"depth": 2, "width": 4, "num_classes": 10, "in_channels": 1, **overrides})


def act_steps(metrics, key: str) -> list[int]:
    return steps(metrics, key)


def hook_count(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in module.modules())


class RecordingCNN(CNN):
    """A CNN that notes how many forward hooks exist whenever it trains or validates."""

    def __init__(self) -> None:
        super().__init__(depth=2, width=4, num_classes=10, in_channels=1)
        self.seen: list[tuple[str, int, int]] = []

    def _note(self, stage: str) -> None:
        self.seen.append((stage, self.trainer.fit_loop.epoch_loop._batches_that_stepped, hook_count(self)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self._note("train")
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self._note("val")
        return super().validation_step(batch, batch_idx)


@pytest.mark.parametrize(
    ("every_n_steps", "log_every_n_steps", "max_steps", "sampled"),
    [(2, 1, 5, [0, 2, 4]), (None, 3, 7, [0, 3, 6])],
)
def test_logs_act_columns_at_sampling_steps_only(
    tmp_path: Path, every_n_steps: int | None, log_every_n_steps: int, max_steps: int, sampled: list[int]
) -> None:
    trainer = make_trainer(
        tmp_path,
        max_steps=max_steps,
        log_every_n_steps=log_every_n_steps,
        callbacks=[ActivationMonitor(every_n_steps=every_n_steps)],
    )
    trainer.fit(tiny_cnn(), DigitsDataModule(batch_size=32))
    rows = read_metrics(tmp_path / "csv" / "metrics.csv")
    for layer in CNN_ACTS:
        for stat in ("dead", "mean", "std"):
            assert act_steps(rows, f"act/{stat}/{layer}") == sampled
        assert all(0.0 <= value <= 1.0 for value in column(rows, f"act/dead/{layer}"))
        assert all(value >= 0.0 for value in column(rows, f"act/mean/{layer}"))  # ReLU outputs
    assert not rows.keys("act/saturated/")
    assert "act/dead/backbone.stem.act" in trainer.callback_metrics


def test_hooks_exist_only_on_sampling_steps_and_never_in_validation(tmp_path: Path) -> None:
    model = RecordingCNN()
    trainer = make_trainer(
        tmp_path, max_steps=4, val_check_interval=1, limit_val_batches=1, callbacks=[ActivationMonitor(2)]
    )
    trainer.fit(model, DigitsDataModule(batch_size=32))
    train = [(step, hooks) for stage, step, hooks in model.seen if stage == "train"]
    assert train == [(0, 3), (1, 0), (2, 3), (3, 0)]
    assert [hooks for stage, _, hooks in model.seen if stage == "val"] == [0, 0, 0, 0]
    assert hook_count(model) == 0


def test_gan_with_manual_optimization(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GAN(in_channels=1, image_size=8, g_width=8, d_width=8, latent_dim=8)
    # Two optimizer steps per batch: three batches, each one a logging step.
    trainer = make_trainer(tmp_path, max_steps=6, callbacks=[ActivationMonitor(every_n_steps=2)])
    trainer.fit(model, DigitsDataModule(batch_size=32))
    rows = read_metrics(tmp_path / "csv" / "metrics.csv")
    for key in (
        "act/dead/generator.blocks.0.act",  # relu
        "act/saturated/generator.to_image.1",  # the output tanh
        "act/dead/discriminator.from_image.act",  # leaky relu
        "act/mean/discriminator.blocks.1.act",
    ):
        assert act_steps(rows, key) == [0, 2], key
    assert hook_count(model) == 0


def test_works_without_a_logger_and_samples_once_per_accumulated_step(tmp_path: Path) -> None:
    logged: list[int] = []

    class Counting(ActivationMonitor):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if self._sampler.attached:
                logged.append(trainer.fit_loop.epoch_loop._batches_that_stepped)
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    trainer = make_trainer(tmp_path, logger=False, max_steps=2, accumulate_grad_batches=2, callbacks=[Counting(1)])
    trainer.fit(tiny_cnn(), DigitsDataModule(batch_size=32))
    assert logged == [0, 1]
    assert {f"act/{stat}/backbone.stem.act" for stat in ("dead", "mean", "std")} <= set(trainer.callback_metrics)


def test_hooks_are_removed_when_training_fails(tmp_path: Path) -> None:
    class Failing(CNN):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self(batch[0])  # the hooks see a forward pass, then the step fails
            raise RuntimeError("boom")

    model = Failing(depth=2, width=4, num_classes=10, in_channels=1)
    trainer = make_trainer(tmp_path, callbacks=[ActivationMonitor(1)])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(model, DigitsDataModule(batch_size=32))
    assert hook_count(model) == 0


def test_warns_when_no_layer_matches(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_steps=1, callbacks=[ActivationMonitor(1, include=["head*"])])
    with pytest.warns(UserWarning, match="no activation layer"):
        trainer.fit(tiny_cnn(), DigitsDataModule(batch_size=32))
    assert not [key for key in trainer.callback_metrics if key.startswith("act/")]


def test_compiled_backbone_samples_without_graph_breaks(tmp_path: Path) -> None:
    torch._dynamo.reset()
    counters.clear()
    model = tiny_cnn()
    model.backbone = torch.compile(model.backbone, backend="eager")
    trainer = make_trainer(tmp_path, max_steps=4, callbacks=[ActivationMonitor(every_n_steps=2)])
    with torch._dynamo.config.patch(skip_nnmodule_hook_guards=False):
        trainer.fit(model, DigitsDataModule(batch_size=32))
    rows = read_metrics(tmp_path / "csv" / "metrics.csv")
    # Steps 0 and 2 compile a graph with hooks, then one without; step 2 switches back to the first.
    assert act_steps(rows, "act/dead/backbone.blocks.1.act") == [0, 2]  # `_orig_mod` is not part of the name
    assert not counters["graph_break"]
    torch._dynamo.reset()


def test_warns_that_compiled_models_need_hook_guards(tmp_path: Path) -> None:
    model = tiny_cnn()
    model.backbone = torch.compile(model.backbone, backend="eager")  # compiles lazily: this test never runs it
    monitor = ActivationMonitor(1)
    with (
        torch._dynamo.config.patch(skip_nnmodule_hook_guards=True),
        pytest.warns(UserWarning, match="skip_nnmodule_hook_guards"),
    ):
        monitor.on_train_start(make_trainer(tmp_path), model)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"every_n_steps": -5}, "every_n_steps"),
        ({"every_n_steps": 2.5}, "every_n_steps"),
        ({"every_n_steps": True}, "every_n_steps"),
        ({"include": [""]}, "include"),
        ({"include": 3}, "include"),
        ({"exclude": ["ok", None]}, "exclude"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(ConfigError) as info:
        ActivationMonitor(**kwargs)
    assert info.value.param == param
