"""GradientMonitor on real (small) trainings: the verdicts it must call, its actions, and what it logs."""

from __future__ import annotations

import functools
import logging
import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from conftest import column, make_trainer, read_metrics
from gradwatch import CNN, GAN, RNN, AddingProblemDataModule, ConfigError, DigitsDataModule
from gradwatch.callbacks import GradientHealthError, GradientMonitor
from gradwatch.health import Verdict
from gradwatch.rundir import read_verdicts

SGD = functools.partial(torch.optim.SGD, lr=0.05)


def digits(batch_size: int = 32) -> DigitsDataModule:
    return DigitsDataModule(batch_size=batch_size)


def fit(tmp_path, model, data, monitor, *callbacks, **trainer_args) -> pl.Trainer:
    trainer = make_trainer(tmp_path, callbacks=[monitor, *callbacks], **trainer_args)
    trainer.fit(model, data)
    return trainer


def metrics(tmp_path) -> list[dict[str, str]]:
    return read_metrics(tmp_path / "csv" / "metrics.csv")


def verdicts(monitor: GradientMonitor) -> dict[Verdict, tuple[str, ...]]:
    return {finding.verdict: finding.layers for finding in monitor.findings}


class InjectNaN(pl.Callback):
    """Writes a NaN into one layer's weight gradient at the given optimizer steps."""

    def __init__(self, layer: str, steps: set[int]) -> None:
        self.layer, self.steps = layer, steps

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step in self.steps:
            pl_module.get_submodule(self.layer).weight.grad.view(-1)[0] = math.nan


def test_deep_saturating_network_vanishes_and_names_the_early_layers(tmp_path, caplog):
    model = CNN(depth=12, width=4, activation="sigmoid", norm="none", residual=False)
    monitor = GradientMonitor(log_every_n_steps=2, flow_every_n_epochs=None)
    with caplog.at_level(logging.WARNING, logger="gradwatch"):
        fit(tmp_path, model, digits(), monitor, max_steps=8)
    named = verdicts(monitor)[Verdict.VANISHING]
    assert named[:3] == ("backbone.stem.conv", "backbone.blocks.0.conv", "backbone.blocks.1.conv")
    assert "head" not in named
    assert "backbone.blocks.11.conv" not in named
    # Named at the third measurement (patience 3), so within the first steps of training, and said once.
    rows = metrics(tmp_path)
    counts = column(rows, "health/vanishing")
    assert counts[:2] == [0, 0]
    assert counts[2] > 0
    assert counts[-1] == len(named)
    assert column(rows, "health/attenuation")[-1] < -4
    (line,) = [r.getMessage() for r in caplog.records if "vanishing" in r.getMessage()]
    assert "step 4: vanishing gradients in" in line
    assert "sigmoid × 12 blocks without residual or norm; try activation=relu / residual=true / norm=batch" in line
    # The run folder keeps what was said, for the report to show beside the run.
    (said,) = read_verdicts(tmp_path / "csv")
    assert line.endswith(said["line"])
    assert said["advice"] == line[line.index("likely cause: ") :]
    assert (said["step"], said["verdict"], tuple(said["layers"])) == (4, "vanishing", named)


def test_same_depth_with_relu_residual_and_batch_norm_has_no_verdict(tmp_path):
    model = CNN(depth=12, width=4, activation="relu", norm="batch", residual=True)
    monitor = GradientMonitor(log_every_n_steps=1, flow_every_n_epochs=None)
    fit(tmp_path, model, digits(), monitor, max_steps=12)
    rows = metrics(tmp_path)
    for verdict in Verdict:
        assert column(rows, f"health/{verdict.value}") == [0] * 12
    assert monitor.findings == []


class FirstVerdicts(pl.Callback):
    """Records the step at which each verdict first appears (it runs after the monitor, in callback order)."""

    def __init__(self, monitor: GradientMonitor) -> None:
        self.monitor, self.first = monitor, {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        for finding in self.monitor.findings:
            self.first.setdefault(finding.verdict, trainer.global_step)


def test_diverging_configuration_is_exploding_before_it_is_nonfinite(tmp_path, caplog):
    # A vanilla ReLU RNN with plain SGD at lr=1: the loss diverges within a few steps.
    pl.seed_everything(0)
    model = RNN(cell="rnn", activation="relu", hidden_size=32, optimizer=functools.partial(torch.optim.SGD, lr=1.0))
    monitor = GradientMonitor(log_every_n_steps=1, flow_every_n_epochs=None)
    first = FirstVerdicts(monitor)
    with caplog.at_level(logging.WARNING, logger="gradwatch"):
        fit(tmp_path, model, AddingProblemDataModule(seq_len=30, batch_size=32), monitor, first, max_steps=8)
    assert first.first[Verdict.EXPLODING] < first.first[Verdict.NONFINITE]
    step = first.first[Verdict.EXPLODING]
    assert column(metrics(tmp_path), "health/exploding")[step] >= 1
    assert f"step {step}: exploding gradients in" in caplog.text
    assert "likely cause: a learning rate too high for this network (lr=1); try lr=0.1 / gradient_clip_val=1.0" in (
        caplog.text
    )


def test_growth_between_measurements_is_exploding():
    from gradwatch.health import HealthDetector, Measurement

    detector = HealthDetector(max_growth=100)

    def measure(norm):
        return Measurement(("a", "b"), np.array([norm, norm]), np.ones(2))

    assert detector.update(measure(0.05)) == []
    assert detector.update(measure(0.4)) == []
    (finding,) = detector.update(measure(40.1))
    assert finding.verdict is Verdict.EXPLODING
    assert "grew 100× since the last measurement" in finding.evidence


NAN_LAYER = "backbone.blocks.1.conv"


def nan_fit(tmp_path, action, steps=frozenset({3}), **monitor_args):
    model = CNN(depth=3, width=4)
    monitor = GradientMonitor(on_nonfinite=action, flow_every_n_epochs=None, **monitor_args)
    trainer = make_trainer(tmp_path, max_steps=8, callbacks=[monitor, InjectNaN(NAN_LAYER, set(steps))])
    return model, monitor, trainer


def test_nan_in_one_layer_names_exactly_that_layer_and_warn_keeps_training(tmp_path, caplog):
    model, _monitor, trainer = nan_fit(tmp_path, "warn")
    with caplog.at_level(logging.WARNING, logger="gradwatch"):
        trainer.fit(model, digits())
    assert trainer.global_step == 8
    rows = metrics(tmp_path)
    assert column(rows, "health/nonfinite")[3] == 1
    assert column(rows, f"grad/nonfinite/{NAN_LAYER}")[0] == 1  # then the NaN weights spoil everything
    assert "step 3: non-finite gradients in 1 of" in caplog.text
    assert f"({NAN_LAYER}): 1 NaN/Inf gradient values" in caplog.text
    # `warn` only warns: Adam wrote the NaN into the weights.
    assert not torch.isfinite(model.get_submodule(NAN_LAYER).weight).all()


def test_skip_drops_the_bad_step_and_training_goes_on(tmp_path):
    model, monitor, trainer = nan_fit(tmp_path, "skip", log_every_n_steps=50)
    trainer.fit(model, digits())
    assert trainer.global_step == 8
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # The guard caught it on a step the monitor would not otherwise measure.
    assert column(metrics(tmp_path), "health/nonfinite") == [0, 1]
    assert monitor.stopped_reason is None


class PoisonInput(pl.Callback):
    """Writes a NaN into one input image of the batch at the given optimizer steps (bad data, not a bad layer)."""

    def __init__(self, steps: set[int]) -> None:
        self.steps = steps

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step in self.steps:
            batch[0][0, 0, 0, 0] = math.nan


@pytest.mark.parametrize("action", ["skip", "warn"])
def test_a_skipped_step_leaves_batch_norms_running_statistics_as_they_were(tmp_path, action):
    model = CNN(depth=3, width=4, norm="batch")
    monitor = GradientMonitor(on_nonfinite=action, nonfinite_guard=True, flow_every_n_epochs=None)
    trainer = make_trainer(tmp_path, max_steps=6, callbacks=[monitor, PoisonInput({2})])
    trainer.fit(model, digits())
    assert trainer.global_step == 6
    finite = all(torch.isfinite(b.float()).all() for b in model.buffers())
    images = torch.as_tensor(np.random.default_rng(0).random((4, 1, 8, 8)), dtype=torch.float32)
    predicted = model.eval()(images)
    # `warn` lets the NaN in (the case this guards against): the saved model would predict NaN.
    assert finite is (action == "skip")
    assert bool(torch.isfinite(predicted).all()) is (action == "skip")
    assert all(torch.isfinite(p).all() for p in model.parameters()) is (action == "skip")


def test_skip_stops_after_max_skips_in_a_row(tmp_path):
    model, monitor, trainer = nan_fit(tmp_path, "skip", steps={2, 3, 4, 5}, max_skips=2)
    trainer.fit(model, digits())
    assert "2 steps skipped in a row" in monitor.stopped_reason
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert trainer.global_step < 8


def test_stop_ends_training_gracefully_with_the_reason(tmp_path, caplog):
    model, monitor, trainer = nan_fit(tmp_path, "stop")
    with caplog.at_level(logging.WARNING, logger="gradwatch"):
        trainer.fit(model, digits())
    assert trainer.global_step == 4  # the bad step ends the run; the weights never saw it
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert NAN_LAYER in monitor.stopped_reason
    assert "gradwatch: stopping: step 3: non-finite gradients" in caplog.text


def test_raise_raises_before_the_weights_change(tmp_path):
    model, _monitor, trainer = nan_fit(tmp_path, "raise")
    with pytest.raises(GradientHealthError, match=f"non-finite gradients in 1 of .*{NAN_LAYER}"):
        trainer.fit(model, digits())
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_alert_goes_to_the_wandb_run(tmp_path):
    import wandb

    from gradwatch.loggers import default_loggers
    from wandb_records import read_records, run_file

    model = CNN(depth=3, width=4)
    monitor = GradientMonitor(on_nonfinite="alert", flow_every_n_epochs=None)
    loggers = default_loggers(tmp_path, run_id="alerted")
    trainer = make_trainer(tmp_path, max_steps=5, logger=loggers, callbacks=[monitor, InjectNaN(NAN_LAYER, {2, 3})])
    trainer.fit(model, digits())
    wandb.finish()
    records = read_records(run_file(tmp_path / "alerted"))
    alerts = [r.alert for r in records if r.WhichOneof("record_type") == "alert"]
    assert len(alerts) == 1  # the verdict persisted over two steps: one alert
    assert alerts[0].title == "gradwatch: nonfinite gradients"
    assert NAN_LAYER in alerts[0].text
    assert alerts[0].wait_duration == 600_000


@pytest.mark.parametrize(
    ("model", "data"),
    [
        (CNN(depth=4, width=8), DigitsDataModule(batch_size=32)),
        (RNN(cell="lstm", hidden_size=16), AddingProblemDataModule(seq_len=20, batch_size=32)),
        (GAN(latent_dim=8, g_width=8, d_width=8), DigitsDataModule(batch_size=32)),
    ],
    ids=["cnn", "rnn", "gan"],
)
def test_no_false_alarm_on_healthy_training(tmp_path, model, data):
    monitor = GradientMonitor(log_every_n_steps=2, flow_every_n_epochs=None)
    fit(tmp_path, model, data, monitor, max_steps=30)
    rows = metrics(tmp_path)
    assert len(column(rows, "health/vanishing")) >= 15
    for verdict in Verdict:
        assert set(column(rows, f"health/{verdict.value}")) == {0}, verdict


def test_gan_measures_generator_and_discriminator_separately(tmp_path):
    model = GAN(latent_dim=8, g_width=8, d_width=8, n_critic=2)
    monitor = GradientMonitor(log_every_n_steps=1, flow_every_n_epochs=None)
    fit(tmp_path, model, digits(), monitor, max_steps=8)  # manual optimization: 8 optimizer steps
    rows = metrics(tmp_path)
    # The discriminator steps every batch, the generator every second one (n_critic=2).
    assert len(column(rows, "grad/norm_total/discriminator")) == 2 * len(column(rows, "grad/norm_total/generator"))
    assert column(rows, "grad/norm/generator.stem.0")
    assert column(rows, "grad/norm/discriminator.from_image.conv")
    generator = next(g for g in monitor.tracker.groups if g.name == "generator")
    # Forward order: latent → stem → blocks → upsampling → image.
    assert generator.names[0] == "generator.stem.0"
    assert generator.names[-1] == "generator.to_image.0"


def test_layers_follow_forward_order_not_definition_order(tmp_path):
    class Reversed(CNN):
        # Declared head first: registration order would put the output layer first.
        def build(self):
            self.head_first = torch.nn.Linear(1, 1)
            super().build()

        def forward(self, x):
            return super().forward(x) + 0 * self.head_first(torch.ones(1, 1, device=x.device)).sum()

    monitor = GradientMonitor(flow_every_n_epochs=None)
    fit(tmp_path, Reversed(depth=2, width=4), digits(), monitor, max_steps=1)
    (group,) = monitor.tracker.groups
    assert group.names[0] == "backbone.stem.conv"
    assert group.names.index("head") > group.names.index("backbone.blocks.1.conv")


def test_gradient_accumulation_measures_once_per_optimizer_step(tmp_path):
    monitor = GradientMonitor(log_every_n_steps=1, flow_every_n_epochs=None)
    fit(tmp_path, CNN(depth=2, width=4), digits(), monitor, max_steps=3, accumulate_grad_batches=2)
    (group,) = monitor.tracker.groups
    assert group.steps == [0, 1, 2]


def test_clipping_is_reported_and_measured_before_clipping(tmp_path):
    monitor = GradientMonitor(log_every_n_steps=1, flow_every_n_epochs=None)
    fit(tmp_path, CNN(depth=2, width=4), digits(), monitor, max_steps=4, gradient_clip_val=1e-3)
    rows = metrics(tmp_path)
    assert min(column(rows, "grad/norm_total")) > 1e-3  # unclipped norms
    assert column(rows, "grad/clip_norm") == [1e-3] * 4
    assert column(rows, "grad/clip_rate") == [1.0] * 4


def test_bf16_mixed_precision(tmp_path):
    monitor = GradientMonitor(log_every_n_steps=1, flow_every_n_epochs=None)
    fit(tmp_path, CNN(depth=2, width=4), digits(), monitor, max_steps=3, precision="bf16-mixed")
    totals = column(metrics(tmp_path), "grad/norm_total")
    assert len(totals) == 3
    assert all(0 < t < 100 for t in totals)
    assert monitor.findings == []


def test_update_ratio_is_the_last_update_over_the_weights(tmp_path):
    # Plain SGD: the update at step k-1 is exactly lr × grad_{k-1}, so the ratio logged at step k is
    # lr × ‖grad_{k-1}‖ / ‖weights_k‖, all three read back from the CSV.
    model = CNN(depth=2, width=4, norm="none", optimizer=SGD)
    monitor = GradientMonitor(log_every_n_steps=1, flow_every_n_epochs=None)
    fit(tmp_path, model, digits(), monitor, max_steps=4)
    rows = metrics(tmp_path)
    grads, weights = column(rows, "grad/norm/head"), column(rows, "param/norm/head")
    ratio = column(rows, "grad/update_ratio/head")
    assert len(ratio) == 3  # steps 1-3: nothing was updated before step 0
    expected = [0.05 * grads[k - 1] / weights[k] for k in (1, 2, 3)]
    assert ratio == pytest.approx(expected, rel=1e-4)


def test_logs_reach_csv_and_wandb_and_callback_metrics(tmp_path):
    import wandb

    from gradwatch.loggers import default_loggers
    from wandb_records import history, run_file

    monitor = GradientMonitor(log_every_n_steps=2, histograms=True, flow_every_n_epochs=0)
    trainer = make_trainer(tmp_path, max_steps=4, logger=default_loggers(tmp_path, run_id="both"), callbacks=[monitor])
    model = CNN(depth=2, width=4)
    trainer.fit(model, digits())
    wandb.finish()
    csv_rows = read_metrics(tmp_path / "both" / "metrics.csv")
    wandb_rows = history(run_file(tmp_path / "both"))
    keys = ["grad/norm/backbone.stem.conv", "param/norm/head", "grad/norm_total", "health/vanishing"]
    for key in keys:
        logged = [row[key] for row in wandb_rows if key in row]
        assert logged == pytest.approx(column(csv_rows, key)), key
        assert len(logged) == 2
    (row,) = [row for row in wandb_rows if "grad/hist/head/values" in row][:1]
    assert row["grad/hist/head/_type"] == "histogram"
    assert sum(row["grad/hist/head/values"]) == sum(p.numel() for p in model.head.parameters())
    # The end of fit drew the gradient flow: two images and a native W&B bar chart over a table of the layers.
    flow = {key.split("/")[2] for row in wandb_rows for key in row if key.startswith("grad/flow/")}
    assert flow == {"bars", "heatmap", "chart_table"}
    assert trainer.callback_metrics["health/exploding"] == 0


def tensorboard_events(folder) -> list:
    """Every event of the TensorBoard event files under ``folder`` (TFRecord framing: length, crc, data, crc)."""
    import struct

    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack_from("<Q", data, pos)
            event = event_pb2.Event()
            event.ParseFromString(data[pos + 12 : pos + 12 + length])
            events.append(event)
            pos += 12 + length + 4
    return events


def test_tensorboard_gets_scalars_histograms_and_flow_images(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    monitor = GradientMonitor(log_every_n_steps=2, histograms=True, flow_every_n_epochs=0)
    logger = TensorBoardLogger(tmp_path, name="tb", version="")
    trainer = make_trainer(tmp_path, max_steps=4, logger=logger, callbacks=[monitor])
    model = CNN(depth=2, width=4)
    trainer.fit(model, digits())
    logger.experiment.flush()
    values = [(value.tag, value) for event in tensorboard_events(tmp_path / "tb") for value in event.summary.value]
    scalars = [v.simple_value for tag, v in values if tag == "grad/norm_total"]
    assert len(scalars) == 2
    assert all(s > 0 for s in scalars)
    histograms = [v.histo for tag, v in values if tag == "grad/hist/head"]
    assert len(histograms) == 2
    assert histograms[0].num == sum(p.numel() for p in model.head.parameters())
    images = {tag: v.image for tag, v in values if tag.startswith("grad/flow/")}
    assert set(images) == {"grad/flow/bars", "grad/flow/heatmap"}
    assert images["grad/flow/bars"].height > 100


def test_early_stopping_monitors_a_health_key(tmp_path):
    model, monitor, trainer = nan_fit(tmp_path, "warn")
    stopper = EarlyStopping(
        monitor="health/nonfinite", mode="min", divergence_threshold=0.5, check_on_train_epoch_end=True
    )
    trainer = make_trainer(
        tmp_path, max_epochs=3, limit_train_batches=4, callbacks=[monitor, stopper, InjectNaN(NAN_LAYER, {3})]
    )
    trainer.fit(model, digits())
    assert trainer.current_epoch == 1
    assert stopper.stopped_epoch == 0


def test_state_survives_checkpoint_and_resume(tmp_path):
    data = digits()
    model = CNN(depth=12, width=4, activation="sigmoid", norm="none")
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = GradientMonitor(log_every_n_steps=2, patience=4, flow_every_n_epochs=None)
    make_trainer(tmp_path, max_steps=4, callbacks=[first, checkpoint], enable_checkpointing=True).fit(model, data)
    assert first.findings == []  # two measurements: patience not reached yet
    second = GradientMonitor(log_every_n_steps=2, patience=4, flow_every_n_epochs=None)
    trainer = make_trainer(tmp_path, max_steps=8, callbacks=[second])
    trainer.fit(model, data, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    (group,) = second.tracker.groups
    assert group.steps == [0, 2, 4, 6]  # history carried over
    assert Verdict.VANISHING in verdicts(second)  # the streak went on counting: the 4th measurement decided


def test_gradient_flow_images_are_logged_and_saved(tmp_path):
    monitor = GradientMonitor(log_every_n_steps=1, flow_every_n_epochs=1)
    trainer = fit(tmp_path, CNN(depth=2, width=4), digits(), monitor, max_steps=-1, max_epochs=2, limit_train_batches=3)
    saved = sorted(p.name for p in (tmp_path / "csv" / "gradient-flow").iterdir())
    # Every epoch (steps 3 and 6); the end of fit is step 6 again, so it is not drawn twice.
    assert saved == [
        "grad-flow-bars-3.png",
        "grad-flow-bars-6.png",
        "grad-flow-heatmap-3.png",
        "grad-flow-heatmap-6.png",
    ]
    assert trainer.global_step == 6


@pytest.mark.parametrize(
    ("args", "param"),
    [
        ({"on_vanishing": "skip"}, "on_vanishing"),
        ({"on_exploding": "stpo"}, "on_exploding"),
        ({"log_every_n_steps": 0}, "log_every_n_steps"),
        ({"patience": 0}, "patience"),
        ({"max_attenuation": -1.0}, "max_attenuation"),
        ({"include": [""]}, "include"),
    ],
)
def test_bad_arguments_raise_config_error(args, param):
    with pytest.raises(ConfigError) as info:
        GradientMonitor(**args)
    assert info.value.param == param


def test_patterns_that_match_nothing_fail_before_training(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2, callbacks=[GradientMonitor(include=["encoder.*"])])
    with pytest.raises(ConfigError, match=r"no module with trainable parameters matches include=\['encoder.\*'\]"):
        trainer.fit(CNN(depth=2, width=4), digits())
    assert trainer.global_step == 0


def test_include_exclude_and_grouping(tmp_path):
    monitor = GradientMonitor(include=["backbone.*"], exclude=["*.norm"], group_depth=3, flow_every_n_epochs=None)
    fit(tmp_path, CNN(depth=3, width=4), digits(), monitor, max_steps=1)
    (group,) = monitor.tracker.groups
    assert group.names == ("backbone.stem.conv", "backbone.blocks.0", "backbone.blocks.1", "backbone.blocks.2")


def test_works_without_any_logger_and_draws_nothing_nobody_receives(tmp_path, monkeypatch):
    import gradwatch.callbacks.flow

    def never(*args, **kwargs):
        raise AssertionError("a gradient-flow image was drawn for nobody")

    monkeypatch.setattr(gradwatch.callbacks.flow, "flow_bars", never)
    monkeypatch.setattr(gradwatch.callbacks.flow, "flow_heatmap", never)
    monitor = GradientMonitor(log_every_n_steps=1, flow_every_n_epochs=0)
    trainer = fit(
        tmp_path, CNN(depth=2, width=4), digits(), monitor, max_steps=2, logger=False, default_root_dir=tmp_path
    )
    assert trainer.callback_metrics["health/vanishing"] == 0
    assert float(trainer.callback_metrics["grad/norm_total"]) > 0
    assert not (tmp_path / "gradient-flow").exists()
    assert all(group.magnitudes is None for group in monitor.tracker.groups)  # not even read off the device
