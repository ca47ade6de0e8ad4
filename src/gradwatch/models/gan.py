"""``GAN``: a DCGAN-style generator and discriminator whose depth, activation, norm, residual and init are axes."""

from __future__ import annotations

from itertools import pairwise
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm
from typing_extensions import override

from gradwatch.errors import ConfigError, check_positive, unknown_choice
from gradwatch.layers import (
    NORMS,
    WEIGHT_NORMS,
    ConvBlock,
    LayerType,
    activation_gain,
    get_act_layer,
    get_norm_layer,
    init_weights,
)
from gradwatch.layers.init import INITS
from gradwatch.models.base import GradwatchModule
from gradwatch.rundir import SAMPLES_DIR

GANLoss = Literal["nonsaturating", "hinge", "wgan-gp"]
LOSSES: tuple[str, ...] = get_args(GANLoss)

#: Generated images in the grid logged after each validation (``val/samples``).
SAMPLES = 64

#: Most resamplings either network makes: beyond 4, extra depth goes into the blocks at the lowest resolution.
MAX_RESAMPLINGS = 4


def resolution_plan(image_size: int) -> tuple[int, int]:
    """How many 2× resamplings separate the lowest resolution from ``image_size``, and that lowest side.

    The side halves while it divides evenly and stays at least 4 pixels, at most :data:`MAX_RESAMPLINGS` times.

    Example::

        >>> [resolution_plan(size) for size in (8, 16, 28, 32)]
        [(1, 4), (2, 4), (2, 7), (3, 4)]
    """
    steps, side = 0, image_size
    while steps < MAX_RESAMPLINGS and side % 2 == 0 and side // 2 >= 4:
        steps, side = steps + 1, side // 2
    return steps, side


def _widths(width: int, steps: int) -> list[int]:
    # Channels from the lowest resolution up: halved per resampling, but never below 8 (or ``width``, if smaller).
    return [max(min(8, width), width >> k) for k in range(steps + 1)]


class Generator(nn.Module):
    """``z`` → linear stem at the lowest resolution → ``depth`` conv blocks → ``n_up`` upsampling blocks → image.

    Each upsampling block doubles the resolution and halves the channels; the output is squashed into ``[-1, 1]``
    by a tanh, like the data.
    """

    def __init__(
        self,
        latent_dim: int,
        out_channels: int,
        *,
        width: int,
        depth: int,
        base_size: int,
        n_up: int,
        act_layer: type[nn.Module],
        norm_layer: type[nn.Module],
        residual: bool,
    ) -> None:
        super().__init__()
        block = {"act_layer": act_layer, "norm_layer": norm_layer, "residual": residual}
        widths = _widths(width, n_up)
        self.stem = nn.Sequential(
            nn.Linear(latent_dim, width * base_size * base_size, bias=norm_layer is nn.Identity),
            nn.Unflatten(1, (width, base_size, base_size)),
            norm_layer(width),
            act_layer(),
        )
        self.blocks = nn.Sequential(*(ConvBlock(width, width, **block) for _ in range(depth)))
        self.up = nn.Sequential(*(ConvBlock(c_in, c_out, upsample=True, **block) for c_in, c_out in pairwise(widths)))
        # No norm on the output layer: DCGAN found it makes samples oscillate (Radford et al., 2016, §3).
        self.to_image = nn.Sequential(nn.Conv2d(widths[-1], out_channels, 3, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Map latents ``(N, latent_dim)`` to images ``(N, C, H, W)`` in ``[-1, 1]``."""
        return self.to_image(self.up(self.blocks(self.stem(z))))


class Discriminator(nn.Module):
    """Image → input conv → ``n_down`` stride-2 blocks → ``depth`` conv blocks at the lowest resolution → one logit.

    Each stride-2 block halves the resolution and doubles the channels up to ``width``. With ``spectral`` every
    convolution and the head carry spectral normalization (Miyato et al., 2018).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        width: int,
        depth: int,
        base_size: int,
        n_down: int,
        act_layer: type[nn.Module],
        norm_layer: type[nn.Module],
        residual: bool,
        spectral: bool,
    ) -> None:
        super().__init__()
        weight_norm = {"weight_norm": spectral_norm} if spectral else {}
        block = {"act_layer": act_layer, "norm_layer": norm_layer, "residual": residual, **weight_norm}
        widths = _widths(width, n_down)[::-1]
        # No norm on the input layer, as in DCGAN: normalizing it destabilizes training (Radford et al., 2016, §3).
        self.from_image = ConvBlock(in_channels, widths[0], act_layer=act_layer, norm_layer=nn.Identity, **weight_norm)
        self.down = nn.Sequential(*(ConvBlock(c_in, c_out, stride=2, **block) for c_in, c_out in pairwise(widths)))
        self.blocks = nn.Sequential(*(ConvBlock(width, width, **block) for _ in range(depth)))
        linear = nn.Linear(width * base_size * base_size, 1)
        self.head = nn.Sequential(nn.Flatten(), spectral_norm(linear) if spectral else linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(N, C, H, W)`` to scores ``(N, 1)`` (logits; critic values under WGAN)."""
        return self.head(self.blocks(self.down(self.from_image(x))))


class GANAdam(torch.optim.Adam):
    """Adam with DCGAN's settings as its defaults: ``lr=2e-4``, ``betas=(0.5, 0.999)`` (Radford et al., 2016).

    A class rather than ``functools.partial(Adam, ...)``: LightningCLI can print and save it as ``class_path`` /
    ``init_args`` and override one field (``--model.generator_optimizer.lr``), which sweeps rely on.
    """

    def __init__(
        self, params: Any, lr: float = 2e-4, betas: tuple[float, float] = (0.5, 0.999), weight_decay: float = 0.0
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, weight_decay=weight_decay)


def _square_side(dims: tuple[int, int, int]) -> int:
    _, height, width = dims
    if height != width:
        raise ConfigError(f"GAN needs square images; the data's are {height}×{width} (H×W)", param="image_size")
    return int(height)


class GAN(GradwatchModule):
    """DCGAN-style generator and discriminator, trained with manual optimization.

    Every batch takes one discriminator step; every ``n_critic``-th batch (counted across epochs) also takes a
    generator step. Logs ``train/d_loss``, ``train/g_loss``, ``train/d_real`` and ``train/d_fake`` (mean
    ``D(x)`` and ``D(G(z))``: probabilities for ``nonsaturating``, raw scores otherwise) and the same under
    ``val/`` on validation images, with latents drawn from a fixed seed per batch so epochs compare. Under
    ``wgan-gp`` the gradient penalty is logged as ``train/gp`` and is not part of ``train/d_loss``, which keeps
    it comparable with ``val/d_loss``. Data images are expected in ``[-1, 1]``.

    Override points (the subclassing contract): :meth:`build_generator`, :meth:`build_discriminator`,
    :meth:`discriminator_loss`, :meth:`generator_loss`, :meth:`gradient_penalty` and :meth:`latent`.

    Args:
        latent_dim: Size of the generator's input ``z ~ N(0, I)``.
        g_depth: Generator conv blocks at the lowest resolution.
        d_depth: Discriminator conv blocks at the lowest resolution.
        g_width: Generator channels at the lowest resolution; halved per upsampling, down to 8.
        d_width: Discriminator channels at the lowest resolution; halved per resolution above it, down to 8.
        g_activation: Generator activation: registry name, class or ``functools.partial``.
        d_activation: Discriminator activation, likewise.
        g_norm: Generator feature norm (none, batch, layer, group, instance, or a class).
        d_norm: Discriminator norm: a feature norm as for ``g_norm``, or ``spectral``, which applies spectral
            normalization to every discriminator weight and uses no feature norm.
        g_residual: Identity shortcut around each generator block (1×1 projection where the shape changes).
        d_residual: Likewise for the discriminator.
        init: Weight initialization of both networks (default, kaiming, xavier, orthogonal, normal).
        loss: ``nonsaturating`` (Goodfellow et al.'s ``-log D(G(z))``), ``hinge`` or ``wgan-gp``.
        n_critic: Discriminator steps per generator step.
        gp_weight: Weight of the gradient penalty under ``wgan-gp``.
        in_channels: Image channels; read from the DataModule's ``dims`` when ``None``.
        image_size: Side of the square images; read from the DataModule's ``dims`` when ``None``.
        generator_optimizer: A callable taking the generator's parameters; :class:`GANAdam` by default.
        discriminator_optimizer: A callable taking the discriminator's parameters; :class:`GANAdam` by default.

    Raises:
        ConfigError: a bad value; the message names it and lists the valid ones. Also ``spectral`` as
            ``g_norm`` (a discriminator weight norm), ``wgan-gp`` with a batch-norm discriminator, and
            non-square data.

    Example::

        >>> GAN(in_channels=1, image_size=8).sample(4).shape
        torch.Size([4, 1, 8, 8])

    """

    data_shapes = {"in_channels": ("dims", lambda dims: int(dims[0])), "image_size": ("dims", _square_side)}
    data_kind = "images (an image DataModule with `dims`)"
    #: Which hyperparameters configure which network, for GradientMonitor's advice (``g_activation=relu``).
    config_prefixes = {"generator": "g_", "discriminator": "d_"}

    def __init__(
        self,
        latent_dim: int = 64,
        g_depth: int = 2,
        d_depth: int = 2,
        g_width: int = 64,
        d_width: int = 64,
        g_activation: LayerType = "relu",
        d_activation: LayerType = "leaky_relu",
        g_norm: LayerType = "batch",
        d_norm: LayerType = "spectral",
        g_residual: bool = False,
        d_residual: bool = False,
        init: str = "normal",
        loss: str = "nonsaturating",  # not a Literal, for the same reason as RNN's `cell`
        n_critic: int = 1,
        gp_weight: float = 10.0,
        in_channels: int | None = None,
        image_size: int | None = None,
        generator_optimizer: OptimizerCallable = GANAdam,
        discriminator_optimizer: OptimizerCallable = GANAdam,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["generator_optimizer", "discriminator_optimizer"])
        self.generator_optimizer = generator_optimizer
        self.discriminator_optimizer = discriminator_optimizer
        # Two optimizers stepped at different rates: Lightning's automatic loop has no way to say that.
        self.automatic_optimization = False
        check_positive(
            "GAN",
            latent_dim=latent_dim,
            g_depth=g_depth,
            d_depth=d_depth,
            g_width=g_width,
            d_width=d_width,
            n_critic=n_critic,
        )
        if gp_weight < 0:
            raise ConfigError(f"GAN: gp_weight must be >= 0, got {gp_weight}", param="gp_weight")
        if loss not in LOSSES:
            raise ConfigError(unknown_choice("loss", loss, LOSSES), param="loss")
        if g_norm in WEIGHT_NORMS:
            raise ConfigError(
                f"GAN: {g_norm!r} is a discriminator weight norm; g_norm takes a feature norm ({', '.join(NORMS)})",
                param="g_norm",
            )
        if isinstance(d_norm, str) and d_norm not in NORMS and d_norm not in WEIGHT_NORMS:
            raise ConfigError(unknown_choice("discriminator norm", d_norm, [*NORMS, *WEIGHT_NORMS]), param="d_norm")
        self.g_act_layer = get_act_layer(g_activation, param="g_activation")
        self.d_act_layer = get_act_layer(d_activation, param="d_activation")
        self.g_norm_layer = get_norm_layer(g_norm, param="g_norm")
        self.d_spectral = d_norm == "spectral"
        self.d_norm_layer = nn.Identity if self.d_spectral else get_norm_layer(d_norm, param="d_norm")
        if loss == "wgan-gp" and _is_batch_norm(self.d_norm_layer):
            raise ConfigError(
                "GAN: loss='wgan-gp' penalizes each sample's gradient, and batch norm makes every sample's score"
                " depend on the rest of its batch; use d_norm='layer', 'spectral' or 'none'",
                param="d_norm",
            )
        INITS.get(init, param="init")
        if self.shapes_known():
            self._build_once()

    def build_generator(self) -> nn.Module:
        """The generator: latents ``(N, latent_dim)`` → images ``(N, in_channels, image_size, image_size)``."""
        hp = self.hparams
        n_up, base_size = resolution_plan(hp.image_size)
        return Generator(
            hp.latent_dim,
            hp.in_channels,
            width=hp.g_width,
            depth=hp.g_depth,
            base_size=base_size,
            n_up=n_up,
            act_layer=self.g_act_layer,
            norm_layer=self.g_norm_layer,
            residual=hp.g_residual,
        )

    def build_discriminator(self) -> nn.Module:
        """The discriminator: images → one score per image."""
        hp = self.hparams
        n_down, base_size = resolution_plan(hp.image_size)
        return Discriminator(
            hp.in_channels,
            width=hp.d_width,
            depth=hp.d_depth,
            base_size=base_size,
            n_down=n_down,
            act_layer=self.d_act_layer,
            norm_layer=self.d_norm_layer,
            residual=hp.d_residual,
            spectral=self.d_spectral,
        )

    @override
    def build(self) -> None:
        self.generator = self.build_generator()
        self.discriminator = self.build_discriminator()
        init_weights(self.generator, self.hparams.init, gain=activation_gain(self.g_act_layer))
        init_weights(self.discriminator, self.hparams.init, gain=activation_gain(self.d_act_layer))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Images ``G(z)`` for latents ``(N, latent_dim)``."""
        self.require_built()
        return self.generator(z)

    def latent(self, n: int, *, seed: int | None = None) -> torch.Tensor:
        """``n`` latent vectors ``z ~ N(0, I)`` on the model's device; the same ones for the same ``seed``."""
        generator = None if seed is None else torch.Generator(device=self.device).manual_seed(seed)
        return torch.randn(n, self.hparams.latent_dim, device=self.device, generator=generator)

    def sample(self, n: int, *, seed: int | None = None) -> torch.Tensor:
        """``n`` generated images ``(N, C, H, W)`` in ``[-1, 1]``, with the generator in eval mode and no grad."""
        self.require_built()
        was_training = self.generator.training
        self.generator.eval()
        try:
            with torch.no_grad():
                return self.generator(self.latent(n, seed=seed))
        finally:
            self.generator.train(was_training)

    def discriminator_loss(self, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
        """The discriminator's loss on scores of real and generated images (without any gradient penalty)."""
        if self.hparams.loss == "nonsaturating":
            # softplus(-s) = -log sigmoid(s): binary cross-entropy on logits, real labelled 1 and fake 0.
            return F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()
        if self.hparams.loss == "hinge":
            return F.relu(1.0 - real_scores).mean() + F.relu(1.0 + fake_scores).mean()
        return fake_scores.mean() - real_scores.mean()

    def generator_loss(self, fake_scores: torch.Tensor) -> torch.Tensor:
        """The generator's loss on the discriminator's scores of generated images."""
        if self.hparams.loss == "nonsaturating":
            # -log D(G(z)) rather than log(1 - D(G(z))): the latter's gradient vanishes while D wins easily.
            return F.softplus(-fake_scores).mean()
        return -fake_scores.mean()

    def gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """WGAN-GP's ``E[(‖∇D(x̂)‖ - 1)²]`` on random interpolates ``x̂`` of real and fake (Gulrajani et al., 2017)."""
        weight = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
        mixed = torch.lerp(fake.detach(), real.detach(), weight).requires_grad_(True)
        # create_graph: the penalty is itself differentiated when the discriminator's loss is backpropagated.
        (grad,) = torch.autograd.grad(self.discriminator(mixed).sum(), mixed, create_graph=True)
        return ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()

    @override
    def training_step(self, batch: Any, batch_idx: int) -> None:
        real = _images(batch)
        opt_g, opt_d = self.optimizers()
        self._discriminator_step(real, opt_d)
        # Counted across epochs: a per-epoch index would starve the generator when an epoch is shorter than n_critic.
        if (self.trainer.fit_loop.epoch_loop.total_batch_idx + 1) % self.hparams.n_critic == 0:
            self._generator_step(real.shape[0], opt_g)

    def _discriminator_step(self, real: torch.Tensor, opt_d: Any) -> None:
        with self.toggled_optimizer(opt_d):
            # The toggle freezes the generator, so the fakes carry no graph back into it.
            fake = self.generator(self.latent(real.shape[0]))
            real_scores, fake_scores = self.discriminator(real), self.discriminator(fake)
            d_loss = self.discriminator_loss(real_scores, fake_scores)
            loss = d_loss
            if self.hparams.loss == "wgan-gp":
                penalty = self.gradient_penalty(real, fake)
                self.log("train/gp", penalty)
                loss = d_loss + self.hparams.gp_weight * penalty
            opt_d.zero_grad()
            self.manual_backward(loss)
            opt_d.step()
        self.log("train/d_loss", d_loss, prog_bar=True)
        self._log_scores("train", real_scores, fake_scores)

    def _generator_step(self, n: int, opt_g: Any) -> None:
        with self.toggled_optimizer(opt_g):
            g_loss = self.generator_loss(self.discriminator(self.generator(self.latent(n))))
            opt_g.zero_grad()
            self.manual_backward(g_loss)
            opt_g.step()
        self.log("train/g_loss", g_loss, prog_bar=True)

    @override
    def logged_metrics(self) -> list[str]:
        """Losses and mean discriminator scores on real and fake images, for training and validation."""
        keys = [f"{stage}/{name}" for stage in ("train", "val") for name in ("d_loss", "g_loss", "d_real", "d_fake")]
        return [*keys, "train/gp"] if self.hparams.loss == "wgan-gp" else keys

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        real = _images(batch)
        real_scores = self.discriminator(real)
        fake_scores = self.discriminator(self.generator(self.latent(real.shape[0], seed=batch_idx)))
        self.log("val/d_loss", self.discriminator_loss(real_scores, fake_scores), prog_bar=True)
        self.log("val/g_loss", self.generator_loss(fake_scores))
        self._log_scores("val", real_scores, fake_scores)

    @override
    def on_validation_epoch_end(self) -> None:
        """Log a grid of :data:`SAMPLES` generated images as ``val/samples``, from the same latents every epoch.

        It goes to W&B and TensorBoard as an image and into ``<log dir>/samples/`` as a PNG, so a CSV-only run keeps
        it too; one host copy per validation.
        """
        if self.trainer.sanity_checking:
            return
        from torchvision.utils import make_grid

        from gradwatch.loggers import log_images, run_dir

        folder = run_dir(self.trainer) / SAMPLES_DIR  # a collective under DDP: on every process, before rank 0 draws
        grid = make_grid(self.sample(SAMPLES, seed=0).add(1).div(2).clamp(0, 1), nrow=8, padding=1, pad_value=1.0)
        image = grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()  # make_grid gives 3 channels
        log_images(self.trainer, {"val/samples": image}, folder)

    def _log_scores(self, stage: str, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> None:
        # Under the nonsaturating loss scores are logits, and D's probabilities read more plainly than logits.
        probabilities = self.hparams.loss == "nonsaturating"
        for name, scores in (("d_real", real_scores), ("d_fake", fake_scores)):
            self.log(f"{stage}/{name}", (torch.sigmoid(scores) if probabilities else scores).mean())

    @override
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [
            self.generator_optimizer(self.generator.parameters()),
            self.discriminator_optimizer(self.discriminator.parameters()),
        ]


def _is_batch_norm(norm_layer: Any) -> bool:
    return isinstance(norm_layer, type) and issubclass(norm_layer, nn.modules.batchnorm._BatchNorm)


def _images(batch: Any) -> torch.Tensor:
    # Image DataModules yield (images, labels); an unlabelled dataset yields the images alone.
    return batch[0] if isinstance(batch, (tuple, list)) else batch
