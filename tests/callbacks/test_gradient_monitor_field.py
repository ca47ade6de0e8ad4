"""GradientMonitor on the setups users train with, checked against an independent float64 computation.

Lightning's own patterns (``BaseFinetuning``, manual accumulation, its demo Transformer, its autoencoder with a
compiled encoder), user-shaped models (tied weights, huge initial weights) and gradwatch's own (the CNN's frozen
backbone, the WGAN's critic steps), plus fp16 with a GradScaler. :class:`Truth` runs after the monitor in the same
hook and recomputes, per module and in float64, what the monitor must have logged.
"""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import BaseFinetuning, EarlyStopping
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

from conftest import column, make_trainer, read_metrics, steps
from gradwatch import CNN, GAN, ConfigError, DigitsDataModule
from gradwatch.callbacks import GradientMonitor
from gradwatch.health import Verdict

pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")


class Truth(pl.Callback):
    """Per-module float64 gradient norms and the optimizer's total norm, at every optimizer step.

    Each parameter counts once, for the first module that registers it; the total is what gradient clipping
    computes over the optimizer's unique gradients (``torch.nn.utils.get_total_norm``).
    """

    def __init__(self) -> None:
        self.steps: list[tuple[int, dict[str, float], float]] = []

    @override
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        mine = {id(p) for group in optimizer.param_groups for p in group["params"]}
        seen: set[int] = set()
        norms = {}
        for name, module in pl_module.named_modules():
            own = [p for p in module.parameters(recurse=False) if id(p) not in seen]
            seen.update(id(p) for p in own)
            grads = [p.grad.double().flatten() for p in own if id(p) in mine and p.grad is not None]
            if grads:
                norms[name.replace("_orig_mod.", "").replace("._orig_mod", "")] = float(torch.cat(grads).norm())
        unique = {id(p): p for group in optimizer.param_groups for p in group["params"] if p.grad is not None}
        total = float(torch.nn.utils.get_total_norm([p.grad.double() for p in unique.values()]))
        self.steps.append((trainer.fit_loop.epoch_loop._batches_that_stepped, norms, total))


def at_step(metrics, step: int) -> dict[str, float]:
    """Every key logged at ``step`` and its (last) value there."""
    found = {}
    for key in metrics.columns:
        steps, values = metrics.series(key)
        if (steps == step).any():
            found[key] = float(values[steps == step][-1])
    return found


def check_against_truth(metrics, truth: Truth, total_key: str = "grad/norm_total") -> int:
    """Every measured step's per-layer norms and total equal the truth (rtol 1e-5); how many steps were compared."""
    compared = 0
    for step, norms, total in truth.steps:
        row = at_step(metrics, step)
        logged = {key.removeprefix("grad/norm/"): v for key, v in row.items() if key.startswith("grad/norm/")}
        if not any(name in logged for name in norms):
            continue
        assert set(norms) <= set(logged), (step, sorted(set(norms) - set(logged)))
        for name, value in norms.items():
            assert logged[name] == pytest.approx(value, rel=1e-5), (step, name)
        assert row[total_key] == pytest.approx(total, rel=1e-5), step
        compared += 1
    return compared


def loader(x: torch.Tensor, y: torch.Tensor, batch_size: int = 16) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def images(n: int = 96, channels: int = 3, size: int = 8) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    return loader(torch.randn(n, channels, size, size, generator=generator), torch.randint(0, 4, (n,)))


class FeatureExtractorClassifier(pl.LightningModule):
    """Lightning's fine-tuning example: a feature extractor and a classifier, optimizing what is trainable."""

    def __init__(self) -> None:
        super().__init__()
        self.feature_extractor = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.classifier(self.feature_extractor(x)), y)

    def configure_optimizers(self):
        return torch.optim.Adam(filter(lambda p: p.requires_grad, self.parameters()), lr=1e-3)


class FeatureExtractorFreezeUnfreeze(BaseFinetuning):
    """Lightning's documented ``BaseFinetuning`` callback: frozen, then unfrozen as a new param group."""

    def __init__(self, unfreeze_at_epoch: int = 1) -> None:
        super().__init__()
        self._unfreeze_at_epoch = unfreeze_at_epoch

    def freeze_before_training(self, pl_module) -> None:
        self.freeze(pl_module.feature_extractor)

    def finetune_function(self, pl_module, current_epoch, optimizer) -> None:
        if current_epoch == self._unfreeze_at_epoch:
            self.unfreeze_and_add_param_group(modules=pl_module.feature_extractor, optimizer=optimizer, train_bn=True)


# Lightning's example keeps batch norms trainable (train_bn=True), so they are in the optimizer before the unfreeze;
# it warns that it skips them when it adds the rest as a new param group.
@pytest.mark.filterwarnings("ignore:The provided params to be frozen already exist")
def test_base_finetuning_measures_the_unfrozen_layers_from_the_step_they_train(tmp_path):
    monitor, truth = GradientMonitor(log_every_n_steps=1, flow_every_n_epochs=None), Truth()
    trainer = make_trainer(
        tmp_path, max_steps=-1, max_epochs=2, callbacks=[FeatureExtractorFreezeUnfreeze(), monitor, truth]
    )
    trainer.fit(FeatureExtractorClassifier(), images())  # 6 steps an epoch
    rows = read_metrics(tmp_path / "csv" / "metrics.csv")
    assert check_against_truth(rows, truth) == 12
    first = "grad/norm/feature_extractor.0"
    assert steps(rows, first) == list(range(6, 12))
    assert steps(rows, "grad/norm/classifier.2") == list(range(12))
    # The layer order (for reports and dashboards) was logged again, input first, once the extractor trained.
    hparams = (tmp_path / "csv" / "hparams.yaml").read_text()
    assert hparams.index("feature_extractor.0") < hparams.index("feature_extractor.3") < hparams.index("classifier.2")
    (group,) = monitor.tracker.groups
    assert group.names == ("feature_extractor.0", "feature_extractor.1", "feature_extractor.3", "classifier.2")
    assert np.isnan(group.history["feature_extractor.0"][:6]).all()


def test_cnn_with_a_frozen_backbone_is_measured_whole_after_the_unfreeze(tmp_path):
    # gradwatch's own transfer-learning switch: the backbone is frozen for the first epoch (one optimizer, with
    # every parameter in it), then trained with the head.
    model = CNN(depth=2, width=4, freeze_backbone_epochs=1, num_classes=4, in_channels=3)
    monitor, truth = GradientMonitor(log_every_n_steps=1, flow_every_n_epochs=None), Truth()
    make_trainer(tmp_path, max_steps=-1, max_epochs=2, callbacks=[monitor, truth]).fit(model, images())
    rows = read_metrics(tmp_path / "csv" / "metrics.csv")
    assert check_against_truth(rows, truth) == 12
    # In epoch 0 only the head and the batch norms (train_bn=True) train; from step 6 every layer does.
    assert steps(rows, "grad/norm/backbone.stem.conv") == list(range(6, 12))
    assert monitor.tracker.groups[0].names[0] == "backbone.stem.conv"


class ManualAccumulation(pl.LightningModule):
    """Lightning's manual-optimization accumulation pattern: ``opt.step()`` every other batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        x, y = batch
        self.manual_backward(nn.functional.cross_entropy(self.net(x), y) / 2)
        if (batch_idx + 1) % 2 == 0:
            opt.step()
            opt.zero_grad()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_manual_accumulation_is_measured_in_the_optimizers_own_steps(tmp_path):
    monitor, truth = GradientMonitor(log_every_n_steps=2, flow_every_n_epochs=None), Truth()
    x, y = torch.randn(24 * 8, 8), torch.randint(0, 4, (24 * 8,))
    trainer = make_trainer(tmp_path, max_steps=-1, max_epochs=1, callbacks=[monitor, truth], log_every_n_steps=2)
    trainer.fit(ManualAccumulation(), loader(x, y, batch_size=8))  # 24 batches, 12 optimizer steps
    (group,) = monitor.tracker.groups
    assert group.optimizer_steps == 12
    assert group.measured == 6  # every second step of the optimizer's 12, not every second batch's half of that
    rows = read_metrics(tmp_path / "csv" / "metrics.csv")
    assert check_against_truth(rows, truth) == 6
    assert len(column(rows, "grad/update_ratio/net.0")) == 5  # a snapshot one optimizer step before each but the 1st


def test_wgan_generator_is_measured_at_each_of_its_own_steps(tmp_path):
    # n_critic=5: the generator steps once in five batches. Measured every 2 of each optimizer's own steps.
    model = GAN(latent_dim=8, g_width=8, d_width=8, loss="wgan-gp", n_critic=5, d_norm="layer")
    monitor, truth = GradientMonitor(log_every_n_steps=2, flow_every_n_epochs=None), Truth()
    trainer = make_trainer(tmp_path, max_steps=-1, max_epochs=1, limit_train_batches=20, callbacks=[monitor, truth])
    trainer.fit(model, DigitsDataModule(batch_size=32))
    groups = {group.name: group for group in monitor.tracker.groups}
    assert groups["discriminator"].optimizer_steps == 20
    assert groups["generator"].optimizer_steps == 4
    assert (groups["discriminator"].measured, groups["generator"].measured) == (10, 2)
    rows = read_metrics(tmp_path / "csv" / "metrics.csv")
    critic = Truth()
    critic.steps = [s for s in truth.steps if any(name.startswith("discriminator") for name in s[1])]
    generator = Truth()
    generator.steps = [s for s in truth.steps if any(name.startswith("generator") for name in s[1])]
    assert check_against_truth(rows, critic, "grad/norm_total/discriminator") == 10
    assert check_against_truth(rows, generator, "grad/norm_total/generator") == 2
    assert groups["generator"].names[0] == "generator.stem.0"


class TiedLanguageModel(pl.LightningModule):
    """A user's small language model whose output layer shares the embedding's weight."""

    def __init__(self, vocab: int = 32, width: int = 16) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, width)
        self.mixer = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab)
        self.head.weight = self.embedding.weight

    def training_step(self, batch, batch_idx):
        tokens, targets = batch
        logits = self.head(torch.tanh(self.mixer(self.embedding(tokens))))
        return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def test_tied_weights_count_once_and_the_total_is_the_clipping_norm(tmp_path):
    monitor, truth = GradientMonitor(log_every_n_steps=1, flow_every_n_epochs=None), Truth()
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 32, (64, 6), generator=generator)
    trainer = make_trainer(tmp_path, max_steps=4, callbacks=[monitor, truth], gradient_clip_val=1.0)
    trainer.fit(TiedLanguageModel(), loader(tokens, tokens.roll(1, dims=1)))
    rows = read_metrics(tmp_path / "csv" / "metrics.csv")
    assert check_against_truth(rows, truth) == 4
    (group,) = monitor.tracker.groups
    assert group.names == ("embedding", "mixer", "head")
    assert group.stats.layers[2].params == (trainer.lightning_module.head.bias,)  # the weight is the embedding's
    # The clip rate compares the same total with the threshold clipping uses.
    clipped = sum(total > 1.0 for _, _, total in truth.steps)
    assert column(rows, "grad/clip_rate")[-1] == pytest.approx(clipped / 4)


class LitAutoEncoder(pl.LightningModule):
    """Lightning's autoencoder, with its encoder compiled on its own."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
        self.decoder = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 16))

    def training_step(self, batch, batch_idx):
        x, _ = batch
        return nn.functional.mse_loss(self.decoder(self.encoder(x)), x)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


@pytest.mark.slow  # dynamo compiles the encoder
def test_a_compiled_submodule_keeps_the_forward_order(tmp_path):
    torch._dynamo.reset()
    model = LitAutoEncoder()
    model.encoder = torch.compile(model.encoder, backend="aot_eager")
    monitor, truth = GradientMonitor(log_every_n_steps=1, flow_every_n_epochs=None), Truth()
    try:
        make_trainer(tmp_path, max_steps=3, callbacks=[monitor, truth]).fit(
            model, loader(torch.randn(48, 16), torch.zeros(48))
        )
    finally:
        torch._dynamo.reset()
    (group,) = monitor.tracker.groups
    assert group.names == ("encoder.0", "encoder.2", "decoder.0", "decoder.2")
    rows = read_metrics(tmp_path / "csv" / "metrics.csv")
    assert check_against_truth(rows, truth) == 3
    # Attenuation compares the input-side layer with the output-side one.
    norms = truth.steps[-1][1]
    expected = math.log10(norms["encoder.0"] / norms["decoder.2"])
    assert column(rows, "health/attenuation")[-1] == pytest.approx(expected, rel=1e-5)


def test_lightning_demo_transformer_matches_the_independent_norms(tmp_path):
    from lightning.pytorch.demos import Transformer

    class TinyTransformer(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = Transformer(vocab_size=40, ninp=16, nhead=2, nhid=16, nlayers=1, dropout=0.0)

        def training_step(self, batch, batch_idx):
            inputs, target = batch
            return nn.functional.nll_loss(self.model(inputs, target), target.view(-1))

        def configure_optimizers(self):
            return torch.optim.SGD(self.model.parameters(), lr=0.1)

    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 40, (32, 6), generator=generator)
    monitor, truth = GradientMonitor(log_every_n_steps=1, flow_every_n_epochs=None), Truth()
    make_trainer(tmp_path, max_steps=3, callbacks=[monitor, truth]).fit(TinyTransformer(), loader(tokens, tokens))
    rows = read_metrics(tmp_path / "csv" / "metrics.csv")
    assert check_against_truth(rows, truth) == 3
    (group,) = monitor.tracker.groups
    assert group.names[0] == "model.embedding"
    assert group.names[-1] == "model.decoder"
    assert len(group.names) == len(truth.steps[0][1])


class HugeInit(pl.LightningModule):
    """A user's network whose weights start 1000 times too large."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
        with torch.no_grad():
            for p in self.net.parameters():
                p.mul_(1000.0)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def test_exploding_before_any_update_blames_the_initialization(tmp_path, caplog):
    monitor = GradientMonitor(log_every_n_steps=1, flow_every_n_epochs=None)
    with caplog.at_level(logging.WARNING, logger="gradwatch"):
        make_trainer(tmp_path, max_steps=1, callbacks=[monitor]).fit(
            HugeInit(), loader(torch.randn(32, 8), torch.randn(32, 4))
        )
    (line,) = [r.getMessage() for r in caplog.records if "exploding" in r.getMessage()]
    assert "step 0: exploding gradients" in line
    assert "weights too large before any update" in line
    assert "learning rate" not in line
    assert "lr=" not in line


def fp16_fit(tmp_path, *callbacks, init_scale: float, steps: int = 12):
    """A CNN in fp16 autocast on CPU with a GradScaler (Lightning creates none on CPU by itself)."""
    from lightning.pytorch.plugins import MixedPrecision

    pl.seed_everything(0, verbose=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    trainer = make_trainer(
        tmp_path, max_steps=steps, callbacks=list(callbacks), plugins=[MixedPrecision("16-mixed", "cpu", scaler)]
    )
    trainer.fit(CNN(depth=2, width=4, num_classes=4, in_channels=3), images(n=16 * steps))
    return trainer, scaler


def test_fp16_scaler_calibration_is_counted_not_called_nonfinite(tmp_path, caplog):
    # A scale of 2^24 overflows fp16 at first: the scaler skips steps and halves its scale until gradients fit.
    monitor = GradientMonitor(log_every_n_steps=1, flow_every_n_epochs=None, on_nonfinite="skip", max_skips=1)
    stopper = EarlyStopping(
        monitor="health/nonfinite", mode="min", divergence_threshold=0.5, check_on_train_epoch_end=True
    )
    with caplog.at_level(logging.WARNING, logger="gradwatch"):
        trainer, scaler = fp16_fit(tmp_path, monitor, stopper, init_scale=2.0**24)
    assert trainer.global_step == 12  # neither the monitor's skip limit nor EarlyStopping ended training
    rows = read_metrics(tmp_path / "csv" / "metrics.csv")
    skips = column(rows, "grad/scaler_skips")
    assert len(skips) == 12
    assert skips[:4] == [1, 1, 1, 1]  # calibration: 2^24 is at least 16x too large for these gradients
    assert 0 in skips  # then steps are taken (and now and then one skipped again, as gradients grow)
    assert scaler.get_scale() == 2.0**24 / 2 ** sum(skips)  # every skip was counted, each halved the scale
    assert set(column(rows, "health/nonfinite")) == {0}
    assert monitor.stopped_reason is None
    assert "non-finite" not in caplog.text
    # The stall verdict reads the loss the model computed, not the one the scaler multiplied (by up to 2^24).
    (group,) = monitor.tracker.groups
    losses = [loss for _, loss in group.stall.points]
    assert losses
    assert all(0.5 < loss < 3.0 for loss in losses), losses  # a 4-class cross-entropy near ln 4 = 1.39


class NaNData(pl.Callback):
    """Put a NaN into every batch from ``step`` on: no scale can make such gradients finite."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step >= self.step:
            batch[0].view(-1)[0] = float("nan")


def test_fp16_nan_the_scaler_cannot_fix_is_a_verdict_once_its_scale_reaches_one(tmp_path):
    # Scale 4: steps 3 and 4 are skipped (4 -> 2 -> 1); at step 5 the scale is 1 and the gradients are still NaN.
    monitor = GradientMonitor(log_every_n_steps=1, flow_every_n_epochs=None, on_nonfinite="stop")
    trainer, _ = fp16_fit(tmp_path, monitor, NaNData(step=3), init_scale=4.0)
    rows = read_metrics(tmp_path / "csv" / "metrics.csv")
    assert column(rows, "health/nonfinite")[:5] == [0] * 5
    assert column(rows, "health/nonfinite")[5] > 0
    assert column(rows, "grad/scaler_skips")[3:6] == [1, 1, 1]
    assert "step 5: non-finite gradients" in monitor.stopped_reason
    assert trainer.global_step == 6
    assert [f.verdict for f in monitor.findings] == [Verdict.NONFINITE]


def test_deepspeed_is_refused_with_a_clear_error():
    from lightning.pytorch.strategies import DeepSpeedStrategy

    # DeepSpeed is not installed here (nor can a Trainer use it on CPU): the monitor looks at the strategy's type
    # before anything else, so a stand-in Trainer holding an uninitialized DeepSpeedStrategy is enough.
    trainer = SimpleNamespace(strategy=DeepSpeedStrategy.__new__(DeepSpeedStrategy), loggers=[])
    with pytest.raises(ConfigError, match="DeepSpeed is not supported: ZeRO keeps gradients in flat partitions"):
        GradientMonitor().setup(trainer, pl.LightningModule(), "fit")
