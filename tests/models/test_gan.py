import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gradwatch.errors import ConfigError
from gradwatch.layers import ACTIVATIONS, INITS, NORMS
from gradwatch.models.gan import GAN, LOSSES, SAMPLES, resolution_plan
from gradwatch.rundir import read_metrics

# Wide enough at the lowest resolution (16) that the first resampling block halves the channels (to 8), so
# residual runs exercise the projection shortcut as well as the identity one.
TINY = {"latent_dim": 8, "g_width": 16, "d_width": 16, "g_depth": 2, "d_depth": 2}
D_NORMS = [*NORMS, "spectral"]


class RandomImages(pl.LightningDataModule):
    """Random images in [-1, 1] with labels, shaped like an image DataModule (``dims``, ``num_classes``)."""

    num_classes = 10

    def __init__(self, dims: tuple[int, int, int] = (1, 8, 8), size: int = 32, batch_size: int = 8) -> None:
        super().__init__()
        self.dims = dims
        self.size = size
        self.batch_size = batch_size

    def _loader(self, seed: int) -> DataLoader:
        rng = torch.Generator().manual_seed(seed)
        images = torch.rand(self.size, *self.dims, generator=rng) * 2 - 1
        labels = torch.randint(0, self.num_classes, (self.size,), generator=rng)
        return DataLoader(TensorDataset(images, labels), batch_size=self.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader(0)

    def val_dataloader(self) -> DataLoader:
        return self._loader(1)


class OptimizerSteps(pl.Callback):
    """Records which optimizer (its index in ``trainer.optimizers``) stepped, in order."""

    def __init__(self) -> None:
        self.order: list[int] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        self.order.append(next(i for i, opt in enumerate(trainer.optimizers) if opt is optimizer))


def fit(
    model: GAN,
    tmp_path,
    *,
    datamodule: pl.LightningDataModule | None = None,
    max_steps: int = -1,
    max_epochs: int = 1,
    limit_train_batches: int = 2,
    callbacks: list[pl.Callback] | None = None,
) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=max_steps,
        max_epochs=max_epochs,
        limit_train_batches=limit_train_batches,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        logger=CSVLogger(tmp_path),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=datamodule or RandomImages())
    return trainer


def logged(trainer: pl.Trainer) -> dict[str, list[float]]:
    """Every value of every column of the CSV logger's metrics file, blanks left out."""
    metrics = read_metrics(f"{trainer.logger.log_dir}/metrics.csv")
    return {key: metrics.values(key) for key in metrics.columns}


def assert_grads(network: nn.Module) -> None:
    for name, param in network.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"


def check_backward(model: GAN, batch: int = 4) -> None:
    """One discriminator and one generator loss, backpropagated; each network's every parameter gets a gradient."""
    channels, size = model.hparams.in_channels, model.hparams.image_size
    real = torch.rand(batch, channels, size, size) * 2 - 1
    with torch.no_grad():
        fake = model.generator(model.latent(batch))
    d_loss = model.discriminator_loss(model.discriminator(real), model.discriminator(fake))
    if model.hparams.loss == "wgan-gp":
        d_loss = d_loss + model.hparams.gp_weight * model.gradient_penalty(real, fake)
    assert torch.isfinite(d_loss)
    d_loss.backward()
    assert_grads(model.discriminator)

    model.zero_grad(set_to_none=True)
    g_loss = model.generator_loss(model.discriminator(model(model.latent(batch))))
    assert torch.isfinite(g_loss)
    g_loss.backward()
    assert_grads(model.generator)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("d_norm", D_NORMS)
@pytest.mark.parametrize("activation", ACTIVATIONS.names())
def test_backward_grid(activation: str, d_norm: str, residual: bool) -> None:
    torch.manual_seed(0)
    # The generator takes the same feature norm; spectral, a discriminator-only norm, pairs with batch.
    g_norm = d_norm if d_norm in NORMS else "batch"
    for loss in LOSSES:
        if loss == "wgan-gp" and d_norm == "batch":
            continue  # refused by design, see test_config_errors
        model = GAN(
            **TINY,
            g_activation=activation,
            d_activation=activation,
            g_norm=g_norm,
            d_norm=d_norm,
            g_residual=residual,
            d_residual=residual,
            init="kaiming",
            loss=loss,
            in_channels=1,
            image_size=8,
        )
        check_backward(model)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("init", INITS.names())
def test_backward_init(init: str, loss: str) -> None:
    torch.manual_seed(0)
    model = GAN(
        **TINY, init=init, loss=loss, d_norm="layer" if loss == "wgan-gp" else "spectral", in_channels=3, image_size=8
    )
    check_backward(model)


def test_init_reaches_spectral_weights() -> None:
    # Spectral norm moves the trainable weight to ``parametrizations.weight.original``: init must fill that one.
    model = GAN(**TINY, init="normal", d_norm="spectral", in_channels=1, image_size=8)
    original = model.discriminator.blocks[0].conv.parametrizations.weight.original
    assert original.std().item() == pytest.approx(0.02, rel=0.3)


@pytest.mark.parametrize(
    ("image_size", "plan"),
    [(8, (1, 4)), (16, (2, 4)), (28, (2, 7)), (32, (3, 4)), (64, (4, 4)), (128, (4, 8)), (6, (0, 6))],
)
def test_resolution_plan(image_size: int, plan: tuple[int, int]) -> None:
    assert resolution_plan(image_size) == plan


@pytest.mark.parametrize("image_size", [8, 16, 28, 32])
def test_shapes(image_size: int) -> None:
    model = GAN(**TINY, in_channels=3, image_size=image_size)
    n_up, _ = resolution_plan(image_size)
    images = model(model.latent(5))
    assert images.shape == (5, 3, image_size, image_size)
    assert images.abs().max() <= 1.0
    assert model.discriminator(images).shape == (5, 1)
    assert len(model.generator.up) == len(model.discriminator.down) == n_up
    assert len(model.generator.blocks) == TINY["g_depth"]
    assert len(model.discriminator.blocks) == TINY["d_depth"]


def test_sample() -> None:
    model = GAN(**TINY, in_channels=1, image_size=8)
    images = model.sample(5)
    assert images.shape == (5, 1, 8, 8)
    assert images.abs().max() <= 1.0
    assert not images.requires_grad
    assert torch.equal(model.sample(3, seed=7), model.sample(3, seed=7))
    assert not torch.equal(model.sample(3, seed=7), model.sample(3, seed=8))


@pytest.mark.parametrize("training", [True, False])
def test_sample_restores_mode(training: bool) -> None:
    model = GAN(**TINY, in_channels=1, image_size=8)
    model.train(training)
    stats = model.generator.stem[2].running_mean.clone()
    model.sample(4)
    assert model.generator.training is training
    # Eval mode: batch norm used its running statistics and left them alone.
    assert torch.equal(model.generator.stem[2].running_mean, stats)


@pytest.mark.parametrize(
    ("args", "param", "match"),
    [
        ({"g_norm": "spectral"}, "g_norm", "discriminator weight norm"),
        ({"loss": "foo"}, "loss", "hinge, nonsaturating, wgan-gp"),
        ({"loss": "wgan-gp", "d_norm": "batch"}, "d_norm", "batch norm"),
        ({"d_norm": "spectrl"}, "d_norm", "did you mean 'spectral'"),
        ({"g_depth": 0}, "g_depth", ">= 1"),
        ({"d_depth": 0}, "d_depth", ">= 1"),
        ({"n_critic": 0}, "n_critic", ">= 1"),
        ({"gp_weight": -1.0}, "gp_weight", ">= 0"),
        ({"g_activation": "rleu"}, "g_activation", "did you mean 'relu'"),
        ({"init": "he"}, "init", "kaiming"),
    ],
)
def test_config_errors(args: dict, param: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        GAN(in_channels=1, image_size=8, **args)
    assert err.value.param == param


def test_non_square_data(tmp_path) -> None:
    with pytest.raises(ConfigError, match="square") as err:
        fit(GAN(**TINY), tmp_path, datamodule=RandomImages(dims=(1, 8, 6)))
    assert err.value.param == "image_size"


@pytest.mark.parametrize("loss", LOSSES)
def test_fit(loss: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = GAN(**TINY, loss=loss, d_norm="layer" if loss == "wgan-gp" else "spectral")
    # Under manual optimization every optimizer's step counts: 2 batches × (D + G) = 4 steps.
    trainer = fit(model, tmp_path, max_steps=4, limit_train_batches=2)
    assert trainer.global_step == 4
    assert (model.hparams.in_channels, model.hparams.image_size) == (1, 8)  # read from the DataModule's dims
    metrics = logged(trainer)
    keys = ["train/d_loss", "train/g_loss", "train/d_real", "train/d_fake", "val/d_loss", "val/g_loss"]
    keys += ["val/d_real", "val/d_fake", *(["train/gp"] if loss == "wgan-gp" else [])]
    for key in keys:
        assert metrics.get(key), f"{key} was not logged"
        assert all(math.isfinite(value) for value in metrics[key]), key
    if loss == "nonsaturating":
        assert all(0.0 <= p <= 1.0 for p in metrics["train/d_real"] + metrics["val/d_fake"])


def test_each_validation_logs_a_grid_of_samples_from_the_same_latents(tmp_path) -> None:
    from PIL import Image

    model = GAN(**TINY)
    trainer = fit(model, tmp_path, max_epochs=2, limit_train_batches=1)
    pngs = sorted((Path(trainer.log_dir) / "samples").glob("val-samples-*.png"))
    assert len(pngs) == 2  # one per validation, named after Lightning's logging step
    grid = np.asarray(Image.open(pngs[-1]))
    assert grid.shape == (8 * 8 + 9, 8 * 8 + 9, 3)  # 8 × 8 images of 8 px, 1 px apart, grey as RGB
    expected = model.sample(SAMPLES, seed=0)[0, 0].add(1).div(2).mul(255).round()
    np.testing.assert_allclose(grid[1:9, 1:9, 0], expected.numpy(), atol=1)


def test_n_critic(tmp_path) -> None:
    steps = OptimizerSteps()
    # Two epochs of three batches: the generator's turn is counted across epochs, so it steps on batches 2, 4, 6.
    fit(GAN(**TINY, n_critic=2), tmp_path, max_epochs=2, limit_train_batches=3, callbacks=[steps])
    generator, discriminator = 0, 1
    assert steps.order == [discriminator, discriminator, generator] * 3


class MinibatchStd(nn.Module):
    """Appends the batch's mean per-feature std as a channel, so the discriminator can see mode collapse."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        std = x.std(dim=0).mean().expand(x.shape[0], 1, *x.shape[2:])
        return torch.cat([x, std], dim=1)


class LeastSquaresGAN(GAN):
    """A user's subclass: its own discriminator and a least-squares generator loss (Mao et al., 2017)."""

    def build_discriminator(self) -> nn.Module:
        channels, size = self.hparams.in_channels, self.hparams.image_size
        return nn.Sequential(
            MinibatchStd(),
            nn.Conv2d(channels + 1, 8, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(8 * (size // 2) ** 2, 1),
        )

    def generator_loss(self, fake_scores: torch.Tensor) -> torch.Tensor:
        self.generator_loss_calls = getattr(self, "generator_loss_calls", 0) + 1
        return 0.5 * ((fake_scores - 1.0) ** 2).mean()


def test_subclass(tmp_path) -> None:
    model = LeastSquaresGAN(**TINY, in_channels=1, image_size=8)
    assert isinstance(model.discriminator[0], MinibatchStd)
    before = {name: param.detach().clone() for name, param in model.discriminator.named_parameters()}
    trainer = fit(model, tmp_path, max_steps=4, limit_train_batches=2)
    # Two training steps plus one validation batch.
    assert model.generator_loss_calls == 3
    for name, param in model.discriminator.named_parameters():
        assert not torch.equal(param, before[name]), f"the discriminator optimizer left {name} untouched"
    assert all(math.isfinite(value) for value in logged(trainer)["train/g_loss"])


def test_cli_configures_optimizers(tmp_path, monkeypatch) -> None:
    # Sweeps set optimizer fields by dotted name, and saved configs must serialize every default.
    monkeypatch.setattr("sys.argv", ["gradwatch"])
    cli = LightningCLI(
        GAN,
        run=False,
        args=[
            "--model.loss=hinge",
            "--model.generator_optimizer.lr=0.001",
            "--model.generator_optimizer.betas=[0.9,0.99]",
        ],
        trainer_defaults={"default_root_dir": str(tmp_path), "logger": False},
        save_config_callback=None,
        seed_everything_default=False,
    )
    assert cli.model.hparams.loss == "hinge"
    params = [nn.Parameter(torch.zeros(1))]
    overridden = cli.model.generator_optimizer(params)
    assert (overridden.defaults["lr"], tuple(overridden.defaults["betas"])) == (0.001, (0.9, 0.99))
    untouched = cli.model.discriminator_optimizer(params)  # GANAdam: DCGAN's settings unless told otherwise
    assert (untouched.defaults["lr"], untouched.defaults["betas"]) == (2e-4, (0.5, 0.999))
    assert "generator_optimizer" in cli.parser.dump(cli.config)


def test_a_model_made_in_a_notebook_samples_from_its_own_arguments_or_says_what_it_needs():
    with pytest.raises(RuntimeError, match=r"GAN has no networks yet: .* in_channels, image_size are known; pass them"):
        GAN().sample(4)
    images = GAN(in_channels=1, image_size=8, latent_dim=8).sample(4, seed=0)
    assert images.shape == (4, 1, 8, 8)
