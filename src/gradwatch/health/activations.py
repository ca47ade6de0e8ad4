"""Activation statistics per activation layer, sampled with forward hooks that exist only while sampling.

Three kinds of activation layers are recognized (``isinstance``, so subclasses count):

- **rectifiers** (the ReLU family: ``ReLU``, ``ReLU6``, ``LeakyReLU``, ``PReLU``, ``RReLU``, ``ELU``, ``CELU``,
  ``SELU``, ``GELU``, ``SiLU``, ``Mish``, ``Hardswish``): dead fraction, mean, std;
- **saturating** layers (``Sigmoid``, ``Tanh``, ``Hardtanh``, ``Hardsigmoid``, ``Softsign``): saturated fraction,
  mean, std;
- **smooth** layers without a dead or saturated regime (``Softplus``): mean and std only.

Everything else is skipped: ``nn.Identity`` above all, which stands in for "no norm" and "no dropout" in every block
and is not an activation. A user activation is recognized when it subclasses one of the classes above.

Definitions, for the outputs ``y`` a layer produced during one sampling window (the hooks read the output, so an
inplace ``ReLU`` is measured correctly):

- ``act/dead/<layer>``: the fraction of *units* whose output is ``<= 0`` for every sample and position of the
  batch. A unit is a channel: dim 1 of outputs ``(N, C)``, ``(N, C, H, W)`` and ``(N, C, D, H, W)``; the last dim of
  3-d outputs, which are read as batch-first sequences ``(N, T, F)`` (a ``Conv1d``'s ``(N, C, L)`` is read the same
  way, so its units are then positions); every element of a 1-d output. For the smooth ReLU relatives (GELU, SiLU,
  ELU, ...) a dead unit is one that never leaves the negative side, where their gradient is small but not zero.
- ``act/saturated/<layer>``: the fraction of output elements where the layer's derivative is below
  :data:`SATURATION` (5%) of its maximum: ``|y| > sqrt(0.95)`` for tanh, ``y (1 - y) < 0.0125`` for sigmoid,
  ``|y| > 1 - sqrt(0.05)`` for softsign, and the flat parts (``y <= min_val`` or ``y >= max_val``; ``y <= 0`` or
  ``y >= 1``) for hardtanh and hardsigmoid.
- ``act/mean/<layer>``, ``act/std/<layer>``: mean and standard deviation (population, divided by the number of
  elements) of all output elements, accumulated in float32 whatever the output's dtype.

A layer called several times in one window (a ResNet block's shared ``relu``, a recurrent cell's activation over
time steps, a GAN discriminator run on real and on fake images) is aggregated, not overwritten: mean and std are
those of all its outputs pooled together, the saturated fraction is weighted by elements and the dead fraction by
units (each call's units count separately: a unit dead on one call and alive on another counts as half dead).

``<layer>`` is the module path from ``named_modules()`` (``backbone.blocks.3.act``), with ``torch.compile``'s
``_orig_mod`` components left out, so keys do not change when a submodule is compiled; the root module is
:data:`~gradwatch.health.layers.ROOT`.

Under ``torch.compile`` the hooks trace into the graph without a graph break. Dynamo does not guard on module hooks
by default, though (``torch._dynamo.config.skip_nnmodule_hook_guards``), so compiled code that was compiled without
the hooks keeps running without them: nothing is recorded. With ``skip_nnmodule_hook_guards = False`` attaching
and detaching switch between two cached graphs, one with hooks and one without (two entries of
``torch._dynamo.config.cache_size_limit``).
"""

from __future__ import annotations

import fnmatch
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from gradwatch.health.layers import check_patterns, layer_name
from gradwatch.rundir import ACT_DEAD, ACT_MEAN, ACT_SATURATED, ACT_STD

#: A layer is saturated where its derivative is below this fraction of its maximum.
SATURATION = 0.05


class Kind(str, Enum):
    """Which statistics an activation layer gets besides mean and std."""

    RECTIFIER = "rectifier"  # dead fraction
    SATURATING = "saturating"  # saturated fraction
    SMOOTH = "smooth"  # mean and std only


RECTIFIERS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,  # a Hardtanh subclass: rectifiers are matched first, so it counts as a ReLU
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
)
SMOOTH: tuple[type[nn.Module], ...] = (nn.Softplus,)

_TANH_LIMIT = math.sqrt(1.0 - SATURATION)  # tanh' = 1 - y², at most 1
_SOFTSIGN_LIMIT = 1.0 - math.sqrt(SATURATION)  # softsign' = (1 - |y|)², at most 1
_SIGMOID_LIMIT = 0.25 * SATURATION  # sigmoid' = y (1 - y), at most 1/4

Saturation = Callable[[Any, torch.Tensor], torch.Tensor]

#: Saturating classes and where each is saturated, as a function of the module and its output.
SATURATING: dict[type[nn.Module], Saturation] = {
    nn.Tanh: lambda m, y: y.abs() > _TANH_LIMIT,
    nn.Sigmoid: lambda m, y: y * (1.0 - y) < _SIGMOID_LIMIT,
    nn.Softsign: lambda m, y: y.abs() > _SOFTSIGN_LIMIT,
    nn.Hardsigmoid: lambda m, y: (y <= 0.0) | (y >= 1.0),
    nn.Hardtanh: lambda m, y: (y <= m.min_val) | (y >= m.max_val),
}


def activation_kind(module: nn.Module) -> Kind | None:
    """The kind of activation layer ``module`` is, or ``None`` when it is not one that is measured.

    Example::

        >>> activation_kind(nn.ReLU6()), activation_kind(nn.Tanh()), activation_kind(nn.Identity())
        (<Kind.RECTIFIER: 'rectifier'>, <Kind.SATURATING: 'saturating'>, None)
    """
    if isinstance(module, RECTIFIERS):
        return Kind.RECTIFIER
    if isinstance(module, tuple(SATURATING)):
        return Kind.SATURATING
    if isinstance(module, SMOOTH):
        return Kind.SMOOTH
    return None


def _saturation(module: nn.Module) -> Saturation | None:
    if activation_kind(module) is not Kind.SATURATING:
        return None
    return next(test for cls, test in SATURATING.items() if isinstance(module, cls))


@dataclass(frozen=True)
class Activation:
    """An activation layer to measure.

    Attributes:
        name: Module path such as ``backbone.blocks.3.act``; the metric keys use it.
        module: The layer.
        kind: Which statistics it gets.
    """

    name: str
    module: nn.Module
    kind: Kind


def find_activations(model: nn.Module, *, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[Activation]:
    """The activation layers of ``model``, in registration order.

    Args:
        model: The model.
        include: fnmatch patterns on layer names; when given, only matching layers are measured.
        exclude: fnmatch patterns on layer names that are never measured.
    """
    found = []
    for path, module in model.named_modules():
        kind = activation_kind(module)
        name = layer_name(path)
        if kind is None or (include and not any(fnmatch.fnmatchcase(name, p) for p in include)):
            continue
        if not any(fnmatch.fnmatchcase(name, p) for p in exclude):
            found.append(Activation(name, module, kind))
    return found


def unit_dims(ndim: int) -> tuple[int, ...]:
    """The dims a unit's outputs spread over: all but the unit dim (see the module docstring)."""
    if ndim <= 1:
        return ()
    unit = ndim - 1 if ndim == 3 else 1
    return tuple(d for d in range(ndim) if d != unit)


@dataclass
class _Call:
    layer: Activation
    numel: int
    units: int
    values: torch.Tensor  # on the device: mean, variance, then the dead or saturated fraction


class ActivationSampler:
    """Forward hooks on a model's activation layers that collect statistics on the device while attached.

    :meth:`attach` registers one forward hook per activation layer, :meth:`detach` removes them all, and
    :meth:`read` returns the statistics of the outputs seen in between. The hooks only queue reductions on the
    outputs' device (no ``.item()``, no data-dependent shapes, so no host sync); :meth:`read` copies everything to
    the host at once. The metric definitions are in this module's docstring.

    Args:
        include: fnmatch patterns on layer names (``"backbone.*"``); when given, only matching layers are measured.
        exclude: fnmatch patterns on layer names that are never measured.

    Raises:
        ValueError: a pattern is not a non-empty string.

    Example::

        >>> sampler = ActivationSampler()
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1), nn.Sigmoid())
        >>> _ = sampler.attach(model)
        >>> _ = model(torch.randn(16, 4))
        >>> sampler.detach()
        >>> sorted(sampler.read())
        ['act/dead/1', 'act/mean/1', 'act/mean/3', 'act/saturated/3', 'act/std/1', 'act/std/3']
    """

    def __init__(self, *, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None) -> None:
        self.include = check_patterns(include, owner="ActivationSampler", param="include")
        self.exclude = check_patterns(exclude, owner="ActivationSampler", param="exclude")
        self._handles: list[RemovableHandle] = []
        self._calls: list[_Call] = []
        self._layers: list[Activation] = []

    @property
    def attached(self) -> bool:
        """Whether hooks are registered."""
        return bool(self._handles)

    def attach(self, model: nn.Module) -> list[Activation]:
        """Register the hooks on ``model``'s activation layers and start a new window (earlier outputs are dropped).

        Returns:
            The layers now hooked (empty when none matched).

        Raises:
            RuntimeError: the hooks are already attached.
        """
        if self._handles:
            raise RuntimeError("ActivationSampler is already attached; detach() first")
        self._calls.clear()
        layers = find_activations(model, include=self.include, exclude=self.exclude)
        self._layers = layers
        self._handles = [
            layer.module.register_forward_hook(functools.partial(self._record, layer, _saturation(layer.module)))
            for layer in layers
        ]
        return layers

    def detach(self) -> None:
        """Remove every hook (a no-op when none is attached); what was collected stays until :meth:`read`."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @torch.no_grad()
    def _record(
        self, layer: Activation, saturated: Saturation | None, module: nn.Module, args: Any, output: Any
    ) -> None:
        if not isinstance(output, torch.Tensor) or output.numel() == 0:
            return
        y = output.detach().float()
        var, mean = torch.var_mean(y, correction=0)
        parts, units = [mean, var], 0
        if layer.kind is Kind.RECTIFIER:
            dims = unit_dims(y.dim())
            peak = y.amax(dim=dims) if dims else y
            units = peak.numel()
            parts.append(torch.count_nonzero(peak <= 0) / units)
        elif saturated is not None:
            parts.append(torch.count_nonzero(saturated(module, y)) / y.numel())
        self._calls.append(_Call(layer, y.numel(), units, torch.stack(parts)))

    def read(self, gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
        """The statistics collected since :meth:`attach`, as ``{"act/<stat>/<layer>": value}``; one host transfer.

        Each layer's calls are pooled on the device into one row of sums (elements, mean, squared deviations,
        dead and total units, saturated elements), in float64. With several processes (DDP, FSDP), ``gather``
        stacks every process's rows (``(processes, rows)``, one collective) and they are pooled the same way, so the
        statistics are those of every process's batch, not one's. Every process must then call :meth:`read` at
        the same step: the rows are one per hooked layer, so their layout is the same everywhere even where a
        layer saw no output.

        Layers that produced no output (on any process) are left out. The collected outputs are forgotten.

        Args:
            gather: Stack a tensor over the processes (:func:`~gradwatch.health.distributed.all_gather`).
        """
        # Emptied in place, never rebound: a graph ``torch.compile`` traced through the hooks appends to this list.
        calls = list(self._calls)
        self._calls.clear()
        if not calls and gather is None:
            return {}
        rows = self._pooled(calls)
        if gather is not None:
            rows = gather(rows.flatten()).reshape(-1, *rows.shape)
        host = rows.cpu().numpy().reshape(-1, len(self._layers), _ROW)  # the one device → host copy
        metrics: dict[str, float] = {}
        for i, layer in enumerate(self._layers):
            metrics.update(_combine(layer, host[:, i]))
        return metrics

    def _pooled(self, calls: list[_Call]) -> torch.Tensor:
        """One row of :data:`_ROW` sums per hooked layer (zeros for layers without output), on the device."""
        device = calls[0].values.device if calls else torch.device("cpu")
        dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        rows = torch.zeros(len(self._layers), _ROW, dtype=dtype, device=device)
        if not calls:
            return rows
        index = {layer.name: i for i, layer in enumerate(self._layers)}
        layer = torch.tensor([index[call.layer.name] for call in calls], device=device)
        numel = torch.tensor([float(call.numel) for call in calls], dtype=dtype, device=device)
        units = torch.tensor([float(call.units) for call in calls], dtype=dtype, device=device)
        values = torch.stack(
            [torch.cat([call.values, call.values.new_zeros(3 - call.values.numel())]) for call in calls]
        )
        mean, var, fraction = values.to(dtype).unbind(1)
        count = rows[:, 0].index_add(0, layer, numel)
        pooled = rows[:, 1].index_add(0, layer, numel * mean) / count.clamp(min=1)
        # Chan et al.'s parallel formula: each call's squared deviations about its mean, plus its mean's offset.
        squares = rows[:, 2].index_add(0, layer, numel * (var + (mean - pooled[layer]) ** 2))
        dead = rows[:, 3].index_add(0, layer, units * fraction)
        saturated = rows[:, 5].index_add(0, layer, numel * fraction * (units == 0))
        return torch.stack([count, pooled, squares, dead, rows[:, 4].index_add(0, layer, units), saturated], dim=1)


#: The sums pooled per layer: elements, mean, squared deviations about the mean, dead units, units, saturated
#: elements.
_ROW = 6


def _combine(layer: Activation, rows: np.ndarray) -> dict[str, float]:
    """The metrics of one layer from its ``(processes, _ROW)`` sums (Chan et al.'s parallel formula)."""
    count = rows[:, 0]
    total = count.sum()
    if total == 0:
        return {}
    mean = float((count * rows[:, 1]).sum() / total)
    var = float((rows[:, 2] + count * (rows[:, 1] - mean) ** 2).sum() / total)
    name = layer.name
    metrics = {ACT_MEAN + name: mean, ACT_STD + name: math.sqrt(max(var, 0.0))}
    if layer.kind is Kind.RECTIFIER:
        metrics[ACT_DEAD + name] = float(rows[:, 3].sum() / rows[:, 4].sum())
    elif layer.kind is Kind.SATURATING:
        metrics[ACT_SATURATED + name] = float(rows[:, 5].sum() / total)
    return metrics
