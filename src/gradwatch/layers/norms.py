"""Normalization registry: the ``norm`` axis, for feature maps of shape ``(N, C, H, W)``.

Each entry is called with the number of channels. ``spectral`` is not here: it normalizes weights, not
features, so the blocks that accept it (the GAN discriminator) apply it to their own layers.
"""

from __future__ import annotations

from torch import nn

from gradwatch.layers.registry import Registry
from gradwatch.layers.typing import LayerType


class LayerNorm2d(nn.GroupNorm):
    """Layer norm over ``(C, H, W)`` of each sample, with a per-channel affine (GroupNorm with one group)."""

    def __init__(self, num_channels: int) -> None:
        super().__init__(num_groups=1, num_channels=num_channels)


class GroupNorm2d(nn.GroupNorm):
    """Group norm with as many groups as fit, up to 32, of at least 4 channels each (Wu & He's defaults)."""

    def __init__(self, num_channels: int) -> None:
        groups = next(
            g for g in (32, 16, 8, 4, 2, 1) if num_channels % g == 0 and num_channels // g >= min(4, num_channels)
        )
        super().__init__(num_groups=groups, num_channels=num_channels)


class InstanceNorm2d(nn.InstanceNorm2d):
    """Instance norm with a learned affine, so it has parameters like the other norms."""

    def __init__(self, num_channels: int) -> None:
        super().__init__(num_channels, affine=True)


NORMS: Registry = Registry(
    "norm",
    {
        "none": nn.Identity,
        "batch": nn.BatchNorm2d,
        "layer": LayerNorm2d,
        "group": GroupNorm2d,
        "instance": InstanceNorm2d,
    },
)

#: Norms that act on weights rather than features: valid only where a model says so.
WEIGHT_NORMS = ("spectral",)


def get_norm_layer(norm: LayerType, *, param: str | None = "norm") -> type[nn.Module]:
    """Resolve a norm name to a class taking the channel count (or return the callable given).

    Raises:
        ConfigError: unknown name; the message lists the registered ones.

    """
    return NORMS.get(norm, param=param)


def register_norm(name: str, norm_layer: type[nn.Module]) -> type[nn.Module]:
    """Register a user norm; it is called as ``norm_layer(num_channels)`` on ``(N, C, H, W)`` maps."""
    return NORMS.register(name, norm_layer)
