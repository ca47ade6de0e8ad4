"""Blocks built from the registries: a convolution block and a recurrent block, each with an optional residual.

Blocks receive layer *classes* (``act_layer``, ``norm_layer``) and instantiate them; models resolve names once.
A block owns its shortcut, so a layer keeps its name (``blocks.3.conv``) whether ``residual`` is on or off and
runs of one sweep log the same metric keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from gradwatch.errors import ConfigError, unknown_choice

WeightNorm = Callable[[nn.Module], nn.Module]


def _identity(module: nn.Module) -> nn.Module:
    return module


class ConvBlock(nn.Module):
    """``conv → norm → act → dropout``, plus ``shortcut(x)`` when residual.

    The identity path stays clean (nothing follows the addition), which is what keeps gradients alive in deep
    stacks. When the block changes shape the shortcut is a 1×1 projection, resampled like the body.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        act_layer: Activation class, instantiated with no arguments.
        norm_layer: Norm class, called with the channel count.
        stride: 2 halves the resolution.
        upsample: Double the resolution (nearest) before the convolution; avoids transposed-conv checkerboards.
        residual: Add the (projected) input to the output.
        dropout: Dropout probability after the activation.
        weight_norm: Applied to every convolution (``spectral_norm`` for a GAN discriminator).

    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        act_layer: type[nn.Module],
        norm_layer: type[nn.Module],
        stride: int = 1,
        upsample: bool = False,
        residual: bool = False,
        dropout: float = 0.0,
        weight_norm: WeightNorm = _identity,
    ) -> None:
        super().__init__()
        self.residual = residual
        self.resample = nn.Upsample(scale_factor=2.0, mode="nearest") if upsample else nn.Identity()
        has_norm = norm_layer is not nn.Identity
        self.conv = weight_norm(nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=not has_norm))
        self.norm = norm_layer(out_channels)
        self.act = act_layer()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut: nn.Module = nn.Identity()
        if residual and (in_channels != out_channels or stride != 1):
            projection = weight_norm(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=not has_norm))
            self.shortcut = nn.Sequential(projection, norm_layer(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        x = self.resample(x)
        out = self.drop(self.act(self.norm(self.conv(x))))
        return self.shortcut(x) + out if self.residual else out


class ElmanRNN(nn.Module):
    """A vanilla recurrent layer, ``h_t = act(W_ih x_t + W_hh h_{t-1} + b)``, with any activation.

    ``nn.RNN`` offers only tanh and relu; this runs the input projection for all steps at once and loops over
    time for the recurrence. Batch-first, single direction.
    """

    def __init__(self, input_size: int, hidden_size: int, *, act_layer: type[nn.Module]) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.ih = nn.Linear(input_size, hidden_size)
        self.hh = nn.Linear(hidden_size, hidden_size, bias=False)
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return all hidden states ``(N, T, H)`` and the last one, like ``nn.RNN``."""
        inputs = self.ih(x)
        h = inputs.new_zeros(x.shape[0], self.hidden_size)
        states = []
        for t in range(x.shape[1]):
            h = self.act(inputs[:, t] + self.hh(h))
            states.append(h)
        return torch.stack(states, dim=1), h


Cell = Literal["rnn", "lstm", "gru"]
CELLS: tuple[str, ...] = ("rnn", "lstm", "gru")
#: Norms that can sit between recurrent layers (features ``(N, T, C)``; no spatial axes to normalize over).
RECURRENT_NORMS: dict[str, type[nn.Module]] = {"none": nn.Identity, "layer": nn.LayerNorm}


class RecurrentBlock(nn.Module):
    """One recurrent layer, then ``norm(shortcut(x) + rnn(x))`` when residual, else ``norm(rnn(x))``.

    The norm sits *between* layers, after the addition (post-norm): normalizing the raw input of the first
    layer would erase scalar features such as the adding problem's values.

    Args:
        input_size: Features per step in.
        hidden_size: Hidden units per direction.
        cell: ``rnn``, ``lstm`` or ``gru``.
        act_layer: The vanilla cell's activation; ``nn.RNN``'s fused kernel serves tanh and relu.
        norm: ``none`` or ``layer``.
        residual: Add the (projected) input to the output.
        bidirectional: Run a second layer over the reversed sequence and concatenate.
        dropout: Dropout probability on the block's output.

    Raises:
        ConfigError: unknown cell or norm; an activation other than tanh for a gated cell (LSTM and GRU fix
            their own non-linearities).

    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        cell: Cell = "lstm",
        act_layer: type[nn.Module] = nn.Tanh,
        norm: str = "none",
        residual: bool = False,
        bidirectional: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ConfigError(unknown_choice("cell", cell, CELLS), param="cell")
        if norm not in RECURRENT_NORMS:
            raise ConfigError(
                unknown_choice("norm for recurrent layers", norm, RECURRENT_NORMS)
                + " (between recurrent layers only per-step norms apply: batch statistics would mix time steps)",
                param="norm",
            )
        if cell != "rnn" and act_layer is not nn.Tanh:
            raise ConfigError(
                f"activation {getattr(act_layer, '__name__', act_layer)} applies to the vanilla cell only: {cell} fixes"
                " its own gate non-linearities; use cell='rnn' or leave activation as tanh",
                param="activation",
            )
        out_size = hidden_size * (2 if bidirectional else 1)
        self.residual = residual
        self.bidirectional = bidirectional
        self.rnn = _recurrent_layer(cell, input_size, hidden_size, act_layer, bidirectional)
        self.rnn_reverse = (
            _recurrent_layer(cell, input_size, hidden_size, act_layer, False)
            if bidirectional and isinstance(self.rnn, ElmanRNN)
            else None
        )
        self.shortcut = nn.Linear(input_size, out_size, bias=False) if residual and input_size != out_size else None
        self.norm = RECURRENT_NORMS[norm](out_size)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, T, input_size)`` to ``(N, T, out_size)``."""
        h, _ = self.rnn(x)
        if self.rnn_reverse is not None:
            h_rev, _ = self.rnn_reverse(x.flip(1))
            h = torch.cat([h, h_rev.flip(1)], dim=-1)
        if self.residual:
            h = (x if self.shortcut is None else self.shortcut(x)) + h
        return self.drop(self.norm(h))


def _recurrent_layer(
    cell: str, input_size: int, hidden_size: int, act_layer: type[nn.Module], bidirectional: bool
) -> nn.Module:
    kwargs = {"input_size": input_size, "hidden_size": hidden_size, "batch_first": True, "bidirectional": bidirectional}
    if cell == "lstm":
        return nn.LSTM(**kwargs)
    if cell == "gru":
        return nn.GRU(**kwargs)
    if act_layer is nn.Tanh or act_layer is nn.ReLU:
        return nn.RNN(nonlinearity="tanh" if act_layer is nn.Tanh else "relu", **kwargs)
    return ElmanRNN(input_size, hidden_size, act_layer=act_layer)


class RecurrentStack(nn.Module):
    """``depth`` :class:`RecurrentBlock` s, batch-first; ``num_features`` is the width of each step's output.

    Args:
        input_size: Features per step.
        hidden_size: Hidden units per direction.
        depth: Number of stacked layers.
        **block_kwargs: Passed to every :class:`RecurrentBlock` (cell, act_layer, norm, residual, ...).

    """

    def __init__(self, input_size: int, hidden_size: int, depth: int, **block_kwargs: object) -> None:
        super().__init__()
        out_size = hidden_size * (2 if block_kwargs.get("bidirectional") else 1)
        sizes = [input_size] + [out_size] * (depth - 1)
        self.blocks = nn.ModuleList(RecurrentBlock(size, hidden_size, **block_kwargs) for size in sizes)
        self.num_features = out_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, T, input_size)`` to ``(N, T, num_features)``."""
        for block in self.blocks:
            x = block(x)
        return x
