"""Activation registry: the ``activation`` axis of every model."""

from __future__ import annotations

import math

from torch import nn

from gradwatch.layers.registry import Registry
from gradwatch.layers.typing import LayerType

ACTIVATIONS: Registry = Registry(
    "activation",
    {
        "relu": nn.ReLU,
        "leaky_relu": nn.LeakyReLU,
        "elu": nn.ELU,
        "selu": nn.SELU,
        "gelu": nn.GELU,
        "silu": nn.SiLU,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "softplus": nn.Softplus,
        "identity": nn.Identity,
    },
)


def get_act_layer(activation: LayerType, *, param: str | None = "activation") -> type[nn.Module]:
    """Resolve an activation name to a class (or return the callable given).

    Raises:
        ConfigError: unknown name; the message lists the registered ones.

    """
    return ACTIVATIONS.get(activation, param=param)


def register_activation(name: str, act_layer: type[nn.Module]) -> type[nn.Module]:
    """Register a user activation under ``name`` so configs and sweeps can select it.

    Example::

        >>> import functools
        >>> from torch import nn
        >>> _ = register_activation("leaky_relu_02", functools.partial(nn.LeakyReLU, negative_slope=0.2))
    """
    return ACTIVATIONS.register(name, act_layer)


def activation_gain(act_layer: type[nn.Module]) -> float:
    """The init gain that keeps activations' variance stable through ``act_layer`` (``nn.init.calculate_gain``).

    Smooth ReLU relatives (GELU, SiLU, ELU, Softplus) and unknown user layers get ReLU's gain, the usual
    approximation; identity-like layers get 1.
    """
    act = act_layer()
    if isinstance(act, nn.LeakyReLU):
        return nn.init.calculate_gain("leaky_relu", act.negative_slope)
    for cls, name in ((nn.Tanh, "tanh"), (nn.Sigmoid, "sigmoid"), (nn.SELU, "selu"), (nn.Identity, "linear")):
        if isinstance(act, cls):
            return nn.init.calculate_gain(name)
    return math.sqrt(2.0)
