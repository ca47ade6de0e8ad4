"""``RNN``: a sequence model whose cell, depth, norm and residual connections are sweep axes."""

from __future__ import annotations

from typing import get_args

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from typing_extensions import override

from gradwatch.errors import ConfigError, check_positive, check_probability, unknown_choice
from gradwatch.layers import LayerType, RecurrentStack, activation_gain, get_act_layer, init_weights
from gradwatch.layers.init import INITS
from gradwatch.models.supervised import SupervisedModule, Task


class RNN(SupervisedModule):
    """Sequence model: ``depth`` stacked recurrent layers, read out at the last step(s), linear head.

    Inputs are batch-first ``(N, T, input_size)``. For classification the head gives ``num_outputs`` logits; for
    regression ``num_outputs`` values. With one output step the output is ``(N, num_outputs)``, and a
    bidirectional stack reads the forward direction at the last step and the backward direction at the first,
    where each has seen the whole sequence. With ``k > 1`` output steps (copy-memory) the same head reads each of
    the last ``k`` steps (both directions' states there, when bidirectional) and the output is
    ``(N, k, num_outputs)``.

    Args:
        cell: ``rnn`` (vanilla), ``lstm`` or ``gru``.
        depth: Stacked recurrent layers.
        hidden_size: Hidden units per layer and direction.
        activation: The vanilla cell's non-linearity (a registered name, an import path, a class or a partial);
            gated cells keep tanh.
        norm: ``none`` or ``layer``, between layers.
        residual: Identity shortcut around each layer (linear projection where the width changes).
        init: Weight initialization (default, kaiming, xavier, orthogonal, normal).
        dropout: Dropout on each layer's output.
        bidirectional: Also read each sequence backwards.
        task: ``classification`` or ``regression``; read from the DataModule when ``None``.
        input_size: Features per step; read from the DataModule when ``None``.
        num_outputs: Classes or regression targets; read from the DataModule when ``None``.
        output_steps: Final steps that each get an output; read from the DataModule when ``None``, and 1 when
            the DataModule does not say.
        optimizer: A callable taking parameters, e.g. ``torch.optim.Adam``.
        lr_scheduler: A callable taking the optimizer, or ``None``.

    Raises:
        ConfigError: a bad value; the message names it and lists the valid ones.

    Example::

        >>> model = RNN(cell="gru", depth=2, task="regression", input_size=2, num_outputs=1)
        >>> model(torch.zeros(4, 30, 2)).shape
        torch.Size([4, 1])
    """

    data_shapes = {
        "task": ("task", str),
        "input_size": ("input_size", int),
        "num_outputs": ("num_outputs", int),
        "output_steps": ("output_steps", int),
    }
    # One head reads each output step, so the networks are the same for any number of them.
    data_defaults = {"output_steps": 1}
    data_kind = "sequences (a sequence DataModule with `input_size`, `task` and `num_outputs`)"

    def __init__(
        self,
        # Plain `str` rather than a Literal: the CLI parser would reject a typo with an unreadable union error,
        # where our check names the valid cells and the closest one.
        cell: str = "lstm",
        depth: int = 1,
        hidden_size: int = 64,
        activation: LayerType = "tanh",
        norm: str = "none",
        residual: bool = False,
        init: str = "default",
        dropout: float = 0.0,
        bidirectional: bool = False,
        task: str | None = None,
        input_size: int | None = None,
        num_outputs: int | None = None,
        output_steps: int | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(optimizer=optimizer, lr_scheduler=lr_scheduler)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        check_positive("RNN", depth=depth, hidden_size=hidden_size)
        if output_steps is not None:
            check_positive("RNN", output_steps=output_steps)
        check_probability("RNN", dropout=dropout)
        if task is not None and task not in get_args(Task):
            raise ConfigError(unknown_choice("task", task, get_args(Task)), param="task")
        self.act_layer = get_act_layer(activation)
        INITS.get(init, param="init")
        # Build one throw-away layer now so a bad cell / norm / activation fails here, not in `fit`.
        RecurrentStack(1, 1, 1, **self._block_args())
        if self.shapes_known():
            self._build_once()

    @property
    def task(self) -> Task:  # type: ignore[override]
        """``classification`` or ``regression``, once known."""
        return self.hparams.task

    @property
    @override
    def num_outputs(self) -> int:
        return self.hparams.num_outputs

    @property
    def output_steps(self) -> int:
        """Final steps that each get an output (1 until the data says otherwise)."""
        return self.hparams.output_steps or 1

    def _block_args(self) -> dict[str, object]:
        hp = self.hparams
        return {
            "cell": hp.cell,
            "act_layer": self.act_layer,
            "norm": hp.norm,
            "residual": hp.residual,
            "bidirectional": hp.bidirectional,
            "dropout": hp.dropout,
        }

    @override
    def build_backbone(self) -> nn.Module:
        hp = self.hparams
        return RecurrentStack(hp.input_size, hp.hidden_size, hp.depth, **self._block_args())

    @override
    def build_head(self, num_features: int) -> nn.Module:
        return nn.Linear(num_features, self.hparams.num_outputs)

    @override
    def init_networks(self) -> None:
        gain = activation_gain(self.act_layer) if self.hparams.cell == "rnn" else activation_gain(nn.Tanh)
        init_weights(self.backbone, self.hparams.init, gain=gain)
        init_weights(self.head, self.hparams.init)

    def readout(self, states: torch.Tensor) -> torch.Tensor:
        """Features from the stack's states ``(N, T, F)``: ``(N, F)`` for one output step, else ``(N, k, F)``.

        One step: each direction where it has seen everything. ``k`` steps: the states (both directions, when
        bidirectional) at each of the last ``k`` steps.

        Raises:
            ConfigError: the sequences are shorter than ``output_steps``.
        """
        k = self.output_steps
        if k > 1:
            if states.shape[1] < k:
                raise ConfigError(
                    f"RNN: output_steps={k} needs sequences of at least {k} steps, got {states.shape[1]}",
                    param="output_steps",
                )
            return states[:, -k:]
        if not self.hparams.bidirectional:
            return states[:, -1]
        forward, backward = states.chunk(2, dim=-1)
        return torch.cat([forward[:, -1], backward[:, 0]], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs ``(N, num_outputs)``, or ``(N, output_steps, num_outputs)``, for sequences ``(N, T, input_size)``."""
        self.require_built()
        return self.head(self.readout(self.backbone(x)))
