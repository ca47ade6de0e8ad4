"""Weight-initialization registry: the ``init`` axis.

A scheme is ``fn(weight, gain)`` that fills a weight tensor in place; ``gain`` comes from the activation
(:func:`~gradwatch.layers.activations.activation_gain`). Biases are zeroed by every scheme but ``default``,
which keeps PyTorch's own initialization untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from gradwatch.layers.registry import Registry

InitFn = Callable[[torch.Tensor, float], None]


def kaiming(weight: torch.Tensor, gain: float) -> None:
    """He et al.: ``N(0, gain² / fan_in)``."""
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
    nn.init.normal_(weight, 0.0, gain / math.sqrt(fan_in))


def xavier(weight: torch.Tensor, gain: float) -> None:
    """Glorot & Bengio: uniform, variance ``2 gain² / (fan_in + fan_out)``."""
    nn.init.xavier_uniform_(weight, gain=gain)


def orthogonal(weight: torch.Tensor, gain: float) -> None:
    """Saxe et al.: a scaled (semi-)orthogonal matrix; keeps recurrent Jacobians' singular values at ``gain``."""
    nn.init.orthogonal_(weight, gain=gain)


def normal(weight: torch.Tensor, gain: float) -> None:
    """DCGAN's ``N(0, 0.02)``, whatever the activation."""
    del gain
    nn.init.normal_(weight, 0.0, 0.02)


INITS: Registry = Registry(
    "init",
    {"default": None, "kaiming": kaiming, "xavier": xavier, "orthogonal": orthogonal, "normal": normal},
)

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def init_weights(module: nn.Module, init: str | InitFn, *, gain: float = 1.0, param: str | None = "init") -> None:
    """Initialize every convolution, linear and recurrent weight under ``module`` with the scheme ``init``.

    Norm layers get weight 1 and bias 0, except under ``normal``, where DCGAN draws the scale from
    ``N(1, 0.02)``. ``default`` leaves the module as PyTorch built it.

    Raises:
        ConfigError: unknown scheme name; the message lists the registered ones.

    """
    if init == "default":
        return
    fn = INITS.get(init, param=param)
    for sub in module.modules():
        if isinstance(sub, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            fn(_weight(sub), gain)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.RNNBase):
            for name, p in sub.named_parameters(recurse=False):
                if name.startswith("weight"):
                    # Gated cells stack their gates along dim 0: initialize each gate's matrix on its own.
                    for chunk in p.data.chunk(p.shape[0] // sub.hidden_size):
                        fn(chunk, gain)
                else:
                    nn.init.zeros_(p)
        elif isinstance(sub, _NORM_TYPES) and getattr(sub, "weight", None) is not None:
            if fn is normal:
                nn.init.normal_(sub.weight, 1.0, 0.02)
            else:
                nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)


def _weight(module: nn.Module) -> torch.Tensor:
    # Spectral norm moves the trainable weight to ``parametrizations.weight.original``.
    if nn.utils.parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def register_init(name: str, fn: InitFn) -> InitFn:
    """Register a user scheme ``fn(weight, gain)`` under ``name``."""
    return INITS.register(name, fn)
