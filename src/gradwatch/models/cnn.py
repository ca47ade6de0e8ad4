"""``CNN``: an image classifier whose depth, activation, norm, residual and init are sweep axes."""

from __future__ import annotations

import difflib

import torch
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from typing_extensions import override

from gradwatch.errors import ConfigError, check_positive, check_probability
from gradwatch.layers import ConvBlock, LayerType, activation_gain, get_act_layer, get_norm_layer, init_weights
from gradwatch.layers.init import INITS
from gradwatch.models.supervised import SupervisedModule


class ConvBackbone(nn.Module):
    """A stem, then ``depth`` conv blocks in ``stages`` (each later stage halves resolution, doubles width), pooled.

    Global average pooling makes it work at any image size of at least ``2 ** (stages - 1)`` pixels.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        width: int,
        depth: int,
        stages: int,
        act_layer: type[nn.Module],
        norm_layer: type[nn.Module],
        residual: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        block = {"act_layer": act_layer, "norm_layer": norm_layer}
        self.stem = ConvBlock(in_channels, width, **block)
        stages = min(stages, depth)
        per_stage = [depth // stages + (i < depth % stages) for i in range(stages)]
        blocks, channels = [], width
        for stage, count in enumerate(per_stage):
            for i in range(count):
                down = stage > 0 and i == 0
                out = channels * 2 if down else channels
                blocks.append(
                    ConvBlock(channels, out, stride=2 if down else 1, residual=residual, dropout=dropout, **block)
                )
                channels = out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, C, H, W)`` images to ``(N, num_features)``."""
        return self.pool(self.blocks(self.stem(x)))


class TorchvisionBackbone(nn.Module):
    """Any torchvision classification model without its last linear layer (``fc``, ``classifier[-1]``, ...).

    Grayscale inputs are repeated to three channels, as pretrained weights expect. With pretrained weights,
    gradwatch's ``[-1, 1]`` images are renormalized to the mean and std the weights were trained with.
    """

    def __init__(self, name: str, *, pretrained: bool) -> None:
        super().__init__()
        import torchvision

        try:
            self.model = torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None)
        except Exception as err:  # a download needs the network; say which weights and why it failed
            raise ConfigError(
                f"could not load pretrained weights for backbone {name!r}: {err}", param="pretrained"
            ) from err
        parent, attr, linear = _last_linear(self.model)
        if linear is None:
            raise ConfigError(f"backbone {name!r} has no linear classifier to replace", param="backbone")
        setattr(parent, attr, nn.Identity())
        self.num_features = linear.in_features
        self.pretrained = pretrained
        if pretrained:  # buffers, so they follow the module to its device
            preset = torchvision.models.get_model_weights(name).DEFAULT.transforms()
            self.register_buffer("mean", torch.tensor(preset.mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(preset.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images in ``[-1, 1]`` to pooled features."""
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        if self.pretrained:
            x = ((x + 1.0) / 2.0 - self.mean) / self.std
        return self.model(x)


def _last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear | None]:
    found: tuple[nn.Module, str, nn.Linear | None] = (model, "", None)
    for parent in model.modules():
        for attr, child in parent.named_children():
            if isinstance(child, nn.Linear):
                found = (parent, attr, child)
    return found


def torchvision_classifiers() -> list[str]:
    """Names of torchvision's classification models (``torchvision.models.list_models``)."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


class CNN(SupervisedModule):
    """Image classifier: stem, ``depth`` conv blocks in stages, global pooling, linear head.

    With ``backbone`` set, a torchvision classification model replaces the conv stack (transfer learning): it
    is frozen for the first ``freeze_backbone_epochs`` epochs, then trained with the head.

    Args:
        depth: Hidden conv blocks (the stem not counted).
        width: Channels of the first stage; each later stage doubles them.
        activation: A registered name (relu, leaky_relu, elu, selu, gelu, silu, tanh, sigmoid, softplus, identity),
            an import path (``torch.nn.Mish``), a class or a ``functools.partial``.
        norm: A registered name (none, batch, layer, group, instance), an import path, a class or a partial.
        residual: Identity shortcut around each block (1×1 projection where the shape changes).
        init: Weight initialization (default, kaiming, xavier, orthogonal, normal).
        dropout: Dropout after each block's activation.
        stages: Resolution stages the blocks are split into.
        num_classes: Classes; read from the DataModule when ``None``.
        in_channels: Image channels; read from the DataModule when ``None``.
        backbone: A torchvision classification model name (``"resnet18"``) instead of the conv stack.
        pretrained: Load the backbone's default pretrained weights (downloaded by torchvision).
        freeze_backbone_epochs: Train only the head for this many epochs.
        optimizer: A callable taking parameters, e.g. ``torch.optim.Adam``.
        lr_scheduler: A callable taking the optimizer, or ``None``.

    Raises:
        ConfigError: a bad value; the message names it and lists the valid ones.

    Example::

        >>> model = CNN(depth=8, activation="tanh", norm="batch", residual=True, num_classes=10, in_channels=1)
        >>> model(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])

    """

    data_shapes = {"num_classes": ("num_classes", int), "in_channels": ("dims", lambda dims: int(dims[0]))}
    data_kind = "images (an image DataModule with `dims` and `num_classes`)"

    def __init__(
        self,
        depth: int = 4,
        width: int = 16,
        activation: LayerType = "relu",
        norm: LayerType = "batch",
        residual: bool = False,
        init: str = "default",
        dropout: float = 0.0,
        stages: int = 3,
        num_classes: int | None = None,
        in_channels: int | None = None,
        backbone: str | None = None,
        pretrained: bool = False,
        freeze_backbone_epochs: int = 0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(optimizer=optimizer, lr_scheduler=lr_scheduler)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        check_positive("CNN", depth=depth, width=width, stages=stages)
        check_probability("CNN", dropout=dropout)
        if freeze_backbone_epochs < 0:
            raise ConfigError(
                f"CNN: freeze_backbone_epochs must be >= 0, got {freeze_backbone_epochs}",
                param="freeze_backbone_epochs",
            )
        self.act_layer = get_act_layer(activation)
        self.norm_layer = get_norm_layer(norm)
        INITS.get(init, param="init")
        if backbone is not None:
            names = torchvision_classifiers()
            if backbone not in names:
                close = difflib.get_close_matches(backbone, names, n=3)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                raise ConfigError(
                    f"torchvision has no classification model {backbone!r}{hint} (torchvision.models.list_models()"
                    f" lists all {len(names)})",
                    param="backbone",
                )
        elif pretrained:
            raise ConfigError("CNN: pretrained=True needs a backbone, e.g. backbone='resnet18'", param="pretrained")
        if self.shapes_known():
            self._build_once()

    @property
    @override
    def num_outputs(self) -> int:
        return self.hparams.num_classes

    @override
    def build_backbone(self) -> nn.Module:
        hp = self.hparams
        if hp.backbone is not None:
            return TorchvisionBackbone(hp.backbone, pretrained=hp.pretrained)
        return ConvBackbone(
            hp.in_channels,
            width=hp.width,
            depth=hp.depth,
            stages=hp.stages,
            act_layer=self.act_layer,
            norm_layer=self.norm_layer,
            residual=hp.residual,
            dropout=hp.dropout,
        )

    @override
    def build_head(self, num_features: int) -> nn.Module:
        return nn.Linear(num_features, self.hparams.num_classes)

    @override
    def init_networks(self) -> None:
        # Pretrained or not, a torchvision backbone keeps the initialization its authors chose.
        if self.hparams.backbone is None:
            init_weights(self.backbone, self.hparams.init, gain=activation_gain(self.act_layer))
        init_weights(self.head, self.hparams.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, num_classes)`` for images ``(N, C, H, W)``."""
        self.require_built()
        return self.head(self.backbone(x))

    @override
    def on_train_epoch_start(self) -> None:
        epochs = self.hparams.freeze_backbone_epochs
        if epochs and self.current_epoch < epochs:
            BaseFinetuning.freeze(self.backbone, train_bn=True)
        elif epochs and self.current_epoch == epochs:
            BaseFinetuning.make_trainable(self.backbone)
